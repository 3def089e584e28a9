package httpx_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/internal/testenv"
)

// jsonSeeds are the committed seeds of FuzzUnmarshalStrict: bodies it
// takes and bodies it refuses, each for a reason of its own.
var jsonSeeds = map[string]string{
	"submit":          `{"vm": "web-1", "disks": [{"datastore": "ds-a", "path": "web-1/disk0.qcow2"}], "labels": {"env": "prod"}, "count": 2}`,
	"duplicate":       `{"vm": "a", "vm": "b"}`,
	"duplicate-case":  `{"vm": "a", "Vm": "b"}`,
	"nested":          `{"disks": [{"path": "a"}, {"path": "b", "path": "c"}]}`,
	"unknown":         `{"vm": "a", "extra": [1, {"x": null}]}`,
	"two-values":      `{"vm": "a"} {"vm": "b"}`,
	"deep":            `{"labels": {"a": "b"}, "disks": [[[[[]]]]]}`,
	"escapes":         `{"vm": "\u0076\u006d", "labels": {"\u0076m": "x", "vm": "y"}}`,
	"numbers":         `{"count": 1e3, "vm": "x"}`,
	"truncated":       `{"vm": "a", "disks": [{"path": `,
	"empty":           ``,
	"not-an-object":   `"vm"`,
	"trailing-comma":  `{"vm": "a",}`,
	"invalid-utf8":    "{\"vm\": \"\xff\xfe\"}",
	"bom":             "\ufeff{\"vm\": \"a\"}",
	"whitespace-only": " \t\r\n",
}

// TestWriteFuzzSeeds rewrites the committed corpus:
// go test ./internal/httpx -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	for name, body := range jsonSeeds {
		testenv.WriteSeed(t, "FuzzUnmarshalStrict", name, []byte(body))
	}
}

// FuzzUnmarshalStrict: a hostile body never panics the strict decoder,
// and whatever it accepts is valid JSON that encoding/json decodes to the
// same value, names unique.
func FuzzUnmarshalStrict(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var strict, loose submit
		err := httpx.UnmarshalStrict(data, &strict)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		if err := json.Unmarshal(data, &loose); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, err)
		}
		if !reflect.DeepEqual(strict, loose) {
			t.Fatalf("%q: strict %+v, encoding/json %+v", data, strict, loose)
		}
	})
}
