// Package snapshot opens a virtual machine's disk without the virtual
// machine: no agent, no root, no kernel mount. It reads a disk image file
// or a block device read-only, detects the image format by content,
// finds the partitions and logical volumes, and serves each volume's file
// system as an io/fs.FS, so that any Go code can walk a guest disk with
// fs.WalkDir.
//
// # Layers
//
//   - Image formats (snapshot/image and its subpackages): raw, qcow2 with
//     backing chains and compressed clusters, VMDK, VHD, VHDX, one
//     registry (formats.go). A declared format is used as declared;
//     otherwise detection tries each format in turn; each says "not mine"
//     with image.ErrWrongType; raw is what is left.
//   - Partition tables (this package): GPT, and MBR with extended and
//     logical partitions. A disk with no table may hold a file system
//     directly.
//   - Volume managers: LVM2 (snapshot/lvm) physical volumes on partitions
//     or whole disks, assembled into logical volumes.
//   - File systems: ext2/3/4, FAT12/16/32, XFS, NTFS, ISO9660, squashfs,
//     each in its own package, served through snapshot/vfs with one set of
//     rules: read-only, symbolic links reported and never followed.
//
// # Volumes
//
// Volume ids are "p<N>" for partition N as the table numbers it (logical
// MBR partitions from 5, as Linux names them), "disk" for a file system
// with no partition table, and "lvm/<vg>/<lv>" for a logical volume.
// Volumes holding nothing snapscan reads (swap, encrypted, unknown,
// damaged) are listed with Volume.Err; the rest of the disk is still
// served. A damaged disk is reported, never a panic: readers of hostile
// bytes bound every size they allocate and every loop they run.
//
// # Safety
//
// Every file is opened O_RDONLY, and only regular files and block devices
// are opened (a FIFO is refused before anything is read). A backing file,
// parent disk or extent named inside an image is opened only if it lies
// in the image's own folder (or below) or in a folder the caller allows
// (Options.AllowedDirs): a snapshot must never make the appliance read its
// own files. The refusal reads the same whether or not the file exists.
//
// # Declared formats and named layers
//
// A guest owns the bytes of its disk: on a raw disk it can write a qcow2
// header naming another disk of the datastore as its backing file, and
// probing by content would then read the other disk. So the format a
// hypervisor declares is authoritative (Options.Format; "raw" means raw
// and no header is parsed), and a probed image opens no related file that
// the caller did not list in Options.Layers, unless Options.
// AllowUnnamedLayers says so explicitly (ErrUnnamedLayer). Disk.Chain
// lists every file a disk reads, with an identity for each; the disk's
// image answers which layer holds each range (image.Image.Map).
//
// A panic in a format reader on hostile bytes becomes an error naming the
// disk, at Disk.Image, the one seam every read passes.
package snapshot
