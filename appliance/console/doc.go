// Package console is the appliance's operator console: web pages served on
// the API's own listener, under /console/, that read the appliance's /v1
// API from the browser.
//
// # Pages
//
//   - Datastores: each datastore's read bytes/s and ops/s against its
//     budget (uPlot charts: the last hour from a Trail kept in memory,
//     longer from the database's coarse history), the scans running on it
//     and waiting for it, pause and resume.
//   - Queue: running scans with their progress and ETA, waiting scans in
//     the order they will start and why each waits (queue.Queue.Waiting),
//     failed scans with their error; cancel.
//   - VMs: the inventory with each VM's last scan, result, signature
//     version and findings; search by name.
//   - Findings: filtered by VM, rule, tag and time; each with its path,
//     volume, disk, hash, rule meta and matched strings.
//   - Signatures: the active set, when it was installed, and whether the
//     central server's newest version reached this appliance.
//   - Events: what each SIEM sink sent, dropped and failed.
//   - Reports: the printable per-scan and per-period reports.
//
// # Login
//
// A browser logs in once with one of the API's bearer tokens and gets a
// session cookie (a random id; HttpOnly, SameSite=Strict, Secure under
// TLS) worth that token and nothing more: Authenticate lets a request with
// the cookie reach the same API handlers the token would, as long as the
// token is still configured. Requests that change something must come from
// this origin (Sec-Fetch-Site, or Origin) and carry the session's CSRF
// token in X-CSRF-Token, which the pages get from /console/session. Logins
// live 12 hours, in memory; a restart logs everyone out.
//
// # Assets
//
// Everything the pages load is embedded in the binary (static/, with the
// vendored uPlot 1.6.32 and its licence in static/vendor), served with a
// Content-Security-Policy that allows this origin's scripts and styles
// only, compressed once at start. Nothing is fetched from elsewhere.
package console
