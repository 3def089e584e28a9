package queue

// What the external tests (package queue_test, which may import the
// stores that import this package) need to see of the internals.

// MaxStringLen is the longest name or path a request may hold.
const MaxStringLen = maxStringLen

// Validate is the check Enqueue makes before the store sees a request.
func (r *Request) Validate() error { return r.validate() }

// MaxScansOrOne is the number of slots a budget gives.
func (b Budget) MaxScansOrOne() int { return b.maxScans() }

// Draining reports whether Drain was called.
func (q *Queue) Draining() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.draining
}
