package vsphere_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/vsphere"
)

// A datastore's HTTP interface that fails now and then: range reads are
// retried a bounded number of times, each with a timeout, and a server
// that keeps failing, hangs or answers the wrong range is an error, never
// a hang or wrong bytes.
func TestHTTPFileRetries(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	var fails, hangs atomic.Int32
	var requests atomic.Int32
	var wrongRange atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if fails.Add(-1) >= 0 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		if hangs.Add(-1) >= 0 {
			<-r.Context().Done()
			return
		}
		if wrongRange.Load() {
			r.Header.Set("Range", "bytes=0-15")
		}
		http.ServeContent(w, r, "disk.vmdk", time.Time{}, bytes.NewReader(content))
	}))
	defer srv.Close()
	ctx := context.Background()
	f, err := vsphere.NewHTTPFile(ctx, srv.Client(), srv.URL+"/folder/vm/disk.vmdk", 200*time.Millisecond, 2)
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != int64(len(content)) {
		t.Fatalf("size %d", f.Size())
	}
	read := func(off, n int) ([]byte, error) {
		b := make([]byte, n)
		m, err := f.ReadAt(b, int64(off))
		return b[:m], err
	}
	fails.Store(2) // two 503s, then success: within 2 retries
	if b, err := read(1000, 5000); err != nil || !bytes.Equal(b, content[1000:6000]) {
		t.Fatalf("read after two failures: %v", err)
	}
	hangs.Store(1) // one request hangs past the timeout, the retry succeeds
	if b, err := read(7, 9); err != nil || !bytes.Equal(b, content[7:16]) {
		t.Fatalf("read after a hang: %v", err)
	}
	if b, err := read(len(content)-10, 100); err != io.EOF || !bytes.Equal(b, content[len(content)-10:]) {
		t.Fatalf("read across the end: %d bytes, %v", len(b), err)
	}
	fails.Store(100) // a server that keeps failing
	before := requests.Load()
	_, err = read(0, 10)
	if !errors.Is(err, connector.ErrUnreachable) || requests.Load()-before != 3 || !strings.Contains(err.Error(), "disk.vmdk") {
		t.Fatalf("read from a failing server: %v after %d requests, want unreachable after 3", err, requests.Load()-before)
	}
	fails.Store(0)
	wrongRange.Store(true)
	if _, err := read(4096, 16); err == nil || !strings.Contains(err.Error(), "Content-Range") {
		t.Fatalf("a wrong range was accepted: %v", err)
	}
}
