// Package ra is the registration authority of Sigil's ACME server (RFC
// 8555), the role Boulder's ra and step-ca's acme packages play. It owns
// the protocol objects (accounts, orders, authorizations, challenges,
// External Account Binding keys) and their state transitions, asks the
// validation authority (package issuer/validation, through VA) to check
// challenges asynchronously, and asks the CA (through CA) to sign, revoke
// and look up certificates. It also answers ACME Renewal Information (RFC
// 9773) and offers certificate profiles (draft-ietf-acme-profiles).
//
// The RA takes typed requests and returns objects and *Error values; it
// knows nothing of HTTP, JWS or URLs. Package wfe is its web front end.
package ra
