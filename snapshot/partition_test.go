package snapshot

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// mbrEntry writes a partition entry into a sector.
func mbrEntry(sec []byte, slot int, status, typ byte, lba, n uint32) {
	e := sec[446+16*slot:]
	e[0], e[4] = status, typ
	binary.LittleEndian.PutUint32(e[8:], lba)
	binary.LittleEndian.PutUint32(e[12:], n)
	sec[510], sec[511] = 0x55, 0xAA
}

// TestPartitionTablesBad feeds hand-made hostile tables: each must give an
// error that says what is wrong, never a panic or a hang.
func TestPartitionTablesBad(t *testing.T) {
	const size = 8 << 20
	tests := []struct {
		name string
		make func(d []byte)
		want string
	}{
		{"ebr loop", func(d []byte) {
			mbrEntry(d[0:512], 0, 0, 0x05, 2048, 8192)
			ebr := d[2048*512:]
			mbrEntry(ebr, 0, 0, 0x83, 63, 100)
			mbrEntry(ebr, 1, 0, 0x05, 0, 100) // links to itself... offset 0 = start: rejected
		}, "outside the extended partition"},
		{"ebr cycle", func(d []byte) {
			mbrEntry(d[0:512], 0, 0, 0x05, 2048, 8192)
			a, b := d[2048*512:], d[3000*512:]
			mbrEntry(a, 0, 0, 0x83, 63, 100)
			mbrEntry(a, 1, 0, 0x05, 952, 100)
			mbrEntry(b, 0, 0, 0x83, 63, 100)
			mbrEntry(b, 1, 0, 0x05, 952, 100) // points at itself
		}, "loops"},
		{"bad status", func(d []byte) { mbrEntry(d[0:512], 0, 0x13, 0x83, 2048, 100) }, "invalid status"},
		{"two extended", func(d []byte) {
			mbrEntry(d[0:512], 0, 0, 0x05, 2048, 100)
			mbrEntry(d[0:512], 1, 0, 0x0f, 4096, 100)
		}, "more than one extended"},
		{"gpt absurd entry count", func(d []byte) { writeGPT(d, 1<<30, 128, 2) }, "partition entries"},
		{"gpt zero entry size", func(d []byte) { writeGPT(d, 128, 0, 2) }, "entry size"},
		{"gpt entries beyond disk", func(d []byte) { writeGPT(d, 128, 128, 1<<40) }, "outside"},
		{"gpt bad checksum", func(d []byte) { writeGPT(d, 128, 128, 2); d[512+40] ^= 1 }, "checksum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := make([]byte, size)
			tt.make(d)
			_, _, err := readTable(bytes.NewReader(d), size)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one saying %q", err, tt.want)
			}
			// The disk as a whole still opens, with the error on a volume.
			disk, err := New(bytes.NewReader(d), size, tt.name, nil)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, v := range disk.Volumes {
				if v.Err != nil && strings.Contains(v.Err.Error(), tt.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no volume reports %q: %+v", tt.want, disk.Volumes)
			}
		})
	}
}

// writeGPT writes a protective MBR and a GPT header with the given entry
// count, entry size and entry LBA, with a valid header checksum.
func writeGPT(d []byte, count, esize uint32, lba uint64) {
	mbrEntry(d[0:512], 0, 0, 0xee, 1, uint32(len(d)/512-1))
	h := d[512:1024]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x00010000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], 1)
	binary.LittleEndian.PutUint64(h[32:], uint64(len(d)/512-1))
	binary.LittleEndian.PutUint64(h[72:], lba)
	binary.LittleEndian.PutUint32(h[80:], count)
	binary.LittleEndian.PutUint32(h[84:], esize)
	sealGPT(d)
}

// sealGPT recomputes the entry array and header checksums of the GPT
// that writeGPT wrote, when its entries lie inside d.
func sealGPT(d []byte) {
	h := d[512:1024]
	le := binary.LittleEndian
	if lba, n := le.Uint64(h[72:]), uint64(le.Uint32(h[80:]))*uint64(le.Uint32(h[84:])); lba < uint64(len(d))/512 && n <= uint64(len(d))-lba*512 {
		le.PutUint32(h[88:], crc32.ChecksumIEEE(d[lba*512:lba*512+n]))
	}
	le.PutUint32(h[16:], 0)
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
}

// gptEntry fills entry i (128-byte entries at LBA 2) with a Linux file
// system partition from LBA first to last, and reseals the table.
func gptEntry(d []byte, i int, first, last uint64) {
	e := d[2*512+i*128:]
	copy(e[0:16], []byte{0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4})
	e[16] = byte(i + 1)
	binary.LittleEndian.PutUint64(e[32:], first)
	binary.LittleEndian.PutUint64(e[40:], last)
	sealGPT(d)
}

// TestGPTHugeLBA: an entry whose last LBA is 2^60 (issue 10.7) showed a
// negative size; it must be reported as outside the disk, and the other
// entries still served.
func TestGPTHugeLBA(t *testing.T) {
	const size = 8 << 20
	d := make([]byte, size)
	writeGPT(d, 128, 128, 2)
	gptEntry(d, 0, 2048, 1<<60)
	gptEntry(d, 1, 1<<60, 1<<60+10)
	gptEntry(d, 2, 4096, 8191)
	disk, err := New(bytes.NewReader(d), size, "huge.raw", nil)
	if err != nil {
		t.Fatal(err)
	}
	if disk.Table != "gpt" || len(disk.Volumes) != 3 {
		t.Fatalf("table %q, volumes %+v", disk.Table, disk.Volumes)
	}
	for _, v := range disk.Volumes[:2] {
		if v.Size < 0 || v.Offset < 0 || v.Err == nil || !strings.Contains(v.Err.Error(), "outside the disk") || !strings.Contains(v.Err.Error(), "huge.raw "+v.ID) {
			t.Errorf("%s: offset %d size %d err %v; want an error naming the disk and volume", v.ID, v.Offset, v.Size, v.Err)
		}
	}
	if v := disk.Volumes[2]; v.ID != "p3" || v.Offset != 4096*512 || v.Size != 4096*512 {
		t.Errorf("p3: %+v", v)
	}
}

// TestMBRLogicalNumbering checks, on a table made by sfdisk, that logical
// partitions are numbered from 5 in chain order, as Linux names them.
func TestMBRLogicalNumbering(t *testing.T) {
	testenv.NeedTools(t, "sfdisk")
	img := filepath.Join(t.TempDir(), "d.raw")
	if out, err := exec.Command("truncate", "-s", "64M", img).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: dos\nstart=2048, size=4096, type=83\nstart=8192, type=5\nstart=10240, size=4096, type=83\nstart=16384, size=4096, type=82\nstart=22528, size=4096, type=7\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	d, err := Open(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var got []string
	for _, v := range d.Volumes {
		got = append(got, v.ID+"@"+strconv.FormatInt(v.Offset/512, 10))
	}
	want := "p1@2048 p5@10240 p6@16384 p7@22528"
	if strings.Join(got, " ") != want {
		t.Errorf("volumes %q, want %q", strings.Join(got, " "), want)
	}
	if d.Table != "mbr" {
		t.Errorf("table %q", d.Table)
	}
}

// FuzzPartitionTable feeds arbitrary first sectors to the table readers.
func FuzzPartitionTable(f *testing.F) {
	for _, seed := range [][]byte{gptSeed(), mbrSeed()} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<20 {
			return
		}
		d := make([]byte, 1<<20)
		copy(d, b)
		readTable(bytes.NewReader(d), int64(len(d)))
		New(bytes.NewReader(d), int64(len(d)), "fuzz", nil)
	})
}

func gptSeed() []byte {
	d := make([]byte, 64<<10)
	writeGPT(d, 128, 128, 2)
	return d[:34*512]
}

func mbrSeed() []byte {
	d := make([]byte, 4096)
	mbrEntry(d[0:512], 0, 0x80, 0x83, 1, 2)
	mbrEntry(d[0:512], 1, 0, 0x05, 4, 4)
	return d
}
