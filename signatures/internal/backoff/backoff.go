// Package backoff is the exponential backoff with jitter that the
// signature receiver (pull retries) and the central server (push retries)
// share.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff doubles from Min to Max; each wait is half fixed, half random,
// so that it is never zero and a fleet does not retry in step. The zero
// value is not usable: set Min and Max. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts again from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Jitter returns d scaled by a random factor in [0.8, 1.2).
func Jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
