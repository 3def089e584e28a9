package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
)

// DecodeJSON reads r's body into v as UnmarshalStrict does, reading at
// most limit bytes. Every refusal is an *Error: 415 for a Content-Type
// other than application/json (none is accepted), 413 for a body over
// limit, 400 for everything UnmarshalStrict refuses, with its reason.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return Errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return Errorf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", mbe.Limit)
		}
		return NewError(http.StatusBadRequest, "reading the body failed", err)
	}
	if err := UnmarshalStrict(data, v); err != nil {
		return NewError(http.StatusBadRequest, err.Error(), err)
	}
	return nil
}

// UnmarshalStrict decodes exactly one JSON value from data into v and
// refuses what encoding/json lets through silently: a name the target
// struct does not have, a name given twice in one object (also when the
// two differ only in case, since encoding/json matches names to fields
// without regard to case, and the last would win), and anything but
// whitespace after the value. Its errors say where: the byte offset of a
// syntax error, the path (disks[1].path) of a duplicate or mistyped name.
func UnmarshalStrict(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return errors.New("empty body: want a JSON value")
	}
	if err := checkNames(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describe(err)
	}
	return nil
}

// describe rewrites encoding/json's errors in the API's terms, without Go
// type names.
func describe(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("malformed JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	case errors.As(err, &te):
		where := te.Field
		if where == "" {
			where = "the body"
		}
		return fmt.Errorf("%s: want %s, got %s", where, kind(te.Type), te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("malformed JSON: ends too early")
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if strings.HasPrefix(msg, "unknown field ") {
		return errors.New(msg) // DisallowUnknownFields: the JSON is well formed
	}
	return fmt.Errorf("malformed JSON: %s", msg)
}

// kind names a Go type as JSON would.
func kind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return kind(t.Elem())
	}
	return t.String()
}

// frame is an object or array being walked by checkNames.
type frame struct {
	object  bool
	wantKey bool                // object: the next token is a name (or '}')
	names   map[string]struct{} // object: names seen, folded
	key     string              // object: the name whose value is read
	index   int                 // array: the element being read
	path    string
}

// child returns the path of the value being read in f.
func (f *frame) child() string {
	if f.object {
		if f.path == "" {
			return f.key
		}
		return f.path + "." + f.key
	}
	return f.path + "[" + strconv.Itoa(f.index) + "]"
}

// checkNames walks data's tokens and refuses a repeated name in an object
// and a second top-level value.
func checkNames(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []*frame
	values := 0
	var end int64    // where the first value ended
	done := func() { // a value ended
		if len(stack) == 0 {
			values++
			end = dec.InputOffset()
			return
		}
		top := stack[len(stack)-1]
		if top.object {
			top.wantKey = true
		} else {
			top.index++
		}
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return describe(err)
		}
		if values > 0 {
			return fmt.Errorf("malformed JSON: more than one value (the first ends at byte %d)", end)
		}
		var top *frame
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if top != nil && top.object && top.wantKey {
			if tok == json.Delim('}') {
				stack = stack[:len(stack)-1]
				done()
				continue
			}
			name := tok.(string) // the decoder allows nothing else here
			folded := strings.ToLower(name)
			if _, dup := top.names[folded]; dup {
				top.key = name
				return fmt.Errorf("%s: name given twice", top.child())
			}
			top.names[folded] = struct{}{}
			top.key, top.wantKey = name, false
			continue
		}
		path := ""
		if top != nil {
			path = top.child()
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, wantKey: true, names: map[string]struct{}{}, path: path})
		case json.Delim('['):
			stack = append(stack, &frame{path: path})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			done()
		default:
			done()
		}
	}
}
