package xfs

import (
	"errors"
	"strings"
	"testing"
)

// TestSuperblockFeatures sets feature bits in a real v5 superblock (CRC
// recomputed) and checks which are refused, and how.
func TestSuperblockFeatures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		incompat uint32 // ORed into sb_features_incompat
		want     string // "" if accepted
	}{
		{"as made", 0, ""},
		{"nrext64, exchange-range, parent pointers", incompatNrext64 | incompatExchRange | incompatParent, ""},
		{"needsrepair", incompatNeedsRep, "needsrepair"},
		{"zoned", incompatZoned, "zoned realtime device"},
		{"zone gaps", incompatZoneGaps, "zoned realtime device"},
		{"unknown", 1 << 20, "unknown incompatible features 0x100000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := readSeed(t, "FuzzSuperblock", "v5.img")
			be.PutUint32(b[216:], be.Uint32(b[216:])|tc.incompat)
			fixCRC(b, 224)
			_, err := parseSuperblock(b, 1<<30)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrUnsupported)):
				t.Fatalf("error %v, want ErrUnsupported saying %q", err, tc.want)
			}
		})
	}
}
