// Package httpx holds what snapscan's HTTP services share, so that the
// appliance API and the central signature server answer, authenticate and
// validate requests one way:
//
//   - Error, Handle and WriteError: a handler returns an error; the client
//     gets its status and Msg as {"error": MSG}, the log gets the detail
//     (Err), which may name files, SQL or keys (tailscale's tsweb.HTTPError
//     does the same).
//   - Tokens and RequireBearer: bearer-token authentication (RFC 6750),
//     tokens compared in constant time as SHA-256 digests, the scheme
//     matched case-insensitively (RFC 7235 section 2.1), surrounding
//     whitespace ignored, the secret never logged. ReadTokenFile reads a
//     file of tokens, one per line.
//   - DecodeJSON and UnmarshalStrict: one JSON value, no unknown fields, no
//     duplicate names, no trailing data, a bounded body.
//   - StrictQuery: query parameters checked against the names a handler
//     takes; anything else is a 400 that names it.
//   - IsLoopback and LoopbackAddr: whether a listener is reachable only from
//     this machine, for services that refuse plain HTTP elsewhere.
//   - ReadCertPool: a PEM file of CA certificates.
//
// Every helper that refuses a request returns an *Error with the status to
// send, so a handler only returns it.
package httpx
