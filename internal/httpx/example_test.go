package httpx_test

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/snapscan/snapscan/internal/httpx"
)

func encodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// A handler behind RequireBearer returns its errors; the client sees the
// message, never the detail.
func ExampleRequireBearer() {
	h := httpx.Handle(nil, func(w http.ResponseWriter, r *http.Request) error {
		q, err := httpx.StrictQuery(r, "limit")
		if err != nil {
			return err
		}
		limit, err := q.Int("limit", 10, 1, 100)
		if err != nil {
			return err
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]int64{"limit": limit})
		return nil
	})
	srv := httptest.NewServer(httpx.RequireBearer(httpx.NewTokens("tok-123"), h, httpx.BearerOptions{}))
	defer srv.Close()

	for _, c := range []struct{ auth, query string }{
		{"bearer tok-123", "limit=5"}, // the scheme in any case
		{"Bearer tok-123", "job=1"},
		{"Bearer nope", ""},
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/?"+c.query, nil)
		req.Header.Set("Authorization", c.auth)
		resp, err := srv.Client().Do(req)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s", resp.StatusCode, body)
	}
	// Output:
	// 200 {
	//   "limit": 5
	// }
	// 400 {
	//   "error": "unknown query parameter \"job\" (this endpoint takes: limit)"
	// }
	// 401 {
	//   "error": "unauthorized: wrong token"
	// }
}

func ExampleUnmarshalStrict() {
	var req struct {
		VM    string `json:"vm"`
		Disks []struct {
			Path string `json:"path"`
		} `json:"disks"`
	}
	for _, body := range []string{
		`{"vm": "web-1", "disks": [{"path": "a.qcow2"}]}`,
		`{"vm": "web-1", "vm": "db-1"}`,
		`{"vm": "web-1", "disks": [{"path": "a"}, {"path": "b", "Path": "c"}]}`,
		`{"vm": "web-1", "format": "raw"}`,
		`{"vm": "web-1"} {"vm": "db-1"}`,
	} {
		fmt.Println(httpx.UnmarshalStrict([]byte(body), &req))
	}
	// Output:
	// <nil>
	// vm: name given twice
	// disks[1].Path: name given twice
	// unknown field "format"
	// malformed JSON: more than one value (the first ends at byte 15)
}
