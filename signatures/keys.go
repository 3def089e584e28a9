package signatures

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ErrKey is wrapped by errors about key files: not PEM, not Ed25519.
var ErrKey = errors.New("signatures: bad key")

// maxKeyFile bounds what is read of a key file: a PEM Ed25519 key is about
// 120 bytes.
const maxKeyFile = 64 << 10

// KeyID returns the ID a bundle's signature names its key by: the hex of
// the first 16 bytes of the SHA-256 of the raw public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:16])
}

// GenerateKey makes a new Ed25519 key pair from crypto/rand.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// MarshalPrivateKey encodes a private key as PKCS #8 PEM.
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("signatures: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes a public key as PKIX PEM.
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("signatures: encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKey decodes a PKCS #8 PEM Ed25519 private key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: no PEM \"PRIVATE KEY\" block", ErrKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not an Ed25519 key", ErrKey, k)
	}
	return priv, nil
}

// ParsePublicKey decodes a PKIX PEM Ed25519 public key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%w: no PEM \"PUBLIC KEY\" block", ErrKey)
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not an Ed25519 key", ErrKey, k)
	}
	return pub, nil
}

// readKeyFile reads a small key file.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, maxKeyFile+1)
	n, err := readFullOrEOF(f, buf)
	if err != nil {
		return nil, err
	}
	if n > maxKeyFile {
		return nil, fmt.Errorf("%w: %s: larger than %d bytes", ErrKey, path, maxKeyFile)
	}
	return buf[:n], nil
}

// LoadPrivateKey reads a private key file written by WriteKeyPair (or
// openssl genpkey -algorithm ed25519).
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("signatures: private key: %w", err)
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads a public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("signatures: public key: %w", err)
	}
	k, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteKeyPair generates a key pair and writes PREFIX.key (mode 0600) and
// PREFIX.pub (mode 0644). It refuses to overwrite existing files, so a
// signing key is never lost by mistake.
func WriteKeyPair(prefix string) (ed25519.PublicKey, error) {
	pub, priv, err := GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("signatures: generate key: %w", err)
	}
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if err := writeNew(prefix+".key", privPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(prefix+".pub", pubPEM, 0o644); err != nil {
		os.Remove(prefix + ".key")
		return nil, err
	}
	return pub, nil
}

// writeNew creates path exclusively with mode perm and writes data.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("signatures: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("signatures: write %s: %w", path, err)
	}
	return nil
}

// KeySet is a set of trusted public keys, looked up by KeyID. Several keys
// let a signer rotate: trust the new key everywhere, sign with it, then
// drop the old one. A KeySet is immutable and safe for concurrent use;
// replace it to change trust (Receiver.SetKeys).
type KeySet struct {
	keys map[string]ed25519.PublicKey
}

// NewKeySet returns a KeySet trusting the given keys.
func NewKeySet(keys ...ed25519.PublicKey) *KeySet {
	ks := &KeySet{keys: make(map[string]ed25519.PublicKey, len(keys))}
	for _, k := range keys {
		ks.keys[KeyID(k)] = slices.Clone(k)
	}
	return ks
}

// LoadKeySet reads public keys from files and folders; a folder
// contributes every file in it (not below) whose name ends in ".pub". It
// fails when a file is not a key or no key is found, so a typo never
// leaves an appliance trusting nothing.
func LoadKeySet(paths ...string) (*KeySet, error) {
	var keys []ed25519.PublicKey
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("signatures: trusted keys: %w", err)
		}
		files := []string{p}
		if st.IsDir() {
			ents, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("signatures: trusted keys: %w", err)
			}
			files = files[:0]
			for _, e := range ents {
				if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".pub") {
					files = append(files, filepath.Join(p, e.Name()))
				}
			}
		}
		for _, f := range files {
			k, err := LoadPublicKey(f)
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no public keys in %s", ErrKey, strings.Join(paths, ", "))
	}
	return NewKeySet(keys...), nil
}

// Lookup returns the key with the given ID.
func (ks *KeySet) Lookup(id string) (ed25519.PublicKey, bool) {
	if ks == nil {
		return nil, false
	}
	k, ok := ks.keys[id]
	return k, ok
}

// IDs returns the IDs of the trusted keys, sorted.
func (ks *KeySet) IDs() []string {
	if ks == nil {
		return nil
	}
	ids := make([]string, 0, len(ks.keys))
	for id := range ks.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Len returns the number of trusted keys.
func (ks *KeySet) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.keys)
}
