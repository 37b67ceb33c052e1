package audit

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// Head is the end of a chain: the last record's sequence number and hash
// (0 and nil for an empty chain).
type Head struct {
	Seq  uint64
	Hash []byte
}

// BuildFunc turns the head a sink holds into the record that follows it:
// with Seq, PrevHash and Hash (and a checkpoint's Signature) filled in.
type BuildFunc func(prev Head) (*Record, error)

// Sink is one destination. It keeps its own chain and serialises appends:
// under its lock it calls build with its current head, stores the returned
// record durably, and only then moves its head and returns. An error means
// the record may not have been stored.
type Sink interface {
	Append(ctx context.Context, build BuildFunc) error
	Close() error
}

// Options configure a Logger.
type Options struct {
	// HMACKey is the per-log key for secret values, at least 32 bytes. It
	// must itself be kept secret (sealed by the barrier at rest).
	HMACKey []byte
	// Signer, if set, signs checkpoints: a key in custody (ECDSA, Ed25519
	// or RSA). CheckpointEvery > 0 also signs every record whose Seq is a
	// multiple of it, so a chain is never long without a checkpoint.
	Signer          crypto.Signer
	CheckpointEvery uint64
	// Now is the clock (time.Now by default); tests set it.
	Now func() time.Time
}

// Logger writes records to every sink. It is safe for concurrent use; each
// sink orders the records it receives.
type Logger struct {
	key    []byte
	signer crypto.Signer
	every  uint64
	now    func() time.Time
	sinks  []Sink
	writer *StagedWriter
}

// New returns a Logger writing to sinks. At least one sink is required:
// a log that cannot record anything would let every request through
// unaudited.
func New(opts Options, sinks ...Sink) (*Logger, error) {
	if len(opts.HMACKey) < 32 {
		return nil, errors.New("audit: HMAC key must be at least 32 bytes")
	}
	if len(sinks) == 0 {
		return nil, errors.New("audit: no sink")
	}
	if opts.CheckpointEvery > 0 && opts.Signer == nil {
		return nil, errors.New("audit: CheckpointEvery needs a Signer")
	}
	if opts.Signer != nil {
		if _, err := signOpts(opts.Signer.Public()); err != nil {
			return nil, err
		}
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	l := &Logger{key: append([]byte(nil), opts.HMACKey...), signer: opts.Signer,
		every: opts.CheckpointEvery, now: now, sinks: sinks}
	l.writer = &StagedWriter{l: l}
	return l, nil
}

// Hash returns the recorded form of a secret value, so an operator can find
// the records that carried it (`sigil audit hash VALUE`).
func (l *Logger) Hash(value string) string { return hmacValue(l.key, value) }

// Log records rec in every sink. It returns an error wrapping ErrSink if
// any sink fails; the caller must then fail the request (and should not
// retry Log for it: the other sinks already hold the record). rec is not
// modified.
func (l *Logger) Log(ctx context.Context, rec Record) error {
	return l.append(ctx, &rec, false)
}

// Checkpoint appends a signed checkpoint record to every sink, anchoring
// the chains so far. Call it periodically (and before shutdown).
func (l *Logger) Checkpoint(ctx context.Context) error {
	if l.signer == nil {
		return errors.New("audit: checkpoint: no signer")
	}
	return l.append(ctx, &Record{Identity: "sigil", Operation: "audit/checkpoint", Status: "OK",
		Decision: Decision{Allowed: true}, Checkpoint: true}, true)
}

func (l *Logger) append(ctx context.Context, in *Record, sign bool) error {
	base, err := l.prepare(in)
	if err != nil {
		return err
	}
	return l.appendTo(ctx, base, sign, func(Sink) bool { return true })
}

// prepare returns the record as every sink will store it (before linking),
// checked once, before any sink, that it can be encoded and is not too
// large, so one sink cannot hold it while another refuses it.
func (l *Logger) prepare(in *Record) (*Record, error) {
	base := prepare(l.key, in, l.now())
	c, err := canonical(base)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSink, err)
	}
	if len(c) > maxRecordLen {
		return nil, fmt.Errorf("%w: record of %d bytes exceeds %d", ErrSink, len(c), maxRecordLen)
	}
	return base, nil
}

// build is the BuildFunc that links base to a sink's head (signing it as a
// checkpoint when sign is set or its Seq falls on one).
func (l *Logger) build(base *Record, sign bool) BuildFunc {
	return func(prev Head) (*Record, error) {
		r := *base
		h, err := link(&r, prev.Seq, prev.Hash)
		if err != nil {
			return nil, err
		}
		if sign || (l.every > 0 && r.Seq%l.every == 0) {
			sig, err := signHash(l.signer, h)
			if err != nil {
				return nil, err
			}
			r.Signature = sig
		}
		return &r, nil
	}
}

// appendTo appends base to every sink for which pick is true.
func (l *Logger) appendTo(ctx context.Context, base *Record, sign bool, pick func(Sink) bool) error {
	var errs []error
	for i, s := range l.sinks {
		if !pick(s) {
			continue
		}
		if err := s.Append(ctx, l.build(base, sign)); err != nil {
			errs = append(errs, fmt.Errorf("sink %d: %w", i, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrSink, errors.Join(errs...))
	}
	return nil
}

// TxSink is a Sink that can also append inside a transaction the caller
// owns, so a record commits with the caller's own writes or not at all.
type TxSink interface {
	Sink
	// AppendBatchTx links and stores builds' records in tx, in order
	// (each linked to the one before), which must be a transaction on the
	// sink's own store. The head is read and moved once, inside tx, so the
	// chain stays whole whatever else appends. An error stores none of
	// them; tx must then roll back.
	AppendBatchTx(ctx context.Context, tx storage.Repos, builds []BuildFunc) error
}

// Staged is a record to be written together with a caller's transaction:
// a StagedWriter stores it in every TxSink inside that transaction, and after
// the transaction commits, Finish writes it to the other sinks. Written
// that way, the record is exactly what Log would have written.
type Staged struct {
	l    *Logger
	base *Record
}

// Stage prepares rec for a StagedWriter and Finish. It returns nil (and no
// error) when no sink of l can append inside a transaction: then use Log.
func (l *Logger) Stage(rec Record) (*Staged, error) {
	if !slices.ContainsFunc(l.sinks, isTxSink) {
		return nil, nil
	}
	base, err := l.prepare(&rec)
	if err != nil {
		return nil, err
	}
	return &Staged{l: l, base: base}, nil
}

func isTxSink(s Sink) bool { _, ok := s.(TxSink); return ok }

// StagedWriter appends staged records of one Logger inside a caller's
// transaction, several at once: each TxSink's head is read and moved once
// for all of them. Its WriteTx has the shape of ca.BatchWriter, so a group
// commit of certificates appends their records as one batch.
type StagedWriter struct{ l *Logger }

// Writer returns l's StagedWriter, the same one on every call (a group
// commit batches the records of one writer together).
func (l *Logger) Writer() *StagedWriter { return l.writer }

// WriteTx appends items, each a *Staged from this Logger, in order, to
// every TxSink inside tx. An error (wrapping ErrSink) must abort tx; the
// records may then be appended again, alone or in another batch, in a
// later transaction.
func (w *StagedWriter) WriteTx(ctx context.Context, tx storage.Repos, items []any) error {
	bases := make([]*Record, len(items))
	for i, it := range items {
		s, ok := it.(*Staged)
		if !ok || s == nil || s.l != w.l {
			return fmt.Errorf("%w: item %d is not a record staged by this log", ErrSink, i)
		}
		bases[i] = s.base
	}
	var errs []error
	for i, sink := range w.l.sinks {
		ts, ok := sink.(TxSink)
		if !ok {
			continue
		}
		builds := make([]BuildFunc, len(bases))
		for j, b := range bases {
			builds[j] = w.l.build(b, false)
		}
		if err := ts.AppendBatchTx(ctx, tx, builds); err != nil {
			errs = append(errs, fmt.Errorf("sink %d: %w", i, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrSink, errors.Join(errs...))
	}
	return nil
}

// Finish writes the record to the sinks the StagedWriter did not, once the
// transaction has committed. On error (wrapping ErrSink) the caller must
// fail the request, as with Log.
func (s *Staged) Finish(ctx context.Context) error {
	return s.l.appendTo(ctx, s.base, false, func(sink Sink) bool { return !isTxSink(sink) })
}

// Close closes every sink.
func (l *Logger) Close() error {
	var errs []error
	for _, s := range l.sinks {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// checkpointMessage is what a checkpoint signature covers: a domain label
// (so the key's signature cannot be replayed as anything else) and the
// record's chain hash, which commits to every record before it.
func checkpointMessage(hash []byte) []byte {
	return append([]byte("sigil audit checkpoint v1\x00"), hash...)
}

// signOpts picks how a key of this type signs: Ed25519 over the message,
// ECDSA and RSA (PKCS #1 v1.5) over its SHA-256.
func signOpts(pub crypto.PublicKey) (crypto.SignerOpts, error) {
	switch pub.(type) {
	case ed25519.PublicKey:
		return crypto.Hash(0), nil
	case *rsa.PublicKey, interface{ Equal(crypto.PublicKey) bool }:
		return crypto.SHA256, nil
	}
	return nil, fmt.Errorf("audit: unsupported checkpoint key type %T", pub)
}

func signHash(s crypto.Signer, hash []byte) (string, error) {
	opts, err := signOpts(s.Public())
	if err != nil {
		return "", err
	}
	msg := checkpointMessage(hash)
	if opts.HashFunc() != 0 {
		d := sha256.Sum256(msg)
		msg = d[:]
	}
	sig, err := s.Sign(rand.Reader, msg, opts)
	if err != nil {
		return "", fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// hexHash decodes a record's hex hash field.
func hexHash(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, errors.New("malformed hash")
	}
	return b, nil
}
