package appliance

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/snapscan/snapscan/signatures"
)

// activeBundleFile is where signatures.Receiver keeps the active bundle
// in its state folder. The signatures package does not export the name;
// InstalledSignatures only reads it for "snapscan version".
const activeBundleFile = "active.bundle"

// InstalledSignatures describes the signature set installed for the
// appliance configured at configPath, verified against its trusted keys
// but not compiled (it is quick enough for "snapscan version"), or says
// why none can be told.
func InstalledSignatures(configPath string) string {
	cfg, err := Load(configPath)
	if errors.Is(err, fs.ErrNotExist) {
		return "none (no appliance configuration at " + configPath + "; set SNAPSCAN_CONFIG)"
	}
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	keys, err := signatures.LoadKeySet(cfg.Signatures.TrustedKeys...)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	p := filepath.Join(cfg.Signatures.StateDir, activeBundleFile)
	f, err := os.Open(p)
	if err != nil {
		return "none installed (" + p + ")"
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, signatures.DefaultMaxBundleSize))
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	b, err := signatures.ReadBundle(data, keys, signatures.Limits{})
	if err != nil {
		return "invalid (" + signatures.Reason(err) + ")"
	}
	return fmt.Sprintf("%s version %d (%d files, key %s)", b.Manifest.Name, b.Manifest.Version, len(b.Manifest.Files), b.KeyID)
}
