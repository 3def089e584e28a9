//go:build unix && !linux

package scanner

const mapNoReserve = 0

func adviseHuge(b []byte) {}
