// Package wfe is the web front end of Sigil's ACME server (RFC 8555), the
// role of Boulder's wfe2 and step-ca's acme/api. It routes requests with
// http.ServeMux method and wildcard patterns, applies the per-client-IP
// rate limits, parses and authenticates requests (flattened JWS verified
// with go-jose, an algorithm allow-list, single-use nonces stored in the
// database so every node sharing it accepts every other node's nonces, the
// url header bound to the request URL), calls the registration authority
// (package ra) with typed requests, and renders its answers as typed JSON
// objects with URLs, or its errors as problem documents.
//
// Every response carries Replay-Nonce and Link rel="index"; every error is
// an application/problem+json document with an
// urn:ietf:params:acme:error:* type. Request bodies are bounded.
package wfe
