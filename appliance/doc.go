// Package appliance is snapscan's scanning service, the part a site deploys
// ("snapscan serve"): it wires the queue, the snapshot reader, the scanner
// and the signature receiver together behind an HTTP API, keeps the results
// in the queue's SQLite database, and tells operators what happens.
//
// # Pieces
//
//   - Config (Load): one strict YAML file; deploy/appliance.yaml documents it.
//     A wrong or missing setting fails start-up naming its key path.
//   - The runner: a queue job opens each disk with snapshot.Open, every read
//     (backing files too) going through the job's datastore budget, and scans
//     all volumes with the rule set active when the job starts. A corrupt or
//     unsupported image, or one with no readable volume, fails its job at once
//     (queue.Permanent); I/O errors that may pass are retried by the queue.
//   - Store: scans, per-volume statistics and findings (see Schema), and the
//     scanner's verdict cache (Cache), keyed by content hash, rule-set id and
//     path context, so identical files in other VMs are not scanned again
//     under the same signatures.
//   - Events: each finding as a JSON line on a stream and POSTed to a webhook,
//     through bounded buffers that drop (and count) rather than block scans.
//   - The HTTP API under /v1 (openapi.yaml beside this file), /healthz,
//     /readyz and /metrics (Prometheus, the appliance's own registry). Every
//     endpoint but the two health checks needs a bearer token or a client
//     certificate.
//   - A new signature version enqueues rescans of every VM scanned so far,
//     spread over signatures.rescan_spread through the queue's rescan class.
//
// # Life cycle
//
// New opens everything; Serve runs until its context ends, then stops taking
// work (the API closes and the queue drains: queue.Queue.Drain), gives
// running scans server.shutdown_grace to finish, and puts the rest back in
// the queue, where the next start finds them without the interrupted run
// counted as an attempt. Results are saved
// idempotently by job id, so a job that runs twice (after a crash) is stored
// once, and the queue records its completion once.
package appliance
