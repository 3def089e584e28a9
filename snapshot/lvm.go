package snapshot

import (
	"errors"
	"fmt"
	"io"

	"github.com/snapscan/snapscan/snapshot/lvm"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// assembleLVM reads the LVM2 physical volumes found among the disk's
// volumes, assembles their volume groups and adds each logical volume as
// a volume "lvm/<vg>/<lv>", probed for a file system like a partition.
// Logical volumes snapscan does not read (thin, snapshot, RAID, cache, on
// a missing PV) are listed with the reason.
func (d *Disk) assembleLVM() {
	var pvs []*lvm.PV
	at := map[*lvm.PV]int64{} // where each PV starts on the disk
	for _, v := range d.Volumes {
		if v.FileSystem != "lvm2" || v.r == nil {
			continue
		}
		pv, err := lvm.ReadPV(v.r, v.Size)
		if err != nil {
			v.Err = fmt.Errorf("%s %s: LVM2 physical volume: %w", d.Name, v.ID, err)
			continue
		}
		pvs = append(pvs, pv)
		at[pv] = v.Offset
	}
	if len(pvs) == 0 {
		return
	}
	vgs, err := lvm.Assemble(pvs)
	if err != nil {
		d.Volumes = append(d.Volumes, &Volume{ID: "lvm", FileSystem: "lvm2", Offset: -1,
			Err: fmt.Errorf("%s: LVM2 metadata: %w", d.Name, err)})
	}
	for _, vg := range vgs {
		for _, lv := range vg.LVs {
			id := "lvm/" + vg.Name + "/" + lv.Name
			if lv.Reason != "" {
				d.Volumes = append(d.Volumes, &Volume{ID: id, Offset: -1, Size: lv.Size,
					Err: fmt.Errorf("%s %s: %w: %s", d.Name, id, ErrUnsupported, lv.Reason)})
				continue
			}
			r, err := lv.Open()
			if err != nil {
				d.Volumes = append(d.Volumes, &Volume{ID: id, Offset: -1, Size: lv.Size,
					Err: fmt.Errorf("%s %s: %w", d.Name, id, err)})
				continue
			}
			v := d.probe(id, io.NewSectionReader(r, 0, lv.Size), -1, lv.Size)
			v.place = func(off, n int64) ([]vfs.Range, error) {
				places, err := lv.Map(off, n)
				if err != nil {
					return nil, err
				}
				out := make([]vfs.Range, len(places))
				for i, pl := range places {
					start, ok := at[pl.PV]
					if !ok || start < 0 {
						return nil, fmt.Errorf("lvm: LV %s/%s: a physical volume that is not a partition of the disk", lv.VG, lv.Name)
					}
					out[i] = vfs.Range{Off: start + pl.Off, Len: pl.Len}
				}
				return out, nil
			}
			d.Volumes = append(d.Volumes, v)
		}
		if len(vg.Missing) > 0 {
			d.Volumes = append(d.Volumes, &Volume{ID: "lvm/" + vg.Name, FileSystem: "lvm2", Offset: -1,
				Err: fmt.Errorf("%s: volume group %s: %w", d.Name, vg.Name, errors.New("physical volumes not on this disk: "+fmt.Sprint(vg.Missing)))})
		}
	}
	for _, v := range d.Volumes {
		if v.FileSystem == "lvm2" && v.Err != nil && errors.Is(v.Err, ErrUnsupported) {
			v.Err = fmt.Errorf("%s %s: %w", d.Name, v.ID, errLVMPV)
		}
	}
}
