package httpx

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query holds a request's query parameters after StrictQuery checked
// them: each name is one the handler takes, given at most once.
type Query struct {
	v url.Values
}

// StrictQuery parses r's query string and refuses, with a 400 *Error
// that names the culprit, a query that does not parse, a parameter not
// in allowed, and a parameter given more than once: a filter the server
// does not know would otherwise be ignored silently and the answer
// widened (/v1/findings?job=1 answering every finding).
func StrictQuery(r *http.Request, allowed ...string) (Query, error) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return Query{}, BadRequest("query: %v", err)
	}
	var unknown []string
	for name, vals := range v {
		if !slices.Contains(allowed, name) {
			unknown = append(unknown, strconv.Quote(name))
			continue
		}
		if len(vals) > 1 {
			return Query{}, BadRequest("query parameter %q given %d times", name, len(vals))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		want := "none"
		if len(allowed) > 0 {
			want = strings.Join(allowed, ", ")
		}
		noun := "parameter"
		if len(unknown) > 1 {
			noun = "parameters"
		}
		return Query{}, BadRequest("unknown query %s %s (this endpoint takes: %s)", noun, strings.Join(unknown, ", "), want)
	}
	return Query{v: v}, nil
}

// Get returns the parameter's value, "" when absent.
func (q Query) Get(name string) string { return q.v.Get(name) }

// Has reports whether the parameter was given (perhaps empty).
func (q Query) Has(name string) bool { return q.v.Has(name) }

// Int returns an integer parameter: def when absent or empty, else a
// decimal integer in [lo, hi] or a 400 *Error naming the parameter.
func (q Query) Int(name string, def, lo, hi int64) (int64, error) {
	s := q.v.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, BadRequest("%s: %q is not an integer in [%d, %d]", name, s, lo, hi)
	}
	return n, nil
}

// Time returns an RFC 3339 time parameter, the zero time when absent or
// empty, or a 400 *Error naming the parameter.
func (q Query) Time(name string) (time.Time, error) {
	s := q.v.Get(name)
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, BadRequest("%s: %q is not an RFC 3339 time (2024-01-02T15:04:05Z)", name, s)
	}
	return t, nil
}
