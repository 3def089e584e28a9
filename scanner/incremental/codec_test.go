package incremental

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/snapscan/snapscan/scanner"
)

// fill sets every field reachable from v to a value other than its zero
// (n varies them), so that a field the codec forgets shows in a round
// trip: a field added to Record, VolumeRecord, File or scanner.Outcome
// fails TestCodecEveryField until EncodeRecord writes it.
func fill(v reflect.Value, n *int) {
	*n++
	switch v.Kind() {
	case reflect.String:
		v.SetString(string(rune('a'+*n%26)) + "é\x00" + string(rune('A'+*n%7)))
	case reflect.Int: // counts
		v.SetInt(int64(*n))
	case reflect.Int64: // sizes, offsets
		v.SetInt(int64(*n) * 1e9 * int64(1-2*(*n%2)))
	case reflect.Uint8:
		v.SetUint(uint64(*n%255 + 1))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Array:
		for i := range v.Len() {
			fill(v.Index(i), n)
		}
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fill(s.Index(i), n)
		}
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for range 3 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(k, n)
			fill(e, n)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem(), n)
		v.Set(p)
	case reflect.Interface: // scanner.MetaEntry.Value: string, int64 or bool
		v.Set(reflect.ValueOf([]any{"text", int64(-*n), *n%2 == 0}[*n%3]))
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Unix(1_790_000_000, int64(*n)).UTC()))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	default:
		panic("fill: add kind " + v.Kind().String())
	}
}

func TestCodecEveryField(t *testing.T) {
	var want Record
	n := 0
	fill(reflect.ValueOf(&want).Elem(), &n)
	b, err := EncodeRecord(&want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, &want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, &want)
	}
	// The zero time and nil matches stay as they were.
	z := &Record{Identity: "z", Volumes: []*VolumeRecord{{ID: "v", Files: map[FileKey]File{{}: {Outcome: scanner.Outcome{Matches: []scanner.Match{}}}, {Where: [32]byte{1}}: {}}}}}
	b, _ = EncodeRecord(z)
	if got, err := DecodeRecord(b); err != nil || !reflect.DeepEqual(got, z) {
		t.Fatalf("zero values: %+v %v", got, err)
	}
}

func TestCodecRefuses(t *testing.T) {
	r := &Record{Identity: "id-x", Volumes: []*VolumeRecord{{ID: "p1", Files: map[FileKey]File{{}: {Outcome: scanner.Outcome{
		Matches: []scanner.Match{{Rule: "r", Meta: []scanner.MetaEntry{{Key: "k", Value: 1.5}}}}}}}}}}
	if _, err := EncodeRecord(r); err == nil {
		t.Error("a float meta value was encoded")
	}
	if _, err := DecodeRecord(make([]byte, MaxEncoded+1)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("an oversized record: %v", err)
	}
}

// FuzzDecodeBody feeds DecodeRecord well-framed bodies (the fuzzer's
// bytes, compressed), which is where a garbled record that passes the
// frame's checksum lands: an error, never a panic or an allocation
// beyond the body's size; what decodes encodes back to the same record.
func FuzzDecodeBody(f *testing.F) {
	var r Record
	n := 0
	fill(reflect.ValueOf(&r).Elem(), &n)
	b, _ := EncodeRecord(&r)
	body, _ := zdec.DecodeAll(b[len(recordMagic):], nil)
	f.Add(body)
	f.Add(body[:len(body)/2])
	f.Add([]byte{0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := DecodeRecord(zenc.EncodeAll(body, append([]byte{}, recordMagic...)))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not wrapping ErrCorrupt: %v", err)
			}
			return
		}
		again, err := EncodeRecord(got)
		if err != nil {
			t.Fatalf("a decoded record does not encode: %v", err)
		}
		if back, err := DecodeRecord(again); err != nil || !reflect.DeepEqual(back, got) {
			t.Fatalf("decoded record does not round-trip: %v", err)
		}
	})
}
