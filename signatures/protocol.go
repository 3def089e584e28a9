package signatures

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Headers an appliance sends with each pull, by which the central server
// tracks what it runs.
const (
	HeaderAppliance = "X-Snapscan-Appliance" // the appliance's ID
	HeaderVersion   = "X-Snapscan-Version"   // the version it runs, 0 for none
	HeaderDigest    = "X-Snapscan-Digest"    // SHA-256 (hex) of the bundle it runs
)

// PushTarget is where bundles are pushed to one appliance: its ID, the
// URL of its receiver (Receiver.Handler; the appliance mounts it at POST
// /v1/signatures) and the bearer token that URL expects. It is the body
// of a registration with the central server, an entry of the server's
// list of appliances, and a target of "snapscan sig push".
type PushTarget struct {
	ID    string `json:"id"`
	URL   string `json:"url"`
	Token string `json:"token,omitempty"`
}

// Validate checks the target's ID (ValidName) and that its URL is
// http(s).
func (t PushTarget) Validate() error {
	if !ValidName(t.ID) {
		return fmt.Errorf("appliance id %q: want 1-%d of [A-Za-z0-9._-]", t.ID, maxNameLen)
	}
	if !strings.HasPrefix(t.URL, "https://") && !strings.HasPrefix(t.URL, "http://") {
		return fmt.Errorf("appliance %s: push URL %q is not http(s)", t.ID, t.URL)
	}
	return nil
}

// Results of a push, in PushResponse.Result.
const (
	ResultInstalled     = "installed"
	ResultAlreadyActive = "already_active"
	ResultRejected      = "rejected"
)

// PushResponse is a receiver's answer to a push: the set active after the
// request and what became of the bundle.
type PushResponse struct {
	Appliance string `json:"appliance,omitempty"`
	Name      string `json:"name,omitempty"`
	// Version and Digest (SHA-256 of the bundle file, hex) are those
	// of the set active after the request; 0 and "" for none.
	Version   uint64 `json:"version"`
	Digest    string `json:"digest,omitempty"`
	RuleCount int    `json:"rule_count"`
	// Result is ResultInstalled, ResultAlreadyActive or ResultRejected.
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"` // Reason(err) when rejected
	Error  string `json:"error,omitempty"`
}

// PushError is a failed push: the receiver refused the bundle (Response
// says why; Unwrap gives the sentinel of its reason, so errors.Is works
// on it), or answered something that is not a PushResponse.
type PushError struct {
	URL      string
	Status   string // the HTTP status line, "409 Conflict"
	Code     int
	Response *PushResponse // nil when the answer was not a PushResponse
	Body     string        // the start of such an answer
}

func (e *PushError) Error() string {
	if e.Response != nil {
		return fmt.Sprintf("push to %s: %s: %s", e.URL, e.Status, e.Response.Error)
	}
	return fmt.Sprintf("push to %s: %s: %s", e.URL, e.Status, e.Body)
}

// Unwrap returns the sentinel of the receiver's reason, nil if none.
func (e *PushError) Unwrap() error {
	if e.Response == nil {
		return nil
	}
	return ErrorForReason(e.Response.Reason)
}

// Retryable reports whether sending the same bundle again may succeed:
// the receiver failed (5xx), timed out (408), was busy (429) or did not
// take the token (401: it may be rotating). Any other refusal is the
// appliance's verdict on this bundle.
func (e *PushError) Retryable() bool {
	c := e.Code
	return c >= 500 || c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c == http.StatusUnauthorized
}

// Push sends one bundle to a receiver. A 2xx answer (installed or
// already active) returns its PushResponse and a nil error; a refusal
// returns a *PushError, with the PushResponse when the receiver gave one;
// no answer returns the transport's error and a nil PushResponse.
func Push(ctx context.Context, c *http.Client, t PushTarget, bundle []byte) (*PushResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.URL, bytes.NewReader(bundle))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/vnd.snapscan.bundle")
	if t.Token != "" {
		req.Header.Set("Authorization", "Bearer "+t.Token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("push to %s: reading the answer: %w", t.URL, err)
	}
	var pr PushResponse
	if json.Unmarshal(body, &pr) != nil || pr.Result == "" {
		// Not the receiver's answer: the appliance's authentication,
		// a proxy. Its {"error": ...} is the message, if it has one.
		msg := string(bytes.TrimSpace(body[:min(len(body), 512)]))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &PushError{URL: t.URL, Status: resp.Status, Code: resp.StatusCode, Body: msg}
	}
	if resp.StatusCode/100 == 2 {
		return &pr, nil
	}
	return &pr, &PushError{URL: t.URL, Status: resp.Status, Code: resp.StatusCode, Response: &pr}
}

// Refusal is what an appliance reports to the central server (POST
// /v1/appliances/{id}/refusals) after refusing a bundle, pulled or
// pushed by anyone, so that the server shows the reason in GET
// /v1/appliances.
type Refusal struct {
	// Name and Version are the refused bundle's, when its signature
	// verified (empty and 0 otherwise: an unverified manifest is never
	// read); Digest is the SHA-256 of the bundle file.
	Name    string `json:"name,omitempty"`
	Version uint64 `json:"version,omitempty"`
	Digest  string `json:"digest"`
	Reason  string `json:"reason"` // Reason(err)
	Error   string `json:"error"`
	// ActiveVersion and ActiveDigest describe the set the appliance
	// kept running (0 and "" for none).
	ActiveVersion uint64    `json:"active_version"`
	ActiveDigest  string    `json:"active_digest,omitempty"`
	Time          time.Time `json:"time"`
}
