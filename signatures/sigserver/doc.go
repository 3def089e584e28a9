// Package sigserver is snapscan's central signature server ("snapscan sig
// serve"): it builds and signs a new bundle version when its folder of
// rule sources changes (or on request), keeps every version, pushes each
// new one to the appliances it knows and serves pulls. Its HTTP API is
// described in ../API.md.
//
// It is a package of its own so that the appliance, which only receives
// bundles (signatures.Receiver), never links the server: package appliance
// imports signatures, never sigserver (a test checks it).
//
// # Version numbers
//
// The server is the authority for its set's version numbers. It numbers
// each build one above every version it issued or reserved. A bundle
// built by hand takes its number from the server first ("snapscan sig
// build --server", POST /v1/versions), so that the server's next build is
// not refused later as a rollback. Appliances report the version and
// digest they run (on every pull, in every push answer, and with every
// refusal they report), and the server shows for each appliance whether it
// runs its latest bundle (GET /v1/appliances, field "state"). An appliance
// running a version above everything the server issued or reserved means
// the server lost its state or bundles were numbered elsewhere: the server
// logs it at ERROR and lists it under "warnings" in GET /v1/status, and
// pushes nothing that appliance would refuse; POST /v1/build?version=N
// builds past it. The server never raises its own numbering on an
// appliance's word alone: a compromised appliance could otherwise push
// the set's versions to the end of their range.
package sigserver
