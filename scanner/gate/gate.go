// Package gate reads YARA rule sources far enough to tell, from a file's
// size and a few bytes at its start, which rules cannot match it, and cuts
// those rules out of the sources, so that the scanner runs a smaller set
// over the file.
//
// Most published rules open their condition with a test of the file's
// format and size — signature-base's typical rule is
// `uint16(0) == 0x5a4d and filesize < 300KB and 2 of them` — and libyara
// still searches a file for every string of every rule and evaluates every
// condition, whatever the file. Over a 117 MB ELF library, signature-base
// (5,849 rules) spends twice the time the 2,018 rules that can match an
// ELF file of that size spend.
//
// # Exactness
//
// A rule is cut only when its condition is false under three-valued
// (Kleene) logic, whatever its strings, modules and externals say: each
// `and`, `or` and `not` is followed, every test of `filesize` against a
// number and every `uintN(offset) == number` (or `!=`, little or big
// endian, offset and number constant, inside the first HeadLen bytes) is
// decided, anything else is unknown. A test that reads past the end of
// the file is unknown too: libyara's value is undefined there. Global
// rules are never cut (they govern the others of their namespace), nor a
// rule whose name another condition of its source mentions, nor any rule
// of a source that is not understood (an unterminated string, unbalanced
// braces, an include). The scanner also checks, for each pruned set it
// compiles, that the compiled rules are exactly the whole set's less the
// cut ones.
//
// # Classes
//
// Files are grouped in classes (Classify): a size bucket (under 64 KiB,
// under 1 MiB, under 16 MiB, larger) and the outcome of the few header
// tests that decide the most rules (signature-base: one, "is it a PE
// file"). Every file of a class gets the same pruned sources (Prune), so
// a caller compiles them once per class; a size test is decided for a
// class only when it comes out the same over the whole bucket, and the
// other header tests stay unknown. Coarse classes cut fewer rules than
// each file would allow (over signature-base, 3,779 for a 100 MB ELF
// file instead of 3,900) but keep the compiled sets few.
package gate

import (
	"bytes"
	"math"
	"slices"
	"strconv"
)

// MaxHead bounds the offsets the header tests may read: a test past it is
// unknown.
const MaxHead = 4096

// bounds are the size ladder: bucket i holds sizes from bounds[i-1]
// (0 for i = 0) to bounds[i]-1; the last bucket has no upper end.
var bounds = [...]int64{64 << 10, 1 << 20, 16 << 20}

// maxKeys bounds the header tests that tell classes apart: the ones that
// alone decide the most rules (signature-base: "is it a PE file", "is it
// an ELF file"). The others are left unknown, which only cuts less.
const maxKeys = 4

// Set is a parsed set of sources. It is read-only after Parse and safe for
// concurrent use.
type Set struct {
	srcs  []source
	preds []pred
	keys  []int // the preds Classify decides
	head  int
	rules int
}

type source struct {
	data  []byte
	rules []rule // nil when the source is kept whole
}

type rule struct {
	name       string
	start, end int  // the rule's bytes in its source, modifiers to closing brace
	keep       bool // global, or named by a condition of its source
	cond       *node
}

// pred is a header test uintW[be](off) == val.
type pred struct {
	width int
	be    bool
	off   int64
	val   uint64
}

type op uint8

const (
	opUnknown op = iota
	opAnd
	opOr
	opNot
	opSize // filesize cmp n
	opPred // preds[pred] (== val), or its negation for !=
)

type node struct {
	op   op
	kids []*node
	cmp  string
	n    int64
	pred int
	neg  bool
}

// tri is a three-valued truth: unknown, false or true.
type tri uint8

const (
	unknown tri = iota
	isFalse
	isTrue
)

// Parse reads sources, one YARA namespace each, as the scanner compiles
// them. It never fails: what it does not understand is kept.
func Parse(sources [][]byte) *Set {
	s := &Set{srcs: make([]source, len(sources))}
	predIndex := map[pred]int{}
	for i, data := range sources {
		s.srcs[i] = source{data: data, rules: s.parseSource(data, predIndex)}
		if s.srcs[i].rules != nil {
			s.rules += len(s.srcs[i].rules)
		}
	}
	s.pickKeys()
	return s
}

// pickKeys chooses the header tests that tell classes apart: those that,
// known alone, decide at least 1/32 of the rules false, at most maxKeys
// of them, the strongest first. A rule is tried with each test it makes
// (up to maxRulePreds of them: beyond, the weights are only a guide).
func (s *Set) pickKeys() {
	const maxRulePreds = 16
	weight := make([]int, len(s.preds))
	lo, hi := int64(0), int64(math.MaxInt64)
	t := make([]byte, len(s.preds))
	for _, src := range s.srcs {
		for _, r := range src.rules {
			if r.keep {
				continue
			}
			ps := r.cond.preds(nil, maxRulePreds+1)
			if len(ps) > maxRulePreds {
				continue
			}
			for _, i := range ps {
				for _, v := range [...]tri{isFalse, isTrue} {
					t[i] = byte(v)
					if s.eval(r.cond, Class{tests: string(t)}, lo, hi) == isFalse {
						weight[i]++
						t[i] = byte(unknown)
						break
					}
					t[i] = byte(unknown)
				}
			}
		}
	}
	for i, w := range weight {
		if w > 0 && w >= s.rules/32 {
			s.keys = append(s.keys, i)
		}
	}
	slices.SortStableFunc(s.keys, func(a, b int) int { return weight[b] - weight[a] })
	s.keys = s.keys[:min(len(s.keys), maxKeys)]
	for _, k := range s.keys {
		s.head = max(s.head, int(s.preds[k].off)+s.preds[k].width)
	}
}

// preds appends the distinct header tests n makes to ps, up to limit.
func (n *node) preds(ps []int, limit int) []int {
	if n.op == opPred && !slices.Contains(ps, n.pred) && len(ps) < limit {
		ps = append(ps, n.pred)
	}
	for _, k := range n.kids {
		ps = k.preds(ps, limit)
	}
	return ps
}

// Rules returns how many rules the set understood, each of which may be
// cut.
func (s *Set) Rules() int { return s.rules }

// HeadLen is how many bytes of a file's start Classify reads.
func (s *Set) HeadLen() int { return s.head }

// Class is what the set knows of a file before scanning it. It is
// comparable: files of one class are pruned alike.
type Class struct {
	bucket uint8
	tests  string // per pred: unknown, isFalse or isTrue
}

// Classify returns the class of a file of size bytes whose first bytes
// are head (at least HeadLen of them, or the whole file when it is
// shorter).
func (s *Set) Classify(size int64, head []byte) Class {
	c := Class{bucket: uint8(len(bounds))}
	for i, b := range bounds {
		if size < b {
			c.bucket = uint8(i)
			break
		}
	}
	t := make([]byte, len(s.preds))
	for _, i := range s.keys {
		p := s.preds[i]
		end := p.off + int64(p.width)
		if end > size || end > int64(len(head)) {
			continue // undefined in libyara
		}
		b := head[p.off:end]
		var v uint64
		for j := range p.width {
			if p.be {
				v = v<<8 | uint64(b[j])
			} else {
				v |= uint64(b[j]) << (8 * j)
			}
		}
		t[i] = byte(isFalse)
		if v == p.val {
			t[i] = byte(isTrue)
		}
	}
	c.tests = string(t)
	return c
}

// Pruned is a set's sources for one class.
type Pruned struct {
	// Sources are the sources in their order, each with the rules that
	// cannot match cut out (the same slice when none is).
	Sources [][]byte
	// Cut names the rules cut from each source.
	Cut [][]string
	// N is how many rules were cut in all.
	N int
}

// Prune returns the sources for files of class c.
func (s *Set) Prune(c Class) Pruned {
	lo, hi := int64(0), int64(math.MaxInt64)
	if int(c.bucket) > 0 {
		lo = bounds[c.bucket-1]
	}
	if int(c.bucket) < len(bounds) {
		hi = bounds[c.bucket] - 1
	}
	p := Pruned{Sources: make([][]byte, len(s.srcs)), Cut: make([][]string, len(s.srcs))}
	for i, src := range s.srcs {
		p.Sources[i] = src.data
		var out []byte
		last := 0
		for _, r := range src.rules {
			if r.keep || s.eval(r.cond, c, lo, hi) != isFalse {
				continue
			}
			if out == nil {
				out = make([]byte, 0, len(src.data))
			}
			out = append(out, src.data[last:r.start]...)
			last = r.end
			p.Cut[i] = append(p.Cut[i], r.name)
			p.N++
		}
		if out != nil {
			p.Sources[i] = append(out, src.data[last:]...)
		}
	}
	return p
}

func (s *Set) eval(n *node, c Class, lo, hi int64) tri {
	switch n.op {
	case opAnd, opOr:
		// A false operand decides an and, a true one an or.
		decides, v := isFalse, isTrue
		if n.op == opOr {
			decides, v = isTrue, isFalse
		}
		for _, k := range n.kids {
			switch x := s.eval(k, c, lo, hi); x {
			case decides:
				return x
			case unknown:
				v = unknown
			}
		}
		return v
	case opNot:
		return negate(s.eval(n.kids[0], c, lo, hi))
	case opSize:
		return sizeTest(n.cmp, n.n, lo, hi)
	case opPred:
		v := tri(c.tests[n.pred])
		if n.neg {
			return negate(v)
		}
		return v
	}
	return unknown
}

// negate is three-valued not.
func negate(v tri) tri {
	switch v {
	case isTrue:
		return isFalse
	case isFalse:
		return isTrue
	}
	return unknown
}

// sizeTest decides filesize cmp n for every size in [lo, hi], or says
// unknown.
func sizeTest(cmp string, n, lo, hi int64) tri {
	if cmp == "==" || cmp == "!=" {
		switch {
		case n >= lo && n <= hi:
			return unknown
		case cmp == "==":
			return isFalse
		}
		return isTrue
	}
	// The other comparisons are monotonic in size: both ends decide.
	f := func(size int64) bool {
		switch cmp {
		case "<":
			return size < n
		case "<=":
			return size <= n
		case ">":
			return size > n
		}
		return size >= n
	}
	a, b := f(lo), f(hi)
	switch {
	case a != b:
		return unknown
	case a:
		return isTrue
	}
	return isFalse
}

// parseSource returns the rules of one source, or nil when it is to be
// kept whole.
func (s *Set) parseSource(data []byte, predIndex map[pred]int) []rule {
	toks, ok := tokenize(data)
	if !ok {
		return nil
	}
	pairBrackets(data, toks)
	type parsed struct {
		rule
		cond []token
	}
	var rules []parsed
	names := map[string]bool{}
	for i := 0; i < len(toks); {
		t := toks[i]
		switch {
		case t.is(data, "import"):
			if i+1 >= len(toks) || toks[i+1].kind != tString {
				return nil
			}
			i += 2
			continue
		case t.is(data, "private"), t.is(data, "global"), t.is(data, "rule"):
		default:
			return nil // include, or what this package does not know
		}
		start, global := t.start, false
		for ; i < len(toks) && !toks[i].is(data, "rule"); i++ {
			switch {
			case toks[i].is(data, "global"):
				global = true
			case toks[i].is(data, "private"):
			default:
				return nil
			}
		}
		i++ // rule
		if i >= len(toks) || toks[i].kind != tIdent {
			return nil
		}
		name := toks[i].text(data)
		i++
		for i < len(toks) && !toks[i].isPunct(data, "{") {
			i++ // tags
		}
		if i >= len(toks) {
			return nil
		}
		// The body, to its closing brace; hex strings nest one level.
		depth, condAt := 0, -1
		j := i
		for ; j < len(toks); j++ {
			switch {
			case toks[j].isPunct(data, "{"):
				depth++
			case toks[j].isPunct(data, "}"):
				depth--
			case depth == 1 && condAt < 0 && toks[j].is(data, "condition") && j+1 < len(toks) && toks[j+1].isPunct(data, ":"):
				condAt = j + 2
			}
			if depth == 0 {
				break
			}
		}
		if j >= len(toks) || names[name] {
			return nil
		}
		names[name] = true
		r := parsed{rule: rule{name: name, start: start, end: toks[j].end, keep: global}}
		if condAt >= 0 && condAt < j {
			r.cond = toks[condAt:j]
		}
		rules = append(rules, r)
		i = j + 1
	}
	// A rule named by a condition is kept: cutting it would break the
	// one that names it.
	named := map[string]bool{}
	for _, r := range rules {
		for _, t := range r.cond {
			if t.kind == tIdent {
				named[t.text(data)] = true
			}
		}
	}
	out := make([]rule, len(rules))
	for i, r := range rules {
		out[i] = r.rule
		out[i].keep = out[i].keep || named[r.name]
		out[i].cond = &node{}
		if r.cond != nil {
			out[i].cond = s.expr(data, r.cond, predIndex, 0)
		}
	}
	return out
}

// maxDepth bounds the recursion over nested parentheses; maxPreds the
// distinct header tests a set tells (more are unknown).
const (
	maxDepth = 100
	maxPreds = 1024
)

// expr parses a condition's tokens into what eval decides.
func (s *Set) expr(data []byte, t []token, predIndex map[pred]int, depth int) *node {
	if depth > maxDepth {
		return &node{}
	}
	for wrapped(data, t) {
		t = t[1 : len(t)-1]
	}
	if len(t) == 0 {
		return &node{}
	}
	for _, o := range [...]struct {
		word string
		op   op
	}{{"or", opOr}, {"and", opAnd}} {
		parts := split(data, t, o.word)
		if len(parts) == 1 {
			continue
		}
		n := &node{op: o.op}
		for _, p := range parts {
			n.kids = append(n.kids, s.expr(data, p, predIndex, depth+1))
		}
		return n
	}
	// not binds tighter than any other operator in YARA's grammar: only
	// "not (…)" and "not not …" are a negation of what follows.
	if t[0].is(data, "not") {
		rest := t[1:]
		if len(rest) > 0 && (wrapped(data, rest) || rest[0].is(data, "not")) {
			return &node{op: opNot, kids: []*node{s.expr(data, rest, predIndex, depth+1)}}
		}
		return &node{}
	}
	return s.atom(data, t, predIndex)
}

// atom recognises filesize and header tests.
func (s *Set) atom(data []byte, t []token, predIndex map[pred]int) *node {
	cmpOf := func(tk token) string {
		if tk.kind != tPunct {
			return ""
		}
		switch c := tk.text(data); c {
		case "<", "<=", ">", ">=", "==", "!=":
			return c
		}
		return ""
	}
	if len(t) == 3 && t[0].is(data, "filesize") {
		c := cmpOf(t[1])
		n, ok := number(t[2].text(data))
		if c != "" && ok && t[2].kind == tIdent {
			return &node{op: opSize, cmp: c, n: n}
		}
		return &node{}
	}
	if len(t) == 6 && t[0].kind == tIdent && t[1].isPunct(data, "(") && t[3].isPunct(data, ")") {
		width, be := 0, false
		switch t[0].text(data) {
		case "uint8":
			width = 1
		case "uint16":
			width = 2
		case "uint32":
			width = 4
		case "uint8be":
			width, be = 1, true
		case "uint16be":
			width, be = 2, true
		case "uint32be":
			width, be = 4, true
		default:
			return &node{}
		}
		off, ok1 := number(t[2].text(data))
		val, ok2 := number(t[5].text(data))
		c := cmpOf(t[4])
		if !ok1 || !ok2 || (c != "==" && c != "!=") || off > MaxHead-int64(width) || t[2].kind != tIdent || t[5].kind != tIdent {
			return &node{}
		}
		p := pred{width: width, be: be, off: off, val: uint64(val)}
		i, seen := predIndex[p]
		if !seen && len(s.preds) >= maxPreds {
			return &node{}
		}
		if !seen {
			i = len(s.preds)
			predIndex[p] = i
			s.preds = append(s.preds, p)
		}
		return &node{op: opPred, pred: i, neg: c == "!="}
	}
	return &node{}
}

// number parses a YARA integer literal: decimal (with a KB or MB
// suffix), 0x hexadecimal or 0o octal; never negative.
func number(s string) (int64, bool) {
	mul := int64(1)
	base := 10
	switch {
	case len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X"):
		s, base = s[2:], 16
	case len(s) > 2 && s[:2] == "0o":
		s, base = s[2:], 8
	case len(s) > 2 && s[len(s)-2:] == "KB":
		s, mul = s[:len(s)-2], 1<<10
	case len(s) > 2 && s[len(s)-2:] == "MB":
		s, mul = s[:len(s)-2], 1<<20
	}
	v, err := strconv.ParseInt(s, base, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mul {
		return 0, false
	}
	return v * mul, true
}

// wrapped reports whether t is one parenthesised group.
func wrapped(data []byte, t []token) bool {
	return len(t) >= 2 && t[0].isPunct(data, "(") && t[0].pair == len(t)-1
}

// pairBrackets sets each opening bracket's pair.
func pairBrackets(data []byte, toks []token) {
	var open []int
	for i := range toks {
		switch toks[i].nest(data) {
		case 1:
			open = append(open, i)
		case -1:
			if n := len(open); n > 0 {
				toks[open[n-1]].pair = i - open[n-1]
				open = open[:n-1]
			}
		}
	}
}

// split cuts t at the word (and, or) outside any brackets; an empty part
// is kept (it makes an unknown).
func split(data []byte, t []token, word string) [][]token {
	var parts [][]token
	d, last := 0, 0
	for i, tk := range t {
		d += tk.nest(data)
		if d == 0 && tk.is(data, word) {
			parts = append(parts, t[last:i])
			last = i + 1
		}
	}
	return append(parts, t[last:])
}

type kind uint8

const (
	tIdent  kind = iota // keywords, names, numbers, $a, #a, @a, !a and their * forms
	tString             // "…"
	tRegexp             // /…/is
	tPunct              // operators and brackets
)

type token struct {
	kind       kind
	start, end int
	// pair is, for an opening bracket, the distance to its closing one
	// (0 when it has none), so that a group is recognised in constant
	// time however deep the nesting.
	pair int
}

func (t token) text(data []byte) string { return string(data[t.start:t.end]) }

func (t token) is(data []byte, word string) bool {
	return t.kind == tIdent && string(data[t.start:t.end]) == word
}

func (t token) isPunct(data []byte, p string) bool {
	return t.kind == tPunct && string(data[t.start:t.end]) == p
}

// nest is +1 for an opening bracket, -1 for a closing one.
func (t token) nest(data []byte) int {
	if t.kind != tPunct || t.end-t.start != 1 {
		return 0
	}
	switch data[t.start] {
	case '(', '[':
		return 1
	case ')', ']':
		return -1
	}
	return 0
}

// tokenize splits a source as YARA's lexer does, as far as this package
// needs: comments dropped; strings, regular expressions (YARA divides
// with '\', so a '/' outside a comment opens one) and words whole;
// operators of one or two characters. It fails on an unterminated
// comment, string or regular expression.
func tokenize(data []byte) ([]token, bool) {
	var toks []token
	isWord := func(c byte) bool {
		return c == '_' || c == '$' || c == '#' || c == '@' || c == '*' ||
			'0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
	}
	for i := 0; i < len(data); {
		c := data[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case bytes.HasPrefix(data[i:], []byte("//")):
			j := bytes.IndexByte(data[i:], '\n')
			if j < 0 {
				return toks, true
			}
			i += j
		case bytes.HasPrefix(data[i:], []byte("/*")):
			j := bytes.Index(data[i+2:], []byte("*/"))
			if j < 0 {
				return nil, false
			}
			i += j + 4
		case c == '"' || c == '/':
			j := i + 1
			for ; j < len(data) && data[j] != c; j++ {
				if data[j] == '\n' {
					return nil, false
				}
				if data[j] == '\\' {
					j++
				}
			}
			if j >= len(data) {
				return nil, false
			}
			j++
			k := tString
			if c == '/' {
				k = tRegexp
				for j < len(data) && (data[j] == 'i' || data[j] == 's') {
					j++
				}
			}
			toks = append(toks, token{kind: k, start: i, end: j})
			i = j
		case isWord(c):
			j := i + 1
			for j < len(data) && isWord(data[j]) {
				j++
			}
			toks = append(toks, token{kind: tIdent, start: i, end: j})
			i = j
		default:
			j := i + 1
			if j < len(data) {
				switch string(data[i : j+1]) {
				case "==", "!=", "<=", ">=", "<<", ">>", "..":
					j++
				}
			}
			toks = append(toks, token{kind: tPunct, start: i, end: j})
			i = j
		}
	}
	return toks, true
}
