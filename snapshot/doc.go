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
//     backing chains and compressed clusters, VMDK, VHD, VHDX. Detection
//     tries each format in turn; each says "not mine" with
//     image.ErrWrongType; raw is what is left.
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
// Every file is opened O_RDONLY. A backing file, parent disk or extent
// named inside an image is opened only if it lies in the image's own
// folder (or below) or in a folder the caller allows (Options.AllowedDirs):
// a snapshot must never make the appliance read its own files.
package snapshot
