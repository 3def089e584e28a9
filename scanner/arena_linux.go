package scanner

import "syscall"

// mapNoReserve keeps a large reservation from counting against strict
// overcommit limits: only touched pages are ever used.
const mapNoReserve = syscall.MAP_NORESERVE

// adviseHuge asks for transparent huge pages over the arena (where THP is
// "madvise", Debian's default): fewer page faults when a file is read in,
// fewer TLB misses while YARA reads it.
func adviseHuge(b []byte) { syscall.Madvise(b, syscall.MADV_HUGEPAGE) }
