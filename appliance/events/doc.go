// Package events tells security teams what the appliance found and what
// went wrong, where they look: a SIEM's syslog collector, a webhook, or a
// JSON lines stream.
//
// # Events
//
// An Event is a finding (one rule matching one file), a scan that failed
// or was incomplete, a VM that could not be snapshotted or read, or a
// signature update installed or refused (see Kind). Every event names the
// appliance; a finding also names the VM, the datastore, the disk, the
// volume, the path, the SHA-256, the rule with its namespace, tags and
// meta, and the signature set and version that found it.
//
// # Formats
//
//   - json: the Event as encoding/json writes it (the appliance's own form;
//     a finding has the keys of GET /v1/findings).
//   - cef: ArcSight Common Event Format, CEF:0, with the escaping rules of
//     "Implementing ArcSight CEF" (see CEF for the fields used).
//   - ocsf: OCSF 1.5.0 JSON: a finding is a Detection Finding (class_uid
//     2004); scans and VMs are Scan Activity (6007); signature updates
//     Application Lifecycle (6002). See OCSF.
//
// # Sinks
//
// A Dispatcher sends each event to every sink that takes its kind: the log
// stream (Config.Log), the webhook (one POST per event, retried with
// doubling waits; 4xx answers other than 408 and 429 are final), and any
// number of syslog destinations. Syslog messages are RFC 5424, framed by
// octet counting over TCP (RFC 6587) and TLS (RFC 5425), one per datagram
// over UDP (RFC 5426).
//
// Delivery is bounded and never blocks the caller: each sink has its own
// queue (Config.Buffer events), filled by Emit without waiting; when it is
// full, the event is dropped and counted. A stream collector that is down
// is reconnected with doubling, jittered waits (0.5 s to 30 s) while its
// queue holds what arrives meanwhile. Stats reports, per sink, what was
// sent, dropped and failed, and whether a stream is connected.
//
// Delivery is at most once per Emit on a given connection and at least
// once per stored result (a scan redone after a crash emits again). Plain
// syslog over TCP has no acknowledgement: messages written into a
// connection the collector has just closed are lost; the sink notices a
// closed connection as soon as the collector hangs up and reconnects
// before the next message.
package events
