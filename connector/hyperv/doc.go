// Package hyperv documents how snapscan scans Hyper-V virtual machines
// today, and what a Hyper-V connector would implement. It holds no code:
// no Hyper-V API (WMI, PowerShell Direct, WinRM) is reachable from the
// machines snapscan is built and tested on, and a connector that cannot be
// tested against the real thing is not shipped.
//
// # Scanning Hyper-V disks today
//
// Hyper-V keeps a VM's disks as VHDX files (VHD for old VMs), usually on
// an SMB 3 share (a Scale-Out File Server) or a Cluster Shared Volume.
// snapscan reads VHDX and VHD, fixed, dynamic and differencing, with
// their parent chains. Two ways give a view nobody writes:
//
//  1. A production checkpoint. On the Hyper-V host (or through a
//     management station with the Hyper-V module):
//
//     Checkpoint-VM -Name web1 -SnapshotName snapscan-20260101T020000Z
//
//     Hyper-V asks the guest's VSS writers to flush (a quiesced freeze,
//     like VMware Tools' quiescing) and switches the VM to new .avhdx
//     differencing disks; the .vhdx files the checkpoint names
//     (Get-VMSnapshot -VMName web1 | Get-VMHardDiskDrive) are then
//     frozen. Mount the share read-only on the appliance
//     (mount -t cifs //sofs/vms /mnt/vms -o ro,vers=3.1.1,...) and
//     submit the frozen files, declaring their format (vhdx) where the
//     submit API takes one (issue 10.1 adds it; until then the format
//     is detected by content):
//
//     snapscan submit --vm web1 --disk "sofs-vms:/mnt/vms/web1/Virtual Hard Disks/web1.vhdx"
//
//     When the scan is done, remove the checkpoint, which merges the
//     differencing disks back:
//
//     Remove-VMSnapshot -VMName web1 -Name snapscan-20260101T020000Z
//
//  2. An export (Export-VM, or Export-VMSnapshot of a checkpoint) to a
//     share the appliance mounts: the exported .vhdx files are a copy
//     nobody writes, submitted the same way.
//
// Declaring the format matters: a guest owns the bytes of its disk, and a
// format probed from the content could be spoofed (see the connector
// package). A differencing disk's parent is opened only from the
// disk's own folder or a folder allowed explicitly.
//
// # What a Hyper-V connector would implement
//
// The connector.Connector interface is ready for it; a connector over WMI
// (root\virtualization\v2, reached with WS-Management from the appliance)
// or over PowerShell on the host would do:
//
//   - List: Msvm_ComputerSystem (VMs: ElementName, Name as the ID,
//     EnabledState for power), Msvm_StorageAllocationSettingData
//     (HostResource: each disk's file), the chain from
//     Get-VHD (ParentPath) — format "vhdx" or "vhd" as Hyper-V reports
//     it; the datastore is the share or CSV the file lives on.
//   - Freeze: Msvm_VirtualSystemSnapshotService.CreateSnapshot with a
//     production checkpoint (SnapshotType 2, falling back to a standard
//     one only if Options.Quiesce allows), named with
//     connector.NamePrefix and described with connector.Description;
//     the frozen layers are the checkpoint's
//     Msvm_StorageAllocationSettingData files.
//   - Release: DestroySnapshot, which merges the .avhdx files back;
//     idempotent when the checkpoint is gone.
//   - Changes: Hyper-V's Resilient Change Tracking (RCT, Windows Server
//     2016 and later): GetVirtualDiskChanges between the RCT id recorded
//     at the previous freeze (FrozenDisk.Checkpoint) and this one.
//   - Stale: checkpoints named with the prefix, older than the bound.
//   - Files: the SMB share mounted on the appliance, mapped like
//     vsphere.Config.Mounts.
//
// Its tests would run against a Hyper-V host, which these machines do not
// have; that is the part left undone.
package hyperv
