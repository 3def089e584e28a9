package httpx_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/httpx"
)

func TestCompress(t *testing.T) {
	big := `{"rows":"` + strings.Repeat("finding ", 500) + `"}`
	h := httpx.Compress(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			httpx.WriteJSON(w, http.StatusOK, map[string]string{"rows": strings.Repeat("finding ", 500)})
		case "/small":
			httpx.WriteJSON(w, http.StatusTeapot, map[string]bool{"ok": true})
		case "/encoded":
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Encoding", "br")
			w.Write([]byte(big))
		case "/binary":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write([]byte(big))
		case "/notmodified":
			w.WriteHeader(http.StatusNotModified)
		case "/nothing":
		}
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path, accept string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if accept != "" {
			req.Header.Set("Accept-Encoding", accept)
		}
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	for _, tc := range []struct {
		path, accept string
		code         int
		gzipped      bool
	}{
		{"/big", "gzip, deflate, br", 200, true},
		{"/big", "", 200, false},
		{"/big", "gzip;q=0", 200, false},
		{"/small", "gzip", http.StatusTeapot, false},
		{"/encoded", "gzip", 200, false},
		{"/binary", "gzip", 200, false},
		{"/notmodified", "gzip", http.StatusNotModified, false},
		{"/nothing", "gzip", 200, false},
	} {
		resp, body := get(tc.path, tc.accept)
		if resp.StatusCode != tc.code || (resp.Header.Get("Content-Encoding") == "gzip") != tc.gzipped {
			t.Errorf("%s (Accept-Encoding %q): %d, Content-Encoding %q; want %d, gzip %v", tc.path, tc.accept,
				resp.StatusCode, resp.Header.Get("Content-Encoding"), tc.code, tc.gzipped)
			continue
		}
		if !strings.Contains(resp.Header.Get("Vary"), "Accept-Encoding") {
			t.Errorf("%s: no Vary: Accept-Encoding", tc.path)
		}
		if tc.gzipped {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			plain, err := io.ReadAll(zr)
			if err != nil || !strings.Contains(string(plain), strings.Repeat("finding ", 500)) || len(body) > len(plain)/5 {
				t.Errorf("%s: %d bytes gzipped to %d, %v: want the JSON back, at least 5x smaller", tc.path, len(plain), len(body), err)
			}
		}
	}
}
