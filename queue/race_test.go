//go:build race

package queue_test

// raceEnabled: the race detector slows every memory access several times
// over, so timings say nothing about the scheduler; tests keep their
// correctness checks and drop their timing bounds.
const raceEnabled = true
