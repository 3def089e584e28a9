package signatures_test

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/snapscan/snapscan/signatures"
)

// The helpers below write bundles from the format described in the
// package documentation, independently of Build, so that tests can make
// every kind of wrong bundle.

type entry struct {
	name string
	data []byte
	typ  byte // tar type flag; 0 means a regular file
}

// pack writes entries as a zstd-compressed tar stream.
func pack(t testing.TB, entries []entry) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		} else if typ == tar.TypeSymlink {
			h.Linkname = "/etc/passwd"
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return compress(t, tb.Bytes())
}

func compress(t testing.TB, b []byte) []byte {
	t.Helper()
	zw, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	return zw.EncodeAll(b, nil)
}

// unpack reads a bundle's entries without any check.
func unpack(t testing.TB, bundle []byte) []entry {
	t.Helper()
	zr, err := zstd.NewReader(bytes.NewReader(bundle))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var out []entry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{name: h.Name, data: b})
	}
}

// signManifest returns the manifest.sig entry for manifest bytes.
func signManifest(t testing.TB, key ed25519.PrivateKey, manifest []byte) []byte {
	t.Helper()
	msg := append([]byte("snapscan-bundle-v1\n"), manifest...)
	b, err := json.Marshal(map[string]string{
		"algorithm": "ed25519",
		"key_id":    signatures.KeyID(key.Public().(ed25519.PublicKey)),
		"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// manifestJSON writes a manifest for files (in the order given).
func manifestJSON(t testing.TB, name string, version uint64, files []signatures.File) []byte {
	t.Helper()
	var infos []map[string]any
	for _, f := range files {
		sum := sha256.Sum256(f.Data)
		infos = append(infos, map[string]any{"path": f.Path, "sha256": hex.EncodeToString(sum[:]), "size": len(f.Data)})
	}
	b, err := json.Marshal(map[string]any{
		"format": 1, "name": name, "version": version, "created": "2025-01-02T03:04:05Z",
		"min_engine": "4.2", "externals": []string{}, "files": infos,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
