package appliance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/scanner/incremental"
)

// dbRecords keeps the incremental scans' records in the results database
// (results.Records), encoded with incremental.EncodeRecord: on SQLite
// they live beside the appliance's results; on PostgreSQL the fleet
// shares them, so that a golden image one appliance scanned spares the
// clones every appliance scans. keep bounds the records of one rule set.
type dbRecords struct {
	db   results.Records
	keep int
}

var _ incremental.Store = dbRecords{}

// Get implements incremental.Store.
func (s dbRecords) Get(ctx context.Context, identity, rules string) (*incremental.Record, error) {
	b, err := s.db.IncrementalRecord(ctx, identity, rules)
	if errors.Is(err, results.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := incremental.DecodeRecord(b)
	if err != nil {
		return nil, fmt.Errorf("the record of %s under rules %s in the results database: %w", identity, rules, err)
	}
	if r.Identity != identity || r.Rules != rules {
		return nil, fmt.Errorf("the record of %s under rules %s in the results database: %w: it holds the record of %s under %s",
			identity, rules, incremental.ErrCorrupt, r.Identity, r.Rules)
	}
	return r, nil
}

// Recorded implements incremental.Store.
func (s dbRecords) Recorded(ctx context.Context, path, rules string) (string, time.Time, error) {
	id, at, err := s.db.IncrementalRecordedAs(ctx, path, rules)
	if errors.Is(err, results.ErrNotFound) {
		return "", time.Time{}, nil
	}
	return id, at, err
}

// Put implements incremental.Store.
func (s dbRecords) Put(ctx context.Context, r *incremental.Record) error {
	b, err := incremental.EncodeRecord(r)
	if err != nil {
		return err
	}
	return s.db.PutIncrementalRecord(ctx, results.IncrementalRecord{Identity: r.Identity, Rules: r.Rules, Path: r.Path, Time: r.Time, Data: b}, s.keep)
}
