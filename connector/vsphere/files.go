package vsphere

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"

	"github.com/snapscan/snapscan/connector"
)

// Files opens datastore files ("[ds] folder/file.vmdk"): through the
// local mount Config.Mounts names for the datastore, or over HTTP.
func (c *Connector) Files() connector.Files { return files{c} }

type files struct{ c *Connector }

// LocalPath maps "[ds] folder/file" through Config.Mounts; a datastore
// with no mount is an error.
func (c *Connector) LocalPath(path string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(path) || p.Datastore == "" {
		return "", fmt.Errorf("%q is not a datastore path", path)
	}
	dir, ok := c.cfg.Mounts[p.Datastore]
	if !ok {
		return "", fmt.Errorf("datastore %s is not mounted here (vsphere mounts)", p.Datastore)
	}
	local := filepath.Join(dir, filepath.FromSlash(p.Path))
	if rel, err := filepath.Rel(dir, local); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%q leaves datastore %s", path, p.Datastore)
	}
	return local, nil
}

func (f files) Open(ctx context.Context, path string) (connector.File, error) {
	c := f.c
	var p object.DatastorePath
	if !p.FromString(path) || p.Datastore == "" {
		return nil, &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: "open", Disk: path, Reason: "not a datastore path ([datastore] folder/file)"}
	}
	if dir, ok := c.cfg.Mounts[p.Datastore]; ok {
		return openMounted(c.endpoint, dir, p)
	}
	return c.openHTTP(ctx, p)
}

// openMounted opens a file of a datastore mounted at dir.
func openMounted(endpoint, dir string, p object.DatastorePath) (connector.File, error) {
	fail := func(kind connector.Kind, reason string, err error) error {
		return &connector.Error{Kind: kind, Endpoint: endpoint, Op: "open", Disk: p.String(), Reason: reason, Err: err}
	}
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return nil, fail(connector.Unreachable, fmt.Sprintf("datastore %s is mapped to %s, which is not a folder here: is it mounted?", p.Datastore, dir), err)
	}
	local := filepath.Join(dir, filepath.FromSlash(p.Path))
	if rel, err := filepath.Rel(dir, local); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fail(connector.Refused, "the path leaves the datastore", nil)
	}
	fh, err := os.Open(local)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if ents, rerr := os.ReadDir(dir); rerr == nil && len(ents) == 0 {
				return nil, fail(connector.Unreachable, fmt.Sprintf("datastore %s is mapped to %s, which is empty: is it mounted?", p.Datastore, dir), err)
			}
			return nil, fail(connector.NotFound, "", err)
		}
		return nil, fail(connector.Failed, "", err)
	}
	fst, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, fail(connector.Failed, "", err)
	}
	return localFile{fh, fst.Size()}, nil
}

type localFile struct {
	*os.File
	size int64
}

func (f localFile) Size() int64 { return f.size }

// openHTTP opens a datastore file over the /folder interface.
func (c *Connector) openHTTP(ctx context.Context, p object.DatastorePath) (connector.File, error) {
	c.mu.Lock()
	dc, known := c.dc[p.Datastore]
	c.mu.Unlock()
	if !known {
		if _, err := c.folders(ctx); err != nil {
			return nil, err
		}
		c.mu.Lock()
		dc, known = c.dc[p.Datastore]
		c.mu.Unlock()
		if !known {
			return nil, &connector.Error{Kind: connector.NotFound, Endpoint: c.endpoint, Op: "open", Disk: p.String(), Reason: "no datastore " + p.Datastore}
		}
	}
	u := *c.vc.URL()
	u.Path = "/folder/" + strings.TrimPrefix(p.Path, "/")
	u.RawQuery = url.Values{"dcPath": {dc}, "dsName": {p.Datastore}}.Encode()
	h := &HTTPFile{Client: &c.vc.Client.Client, URL: u.String(), Timeout: c.cfg.Timeout, Retries: c.cfg.Retries, name: p.String()}
	size, err := h.stat(ctx)
	if err != nil {
		var ce *connector.Error
		if errors.As(err, &ce) {
			ce.Endpoint = c.endpoint
		}
		return nil, err
	}
	h.size = size
	return h, nil
}

// HTTPFile is a file read with HTTP range requests: every ReadAt is one
// GET with a Range header, bounded by Timeout and tried again up to
// Retries times on a network error or a 5xx/429 answer. It is safe for
// concurrent use.
type HTTPFile struct {
	Client  *http.Client
	URL     string
	Timeout time.Duration
	Retries int
	name    string
	size    int64
}

// NewHTTPFile opens the file at url with client (which carries the
// session's cookie), reading its size with a one-byte range request.
func NewHTTPFile(ctx context.Context, client *http.Client, url string, timeout time.Duration, retries int) (*HTTPFile, error) {
	h := &HTTPFile{Client: client, URL: url, Timeout: timeout, Retries: retries, name: url}
	size, err := h.stat(ctx)
	if err != nil {
		return nil, err
	}
	h.size = size
	return h, nil
}

// Size is the file's size in bytes.
func (h *HTTPFile) Size() int64 { return h.size }

// Close does nothing: every request is closed when it is read.
func (h *HTTPFile) Close() error { return nil }

func (h *HTTPFile) stat(ctx context.Context) (int64, error) {
	var size int64 = -1
	err := h.do(ctx, 0, 0, func(resp *http.Response) error {
		total, err := totalOf(resp)
		if err != nil {
			return err
		}
		size = total
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1))
		return err
	})
	return size, err
}

// totalOf reads the size from a 206 answer's Content-Range, or a 200
// answer's length.
func totalOf(resp *http.Response) (int64, error) {
	if resp.StatusCode == http.StatusOK {
		if resp.ContentLength < 0 {
			return 0, errors.New("the server answered without a length")
		}
		return resp.ContentLength, nil
	}
	cr := resp.Header.Get("Content-Range")
	i := strings.LastIndexByte(cr, '/')
	if i < 0 {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	n, err := strconv.ParseInt(cr[i+1:], 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	return n, nil
}

// ReadAt reads len(p) bytes at off with one range request.
func (h *HTTPFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset", h.name)
	}
	if off >= h.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), h.size-off)
	if want == 0 {
		return 0, nil
	}
	var n int
	err := h.do(context.Background(), off, off+want-1, func(resp *http.Response) error {
		if resp.StatusCode != http.StatusPartialContent {
			return fmt.Errorf("range request answered %s", resp.Status)
		}
		if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", off)) {
			return fmt.Errorf("asked for bytes from %d, got Content-Range %q", off, cr)
		}
		var err error
		n, err = io.ReadFull(resp.Body, p[:want])
		return err
	})
	if err != nil {
		return n, err
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// do sends GET url with Range: bytes=from-to and hands a 2xx answer to
// read, retrying transient failures (network errors, 5xx, 429, a body cut
// short) with backoff.
func (h *HTTPFile) do(ctx context.Context, from, to int64, read func(*http.Response) error) error {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	var last error
	for attempt := 0; attempt <= max(h.Retries, 0); attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(100<<min(attempt, 6)) * time.Millisecond):
			}
		}
		retry, err := func() (bool, error) {
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(rctx, http.MethodGet, h.URL, nil)
			if err != nil {
				return false, err
			}
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
			resp, err := h.Client.Do(req)
			if err != nil {
				return ctx.Err() == nil, err
			}
			defer resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusNotFound:
				return false, &connector.Error{Kind: connector.NotFound, Op: "read", Disk: h.name, Reason: resp.Status}
			case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
				return false, &connector.Error{Kind: connector.Auth, Op: "read", Disk: h.name, Reason: resp.Status}
			case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
				return true, fmt.Errorf("server answered %s", resp.Status)
			case resp.StatusCode/100 != 2:
				return false, fmt.Errorf("server answered %s", resp.Status)
			}
			if err := read(resp); err != nil {
				return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded), err
			}
			return false, nil
		}()
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			break
		}
	}
	var ce *connector.Error
	if errors.As(last, &ce) {
		return last
	}
	return &connector.Error{Kind: connector.Unreachable, Op: "read", Disk: fmt.Sprintf("%s bytes %d-%d", h.name, from, to), Err: last}
}
