package events

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Facilities are the syslog facility names the configuration accepts
// (RFC 5424 section 6.2.1).
var Facilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
	"uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

// Header is the RFC 5424 header of the messages a syslog sink sends.
type Header struct {
	Facility int    // 0-23
	Hostname string // the appliance; "-" when empty
	AppName  string // default "snapscan"
	ProcID   string // the process id; "-" when empty
}

// SyslogSeverity maps CEF's 0-10 to a syslog severity: 9-10 crit (2),
// 7-8 err (3), 4-6 warning (4), 2-3 notice (5), 0-1 info (6).
func SyslogSeverity(s int) int {
	switch {
	case s >= 9:
		return 2
	case s >= 7:
		return 3
	case s >= 4:
		return 4
	case s >= 2:
		return 5
	}
	return 6
}

// RFC5424 formats one syslog message (RFC 5424 section 6):
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
//
// PRI is facility*8 + SyslogSeverity(severity); TIMESTAMP is UTC with
// microseconds; MSGID is the event kind; there is no structured data
// ("-"). MSG is written as given, without a BOM: CEF collectors expect
// the message to begin with "CEF:". Header fields are cut to their
// RFC lengths, and characters outside printable US-ASCII become "_".
func RFC5424(h Header, severity int, kind Kind, t time.Time, msg string) []byte {
	pri := h.Facility*8 + SyslogSeverity(severity)
	app := h.AppName
	if app == "" {
		app = "snapscan"
	}
	var b strings.Builder
	b.Grow(80 + len(msg))
	b.WriteByte('<')
	b.WriteString(strconv.Itoa(pri))
	b.WriteString(">1 ")
	b.WriteString(t.UTC().Format("2006-01-02T15:04:05.000000Z"))
	for _, f := range []struct {
		s   string
		max int
	}{{h.Hostname, 255}, {app, 48}, {h.ProcID, 128}, {string(kind), 32}} {
		b.WriteByte(' ')
		b.WriteString(headerField(f.s, f.max))
	}
	b.WriteString(" -")
	if msg != "" {
		b.WriteByte(' ')
		b.WriteString(msg)
	}
	return []byte(b.String())
}

// headerField makes s a valid RFC 5424 header field: 1 to max
// characters of PRINTUSASCII (33-126), "-" (NILVALUE) when empty.
func headerField(s string, max int) string {
	if s == "" {
		return "-"
	}
	out := []byte(s)
	for i, c := range out {
		if c < 33 || c > 126 {
			out[i] = '_'
		}
	}
	if len(out) > max {
		out = out[:max]
	}
	return string(out)
}

// OctetCounted frames a message for a stream transport (TCP, TLS) by
// octet counting, RFC 6587 section 3.4.1 (and RFC 5425 section 4.3):
// "MSG-LEN SP SYSLOG-MSG".
func OctetCounted(msg []byte) []byte {
	out := make([]byte, 0, len(msg)+8)
	out = strconv.AppendInt(out, int64(len(msg)), 10)
	out = append(out, ' ')
	return append(out, msg...)
}

// truncate cuts a message to at most n bytes for a datagram, at a
// character boundary and never after a lone escaping backslash, so a CEF
// record stays well-formed (RFC 5426 lets a sender truncate).
func truncate(msg []byte, n int) []byte {
	if len(msg) <= n {
		return msg
	}
	msg = msg[:n]
	// Drop a character cut in the middle.
	for i := len(msg) - 1; i >= 0 && i >= len(msg)-utf8.UTFMax; i-- {
		if utf8.RuneStart(msg[i]) {
			if !utf8.FullRune(msg[i:]) {
				msg = msg[:i]
			}
			break
		}
	}
	// An odd run of trailing backslashes ends in half an escape.
	k := 0
	for k < len(msg) && msg[len(msg)-1-k] == '\\' {
		k++
	}
	if k%2 == 1 {
		msg = msg[:len(msg)-1]
	}
	return msg
}

// formatMessage renders an event's MSG in a format.
func formatMessage(f Format, e *Event, p Product) ([]byte, error) {
	switch f {
	case FormatCEF:
		return []byte(CEF(e, p)), nil
	case FormatOCSF:
		return OCSF(e, p), nil
	case FormatJSON:
		return jsonEvent(e)
	}
	return nil, fmt.Errorf("events: unknown format %q", f)
}
