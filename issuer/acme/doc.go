// Package acme is Sigil's ACME server (RFC 8555), split as Boulder splits
// it: package ra is the registration authority (accounts, orders,
// authorizations, challenges, EAB keys, issuance and revocation through
// the CA, validation through the VA), with typed requests and no HTTP;
// package wfe is the web front end (routing, rate limits, JWS, nonces,
// JSON views, problem documents). This package wires the two into one
// Server for the rest of Sigil.
package acme
