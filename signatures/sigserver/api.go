package sigserver

import (
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/statefile"
)

// maxRequest bounds a JSON request body: a registration, a reservation, a
// refusal report.
const maxRequest = 64 << 10

// Handler returns the server's API (API.md), authenticated by bearer
// token, on its own ServeMux.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h httpx.HandlerFunc) { mux.Handle(pattern, httpx.Handle(s.log, h)) }
	handle("POST /v1/build", s.handleBuild)
	handle("GET /v1/status", func(w http.ResponseWriter, r *http.Request) error {
		if _, err := httpx.StrictQuery(r); err != nil {
			return err
		}
		httpx.WriteJSON(w, http.StatusOK, s.Status())
		return nil
	})
	handle("POST /v1/versions", s.handleReserve)
	handle("GET /v1/bundles", s.handleList)
	handle("GET /v1/bundles/latest", s.handleLatest)
	handle("GET /v1/bundles/{version}", s.handleVersion)
	handle("GET /v1/appliances", func(w http.ResponseWriter, r *http.Request) error {
		if _, err := httpx.StrictQuery(r); err != nil {
			return err
		}
		httpx.WriteJSON(w, http.StatusOK, s.Appliances())
		return nil
	})
	handle("POST /v1/appliances", s.handleRegister)
	handle("POST /v1/appliances/{id}/refusals", s.handleRefusal)
	handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return httpx.Errorf(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	return httpx.RequireBearer(s.tokens, mux, httpx.BearerOptions{Log: s.log})
}

func (s *Server) handleBuild(w http.ResponseWriter, r *http.Request) error {
	q, err := httpx.StrictQuery(r, "version")
	if err != nil {
		return err
	}
	want, err := q.Int("version", 0, 1, 1<<53)
	if err != nil {
		return err
	}
	var m *signatures.Manifest
	builtNew := true
	if want > 0 {
		m, err = s.BuildVersion(r.Context(), uint64(want))
	} else {
		m, builtNew, err = s.Build(r.Context())
	}
	switch {
	case errors.Is(err, signatures.ErrCompile):
		// The operator asked for this build: the compiler's file and
		// line are what they need.
		httpx.WriteJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error(), "reason": signatures.Reason(err)})
		return nil
	case errors.Is(err, ErrVersionTaken):
		return httpx.NewError(http.StatusConflict, err.Error(), err)
	case err != nil:
		return httpx.NewError(http.StatusInternalServerError, "build failed", err)
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"built": builtNew, "manifest": m})
	return nil
}

// Reservation is the body and the answer of POST /v1/versions.
type Reservation struct {
	Name    string `json:"name"`
	Version uint64 `json:"version,omitempty"` // 0 in a request: the next free one
}

func (s *Server) handleReserve(w http.ResponseWriter, r *http.Request) error {
	if _, err := httpx.StrictQuery(r); err != nil {
		return err
	}
	var req Reservation
	if err := httpx.DecodeJSON(w, r, &req, maxRequest); err != nil {
		return err
	}
	v, err := s.Reserve(req.Name, req.Version)
	switch {
	case errors.Is(err, ErrVersionTaken), errors.Is(err, ErrWrongSet):
		st := s.Status()
		httpx.WriteJSON(w, http.StatusConflict, map[string]any{"error": err.Error(), "next_version": st.NextVersion})
		return nil
	case err != nil:
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, Reservation{Name: req.Name, Version: v})
	return nil
}

// BundleInfo is one entry of GET /v1/bundles, and the latest bundle in
// GET /v1/status.
type BundleInfo struct {
	Version uint64 `json:"version"`
	// Digest (SHA-256 of the bundle, hex) and Created are given for
	// the latest only.
	Digest  string    `json:"digest,omitempty"`
	Created time.Time `json:"created,omitzero"`
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) error {
	if _, err := httpx.StrictQuery(r); err != nil {
		return err
	}
	s.mu.Lock()
	list := make([]BundleInfo, len(s.versions))
	for i, v := range s.versions {
		list[i] = BundleInfo{Version: v}
	}
	s.mu.Unlock()
	httpx.WriteJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleLatest(w http.ResponseWriter, r *http.Request) error {
	q, err := httpx.StrictQuery(r, "have")
	if err != nil {
		return err
	}
	have, err := q.Int("have", 0, 0, 1<<53)
	if err != nil {
		return err
	}
	if id := r.Header.Get(signatures.HeaderAppliance); id != "" {
		v, err := strconv.ParseUint(r.Header.Get(signatures.HeaderVersion), 10, 64)
		if err == nil {
			s.seen(id, v, validDigest(r.Header.Get(signatures.HeaderDigest)))
		}
	}
	s.mu.Lock()
	latest := s.latest
	s.mu.Unlock()
	switch {
	case latest == nil:
		return httpx.Errorf(http.StatusNotFound, "no bundle built yet")
	case latest.m.Version <= uint64(have):
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	writeBundle(w, latest.m.Version, latest.data)
	return nil
}

// validDigest returns d if it is lower-case hex of 32 bytes, else "".
func validDigest(d string) string {
	if len(d) != 64 {
		return ""
	}
	for _, c := range d {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return ""
		}
	}
	return d
}

func writeBundle(w http.ResponseWriter, v uint64, data []byte) {
	w.Header().Set("Content-Type", "application/vnd.snapscan.bundle")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set(signatures.HeaderVersion, strconv.FormatUint(v, 10))
	w.WriteHeader(http.StatusOK)
	w.Write(data)
}

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) error {
	if _, err := httpx.StrictQuery(r); err != nil {
		return err
	}
	v, err := strconv.ParseUint(r.PathValue("version"), 10, 64)
	if err != nil {
		return httpx.BadRequest("version %q is not a number", r.PathValue("version"))
	}
	s.mu.Lock()
	_, known := slices.BinarySearch(s.versions, v)
	s.mu.Unlock()
	if !known {
		return httpx.Errorf(http.StatusNotFound, "no version %d", v)
	}
	data, err := statefile.ReadLimited(filepath.Join(s.cfg.StateDir, bundlesDir, bundleFile(v)), signatures.DefaultMaxBundleSize)
	if err != nil {
		return err
	}
	writeBundle(w, v, data)
	return nil
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) error {
	if _, err := httpx.StrictQuery(r); err != nil {
		return err
	}
	var t signatures.PushTarget
	if err := httpx.DecodeJSON(w, r, &t, maxRequest); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return httpx.BadRequest("%v", err)
	}
	if err := s.Register(t); err != nil {
		return err
	}
	s.log.Info("sigserver: appliance registered", "appliance", t.ID, "url", t.URL)
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"id": t.ID})
	return nil
}

func (s *Server) handleRefusal(w http.ResponseWriter, r *http.Request) error {
	if _, err := httpx.StrictQuery(r); err != nil {
		return err
	}
	id := r.PathValue("id")
	if !signatures.ValidName(id) {
		return httpx.BadRequest("appliance id %q: want 1-64 of [A-Za-z0-9._-]", id)
	}
	var ref signatures.Refusal
	if err := httpx.DecodeJSON(w, r, &ref, maxRequest); err != nil {
		return err
	}
	if signatures.ErrorForReason(ref.Reason) == nil && ref.Reason != "error" {
		return httpx.BadRequest("reason %q is not a refusal reason", ref.Reason)
	}
	if ref.Name != "" && !signatures.ValidName(ref.Name) {
		return httpx.BadRequest("name %q is not a signature set name", ref.Name)
	}
	if validDigest(ref.Digest) == "" || ref.ActiveDigest != "" && validDigest(ref.ActiveDigest) == "" {
		return httpx.BadRequest("digest: want lower-case hex of 32 bytes")
	}
	if len(ref.Error) > 4096 {
		ref.Error = ref.Error[:4096] + "..."
	}
	if !s.refused(id, &ref) {
		return httpx.Errorf(http.StatusServiceUnavailable, "too many appliances known")
	}
	for _, st := range s.Appliances() {
		if st.ID == id {
			httpx.WriteJSON(w, http.StatusOK, st)
		}
	}
	return nil
}
