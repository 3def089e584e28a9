package connectors_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/connectors"
)

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "user"), []byte("svc-snapscan\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600)
	doc := `
- name: kvm1
  type: libvirt
  socket: ` + filepath.Join(dir, "no-socket") + `
  timeout: 1s
  select: {all: true, exclude: ["*-template"]}
- name: vc
  type: vsphere
  url: https://127.0.0.1:1/sdk
  username_file: ` + filepath.Join(dir, "user") + `
  password_file: ` + filepath.Join(dir, "empty") + `
  select: {folders: [/DC0/vm/prod]}
`
	var cfgs []connectors.Config
	if err := yaml.Unmarshal([]byte(doc), &cfgs); err != nil {
		t.Fatal(err)
	}
	if cfgs[0].Timeout != time.Second || !cfgs[0].Select.All || cfgs[1].Select.Folders[0] != "/DC0/vm/prod" || cfgs[1].InsecureSkipVerify {
		t.Fatalf("parsed %+v", cfgs)
	}
	ctx := context.Background()
	if _, err := connectors.Open(ctx, cfgs[0], nil); !errors.Is(err, connector.ErrUnreachable) {
		t.Errorf("libvirt with no daemon: %v", err)
	}
	if _, err := connectors.Open(ctx, cfgs[1], nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("an empty password file: %v", err)
	}
	for _, bad := range []connectors.Config{
		{Name: "x", Type: "hyperv", Select: connector.Selection{All: true}},
		{Name: "x", Type: "vsphere", URL: "https://vc/sdk", Select: connector.Selection{All: true}},
		{Name: "x", Type: "libvirt", URL: "https://vc/sdk", Select: connector.Selection{All: true}},
		{Name: "x", Type: "libvirt"},
		{Type: "libvirt", Select: connector.Selection{All: true}},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v is valid", bad)
		}
	}
}
