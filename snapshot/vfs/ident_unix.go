//go:build unix

package vfs

import "syscall"

// sysIdentity returns the device and inode number of an os file.
func sysIdentity(sys any) (ident, bool) {
	if st, ok := sys.(*syscall.Stat_t); ok {
		return ident{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true
	}
	return ident{}, false
}
