// Package acme is Sigil's ACME server (RFC 8555): the web front end and
// registration authority roles of Boulder's split. The WFE half parses and
// authenticates requests (flattened JWS verified with go-jose, an algorithm
// allow-list, single-use nonces stored in the database so every node sharing
// it accepts every other node's nonces, the url header bound to the request
// URL) and writes problem documents; the RA half owns the protocol objects
// (accounts, orders, authorizations, challenges, External Account Binding
// keys), asks the validation authority (package issuer/validation, through
// the VA interface) to check challenges asynchronously, and asks the CA
// (through the CA interface, satisfied by *ca.Authority) to sign, revoke and
// look up certificates. It also serves ACME Renewal Information (RFC 9773)
// and certificate profiles (draft-ietf-acme-profiles).
//
// Every response carries Replay-Nonce and Link rel="index"; every error is
// an application/problem+json document with an
// urn:ietf:params:acme:error:* type. Request bodies are bounded.
package acme
