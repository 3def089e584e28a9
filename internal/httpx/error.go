package httpx

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
)

// Error is a handler's failure: Code and Msg are for the client, Err for
// the log only. Keeping the two apart lets a handler wrap an error that
// names a host path, a SQL statement or a key file without telling the
// client any of it.
type Error struct {
	Code   int         // HTTP status to send; 0 means 500
	Msg    string      // the client's message, sent as {"error": Msg}
	Err    error       // the detail, logged and never sent; may be nil
	Header http.Header // extra response headers, may be nil
}

// NewError returns an Error with the given status, client message and
// logged detail.
func NewError(code int, msg string, err error) *Error {
	return &Error{Code: code, Msg: msg, Err: err}
}

// Errorf returns an Error whose client message is formatted; it has no
// separate detail.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// BadRequest is Errorf with status 400.
func BadRequest(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, format, args...)
}

func (e *Error) code() int {
	if e.Code == 0 {
		return http.StatusInternalServerError
	}
	return e.Code
}

func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("%d %s", e.code(), e.Msg)
	}
	return fmt.Sprintf("%d %s: %v", e.code(), e.Msg, e.Err)
}

// Unwrap returns the logged detail.
func (e *Error) Unwrap() error { return e.Err }

// asError returns err as an *Error; any other error becomes a 500 whose
// text goes to the log only.
func asError(err error) *Error {
	var he *Error
	if errors.As(err, &he) {
		return he
	}
	return &Error{Code: http.StatusInternalServerError, Msg: "internal error", Err: err}
}

// WriteJSON answers v as indented JSON with status code. Answers are
// never cached (they carry scan results and tokens' effects).
func WriteJSON(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing left to tell it
}

// WriteError answers err as {"error": MSG}: an *Error (found with
// errors.As) with its status, message and headers; any other error as 500
// "internal error", so that its text never reaches the client.
func WriteError(w http.ResponseWriter, err error) {
	he := asError(err)
	for k, vs := range he.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	WriteJSON(w, he.code(), map[string]string{"error": he.Msg})
}

// HandlerFunc is an HTTP handler that returns its failure instead of
// writing it; Handle turns it into an http.Handler.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts h. An error h returns is answered by WriteError and
// logged to log (nil discards) as "request failed" with the method, path,
// remote address, status, client message and detail: at level Error for
// a 5xx, Debug otherwise (clients' mistakes are not the operator's). If h
// had already started its answer, the error is only logged.
func Handle(log *slog.Logger, h HandlerFunc) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &startWriter{ResponseWriter: w}
		err := h(sw, r)
		if err == nil {
			return
		}
		he := asError(err)
		lvl := slog.LevelDebug
		if he.code() >= 500 {
			lvl = slog.LevelError
		}
		log.Log(r.Context(), lvl, "request failed", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
			"status", he.code(), "msg", he.Msg, "err", he.Err, "answered", sw.started)
		if !sw.started {
			WriteError(w, he)
		}
	})
}

// startWriter records whether a handler began its answer.
type startWriter struct {
	http.ResponseWriter
	started bool
}

func (w *startWriter) WriteHeader(code int) {
	if code >= 200 { // 1xx answers are informational: the real one follows
		w.started = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *startWriter) Write(b []byte) (int, error) {
	w.started = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *startWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
