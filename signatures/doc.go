// Package signatures holds snapscan's signed, versioned YARA rule bundles:
// the bundle format (Build, ReadBundle), the Ed25519 keys that sign them and
// the sets of keys an appliance trusts (KeySet), the Receiver an appliance
// holds to verify, compile, persist and atomically activate them, and the
// protocol between receivers and the central server (PushTarget, Push,
// PushResponse, Refusal). The central server itself, which builds, signs,
// keeps and pushes bundles, is package sigserver below this one, so that
// an appliance never links it.
//
// The package is pure Go (it builds with CGO_ENABLED=0): it never compiles
// rules itself. Callers inject a Compiler, which in snapscan wraps
// scanner.CompileSources.
//
// # Bundle format, version 1
//
// A bundle is one file: a zstd stream (RFC 8878) holding a tar archive
// (POSIX ustar or PAX) of regular-file entries, in this order:
//
//  1. "manifest.json": the manifest, a JSON object (field names below).
//  2. "manifest.sig": the signature, a JSON object
//     {"algorithm": "ed25519", "key_id": ID, "signature": BASE64}.
//  3. One entry per rule file, named "rules/" + its manifest path, with
//     exactly the manifest's size and SHA-256, in any order.
//
// Manifest fields:
//
//	format      1 (this format)
//	name        the signature set's name: 1-64 characters of [A-Za-z0-9._-]
//	version     a positive integer (at most 2^53), strictly increasing for a name
//	created     creation time, RFC 3339
//	min_engine  the lowest engine version (dotted numbers, "4.2") that may load it
//	externals   the external variables the rules read (sorted, may be empty)
//	files       [{"path", "sha256" (lower-case hex), "size"}], sorted by path,
//	            paths unique, '/'-separated, relative, clean (io/fs.ValidPath),
//	            without "..", backslashes or control characters
//
// The signature is Ed25519 (RFC 8032) over the bytes "snapscan-bundle-v1\n"
// followed by the exact bytes of the manifest.json entry. Because the
// manifest names the set, its version and every file by hash, nothing in a
// bundle can be swapped, added, removed or replayed under another name or
// version without breaking the signature. A key's ID (KeyID) is the
// lower-case hex of the first 16 bytes of the SHA-256 of its raw 32-byte
// public key. Keys are stored as PEM: private keys as PKCS #8 ("PRIVATE
// KEY"), public keys as PKIX ("PUBLIC KEY"), as openssl genpkey -algorithm
// ed25519 writes them.
//
// Any tool can produce a bundle: write the manifest, sign it, and write the
// tar stream above through a zstd compressor. With common tools, for a
// manifest.json written beside a rules/ folder:
//
//	(printf 'snapscan-bundle-v1\n'; cat manifest.json) >msg
//	openssl pkeyutl -sign -rawin -inkey signing.key -in msg -out sig.bin
//	printf '{"algorithm":"ed25519","key_id":"%s","signature":"%s"}' \
//		"$KEY_ID" "$(base64 -w0 sig.bin)" >manifest.sig
//	tar --format=ustar -cf - manifest.json manifest.sig $(find rules -type f | sort) |
//		zstd -19 >set.bundle
//
// Only regular files may appear (no folder entries: hence the find).
//
// # Reading untrusted bundles
//
// ReadBundle treats its input as hostile: the compressed size, the
// expanded size, each file's size, the number of entries and the zstd
// window are capped (Limits); the manifest is parsed only after its
// signature verified against a trusted key; every file must be named in
// the manifest, once, with its size and hash; and every refusal wraps one
// of the Err* sentinels so callers can report the reason.
//
// # Central server and appliances
//
// sigserver.Server (see API.md beside this file for its HTTP API) watches a
// folder of rule sources, builds and signs a new version when it changes
// or on request, keeps every version on disk and pushes each new one to
// every registered appliance, retrying with backoff until each
// acknowledges. Appliances also pull the latest bundle when they start and
// periodically, so push and pull converge on the same state. Each pull and
// each push answer carries the version and digest the appliance runs, and
// a receiver with a server reports every bundle it refuses (Refusal), so
// that the server knows which appliances run its latest bundle and why the
// others do not.
//
// A Receiver, on the appliance, installs a bundle only when a trusted key
// signed it, its files match, its version is higher than the active one and
// it compiles; it then persists it and swaps it in atomically. Current
// returns an immutable Active set that a scan keeps for its whole life, so
// running scans finish on their rules and none sees a mix.
package signatures
