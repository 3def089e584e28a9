// Package appliance is snapscan's scanning service, the part a site deploys
// ("snapscan serve"): it wires the queue, the snapshot reader, the scanner
// and the signature receiver together behind an HTTP API, keeps what it
// learns in a results store, and tells operators what happens.
//
// # Pieces
//
//   - Config (Load): one strict YAML file; deploy/appliance.yaml documents it.
//     A wrong or missing setting fails start-up naming its key path.
//   - The database: the appliance opens it and owns it, and hands each part
//     what it needs: the queue its Store (queue/sqlite.New), the results
//     their Store (package results, implemented by results/sqlite).
//   - The runner: a queue job opens each disk with snapshot.Open, every read
//     (backing files too) going through the job's datastore budget and
//     counted for the job, and scans all volumes with the rule set active
//     when the job starts. A corrupt or unsupported image, or one with no
//     readable volume, fails its job at once (queue.Permanent); I/O errors
//     that may pass are retried by the queue. A run still going at
//     queue.job_timeout is stopped: its findings are stored, its result is
//     incomplete (time_limit), and the job fails, freeing its slot.
//   - Results (results.Store): each job's result with its status — clean,
//     findings or incomplete with the reasons and counts, never clean when
//     something was not scanned — its volumes and findings; the scanner's
//     verdict cache, keyed by content hash, rule-set id and path context, so
//     identical files in other VMs are not scanned again under the same
//     signatures; the inventory of VMs; and a per-minute history of each
//     datastore's reads against its budget.
//   - Events (package events): findings, failed and incomplete scans,
//     unreadable VMs and signature updates as JSON lines, webhook POSTs and
//     RFC 5424 syslog (TCP, TLS, UDP) carrying CEF or OCSF,
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
// New opens everything. Serve runs every long-running part (the API, the
// queue, the signature receiver, the rescanner, the I/O history, the event
// sinks) under one supervisor: when its context ends (SIGTERM) or any part
// fails (the API's listener, say), it stops them in one order — stop
// accepting work, drain the queue for server.shutdown_grace and put what
// still runs back in the queue without counting the interrupted run as an
// attempt, stop the receiver, the rescanner, the history and the events —
// then closes the results store and the database, and returns the first
// part's error. Results are saved idempotently by job id, so a job that
// runs twice (after a crash) is stored once, and the queue records its
// completion once.
package appliance
