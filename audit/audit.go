// Package audit is Sigil's tamper-evident, append-only audit log. Every
// request and its outcome, allowed or denied, becomes one Record; the
// Logger writes it to each of its sinks (a JSON-lines file, the database)
// before the request may proceed, and a failure to record fails the
// request: Log returns the error and the caller must refuse.
//
// # What a record holds, and what it never holds
//
// Request and response summaries are maps of Values. A value built with
// Secret (a password, a token, a private key, a share) is replaced, before
// anything is encoded, by "hmac-sha256:" and the hex HMAC-SHA-256 of the
// value under the log's key, so an operator holding the key can correlate
// (Logger.Hash, `sigil audit hash VALUE`) but a reader of the log learns
// nothing. An unhashed secret refuses to be JSON-encoded at all, so no code
// path can leak one by accident.
//
// # The chain
//
// Each sink keeps its own chain: record i carries the sink's sequence
// number, the previous record's hash, and
//
//	hash_i = SHA-256(hash_{i-1} || canonical(record_i))
//
// where hash_0 is 32 zero bytes and canonical is the record's JSON encoding
// without its hash and signature fields. Verify recomputes the chain and
// reports the first record that was modified, removed, inserted or
// reordered. A chain alone does not stop someone who can rewrite the whole
// tail (recomputing every later hash), nor reveal a truncated tail: signed
// checkpoints do. With a crypto.Signer in custody, every CheckpointEvery-th
// record (and every record written by Logger.Checkpoint) carries a
// signature over its hash; Verify checks them against the public key, and
// the database's head row (or the last checkpoint) bounds truncation.
package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// HashPrefix marks an HMAC'd secret in a record.
const HashPrefix = "hmac-sha256:"

// Limits keep one record bounded whatever the request carried.
const (
	maxValueLen  = 4 << 10   // plain values longer than this are truncated
	maxRecordLen = 256 << 10 // a larger canonical record is refused
)

// Errors callers branch on.
var (
	// ErrSink wraps every failure to record: the request must fail.
	ErrSink = errors.New("audit: cannot record")
	// ErrUnhashedSecret is returned when a Secret value would be encoded.
	ErrUnhashedSecret = errors.New("audit: secret value was not hashed")
)

// Value is one field of a request or response summary.
type Value struct {
	s      string
	secret bool // not yet hashed: never encoded
}

// Plain is a value recorded as it is (truncated when very long).
func Plain(s string) Value { return Value{s: s} }

// Secret is a value recorded only as its HMAC under the log's key.
func Secret(s string) Value { return Value{s: s, secret: true} }

// String returns the recorded form; for an unhashed secret, a placeholder.
func (v Value) String() string {
	if v.secret {
		return "(secret)"
	}
	return v.s
}

// MarshalJSON encodes the recorded string and refuses an unhashed secret.
func (v Value) MarshalJSON() ([]byte, error) {
	if v.secret {
		return nil, ErrUnhashedSecret
	}
	return json.Marshal(v.s)
}

// UnmarshalJSON reads a recorded value (already hashed if it was secret).
func (v *Value) UnmarshalJSON(b []byte) error {
	v.secret = false
	return json.Unmarshal(b, &v.s)
}

// Decision is the authorisation outcome of the request.
type Decision struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason,omitempty"`
}

// Record is one audited request. The caller fills the request fields; the
// Logger sets Time (when zero), hashes secrets and fills the chain fields.
// The JSON field order is the canonical order and must not change: it is
// part of every hash already written.
type Record struct {
	Seq        uint64           `json:"seq"`
	Time       time.Time        `json:"time"`
	RequestID  string           `json:"request_id,omitempty"`
	Identity   string           `json:"identity"`
	AuthMethod string           `json:"auth_method,omitempty"`
	Operation  string           `json:"operation"`
	Path       string           `json:"path,omitempty"`
	Decision   Decision         `json:"decision"`
	Request    map[string]Value `json:"request,omitempty"`
	Response   map[string]Value `json:"response,omitempty"`
	LeaseIDs   []string         `json:"lease_ids,omitempty"`
	Status     string           `json:"status"` // e.g. a gRPC code name
	Error      string           `json:"error,omitempty"`
	// Checkpoint marks a record written by Logger.Checkpoint.
	Checkpoint bool `json:"checkpoint,omitempty"`

	PrevHash string `json:"prev_hash"` // hex
	// Hash and Signature are excluded from canonical: they are computed
	// over it.
	Hash      string `json:"hash"`                // hex
	Signature string `json:"signature,omitempty"` // base64, over checkpointMessage(Hash)
}

// genesis is hash_0.
var genesisHash = make([]byte, sha256.Size)

// Genesis returns hash_0, the PrevHash of every chain's first record.
func Genesis() []byte { return bytes.Clone(genesisHash) }

// canonical is the record's encoding without Hash and Signature, which is
// what the chain hashes. Go's encoding/json is deterministic for this
// struct: fields in declaration order, map keys sorted, times in RFC 3339.
func canonical(r *Record) ([]byte, error) {
	c := *r
	c.Hash, c.Signature = "", ""
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("audit: encode record %d: %w", r.Seq, err)
	}
	return b, nil
}

// chainHash computes hash_i from hash_{i-1} and the record.
func chainHash(prev []byte, r *Record) ([]byte, error) {
	c, err := canonical(r)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(prev)
	h.Write(c)
	return h.Sum(nil), nil
}

// link fills r's chain fields to follow (prevSeq, prevHash) and returns the
// new hash.
func link(r *Record, prevSeq uint64, prevHash []byte) ([]byte, error) {
	if len(prevHash) == 0 {
		prevHash = genesisHash
	}
	r.Seq = prevSeq + 1
	r.PrevHash = hex.EncodeToString(prevHash)
	r.Hash, r.Signature = "", ""
	h, err := chainHash(prevHash, r)
	if err != nil {
		return nil, err
	}
	r.Hash = hex.EncodeToString(h)
	return h, nil
}

// hmacValue is the recorded form of a secret.
func hmacValue(key []byte, s string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return HashPrefix + hex.EncodeToString(m.Sum(nil))
}

// prepare returns the record as it will be written: a copy with secrets
// hashed, strings made valid UTF-8 (so the canonical encoding round-trips
// exactly through a file or the database), long values truncated and the
// time normalised to what the database keeps.
func prepare(key []byte, in *Record, now time.Time) *Record {
	r := *in
	if r.Time.IsZero() {
		r.Time = now
	}
	r.Time = r.Time.UTC().Truncate(time.Microsecond)
	clean := func(s string) string {
		s = strings.ToValidUTF8(s, "\uFFFD")
		if len(s) > maxValueLen {
			s = strings.ToValidUTF8(s[:maxValueLen], "") + "…(truncated)"
		}
		return s
	}
	fields := func(m map[string]Value) map[string]Value {
		if len(m) == 0 {
			return nil
		}
		out := make(map[string]Value, len(m))
		for k, v := range m {
			if v.secret {
				out[clean(k)] = Value{s: hmacValue(key, v.s)}
			} else {
				out[clean(k)] = Value{s: clean(v.s)}
			}
		}
		return out
	}
	r.Request, r.Response = fields(in.Request), fields(in.Response)
	r.RequestID, r.Identity, r.AuthMethod = clean(r.RequestID), clean(r.Identity), clean(r.AuthMethod)
	r.Operation, r.Path, r.Status, r.Error = clean(r.Operation), clean(r.Path), clean(r.Status), clean(r.Error)
	r.Decision.Reason = clean(r.Decision.Reason)
	if len(in.LeaseIDs) > 0 {
		r.LeaseIDs = make([]string, len(in.LeaseIDs))
		for i, id := range in.LeaseIDs {
			r.LeaseIDs[i] = clean(id)
		}
	}
	r.Seq, r.PrevHash, r.Hash, r.Signature = 0, "", "", ""
	return &r
}
