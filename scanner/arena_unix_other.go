//go:build unix && !linux

package scanner

const mapNoReserve = 0
