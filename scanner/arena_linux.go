package scanner

import "syscall"

// mapNoReserve keeps a large reservation from counting against strict
// overcommit limits: only touched pages are ever used.
const mapNoReserve = syscall.MAP_NORESERVE
