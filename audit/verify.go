package audit

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ErrTampered is matched by every *VerifyError.
var ErrTampered = errors.New("audit chain broken")

// VerifyError locates the first record that breaks the chain.
type VerifyError struct {
	Seq    uint64 // the sequence number expected at the break
	Index  int    // 0-based position in the records verified
	Line   int    // 1-based line in a file (VerifyFile), else 0
	Reason string
}

func (e *VerifyError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("audit chain broken at line %d (seq %d): %s", e.Line, e.Seq, e.Reason)
	}
	return fmt.Sprintf("audit chain broken at seq %d: %s", e.Seq, e.Reason)
}

// Unwrap makes errors.Is(err, ErrTampered) true.
func (e *VerifyError) Unwrap() error { return ErrTampered }

// VerifyOptions tune Verify. The zero value verifies a whole chain from its
// first record, without signatures.
type VerifyOptions struct {
	// PublicKey checks every signature present; with CheckpointEvery > 0,
	// records whose Seq is a multiple of it must be signed.
	PublicKey       crypto.PublicKey
	CheckpointEvery uint64
	// From is the head before the first record (a chain verified in parts).
	// The zero Head means the chain's start.
	From Head
	// Continuation trusts the first record's Seq and PrevHash as the anchor:
	// for a file that logrotate started mid-chain. It cannot detect records
	// removed from that file's start; check the previous file's end.
	Continuation bool
	// ExpectHead, if set, must be the last record: a tail removed from a
	// chain is invisible to the chain itself.
	ExpectHead *Head
}

// Report summarises a verified chain.
type Report struct {
	Records        int
	Head           Head
	LastCheckpoint uint64 // Seq of the last signed record verified, 0 if none
}

// Verify checks that records form an unbroken chain: consecutive sequence
// numbers, each PrevHash the previous Hash, each Hash recomputed from the
// record's content, and (with a key) valid checkpoint signatures. It
// returns a *VerifyError for the first record that fails.
func Verify(records []Record, opts VerifyOptions) (Report, error) {
	v := newVerifier(opts)
	for i := range records {
		if err := v.next(&records[i], i, 0); err != nil {
			return v.rep, err
		}
	}
	return v.finish(len(records), 0)
}

type verifier struct {
	opts VerifyOptions
	prev Head
	rep  Report
}

func newVerifier(opts VerifyOptions) *verifier {
	v := &verifier{opts: opts, prev: opts.From}
	if len(v.prev.Hash) == 0 {
		v.prev.Hash = genesisHash
	}
	return v
}

func (v *verifier) fail(i, line int, format string, args ...any) error {
	return &VerifyError{Seq: v.prev.Seq + 1, Index: i, Line: line, Reason: fmt.Sprintf(format, args...)}
}

func (v *verifier) next(r *Record, i, line int) error {
	if i == 0 && v.opts.Continuation {
		ph, err := hexHash(r.PrevHash)
		if err != nil || r.Seq == 0 {
			return &VerifyError{Seq: r.Seq, Index: i, Line: line, Reason: "first record has no usable anchor"}
		}
		v.prev = Head{Seq: r.Seq - 1, Hash: ph}
	}
	if r.Seq != v.prev.Seq+1 {
		return v.fail(i, line, "found seq %d where %d was expected: a record was removed, inserted or reordered", r.Seq, v.prev.Seq+1)
	}
	if r.PrevHash != hex.EncodeToString(v.prev.Hash) {
		return v.fail(i, line, "prev_hash is not the hash of record %d", v.prev.Seq)
	}
	h, err := chainHash(v.prev.Hash, r)
	if err != nil {
		return v.fail(i, line, "cannot encode: %v", err)
	}
	if r.Hash != hex.EncodeToString(h) {
		return v.fail(i, line, "hash does not match the content: the record was modified")
	}
	if v.opts.PublicKey != nil {
		switch {
		case r.Signature != "":
			if err := verifySig(v.opts.PublicKey, h, r.Signature); err != nil {
				return v.fail(i, line, "checkpoint signature: %v", err)
			}
			v.rep.LastCheckpoint = r.Seq
		case v.opts.CheckpointEvery > 0 && r.Seq%v.opts.CheckpointEvery == 0:
			return v.fail(i, line, "checkpoint signature missing")
		case r.Checkpoint:
			return v.fail(i, line, "checkpoint record is not signed")
		}
	}
	v.prev = Head{Seq: r.Seq, Hash: h}
	return nil
}

func (v *verifier) finish(n, line int) (Report, error) {
	v.rep.Records = n
	v.rep.Head = v.prev
	if eh := v.opts.ExpectHead; eh != nil {
		hash := eh.Hash
		if len(hash) == 0 {
			hash = genesisHash
		}
		if eh.Seq != v.prev.Seq || !bytes.Equal(hash, v.prev.Hash) {
			return v.rep, &VerifyError{Seq: v.prev.Seq + 1, Index: n, Line: line,
				Reason: fmt.Sprintf("chain ends at seq %d but the head is seq %d: records removed from the end", v.prev.Seq, eh.Seq)}
		}
	}
	return v.rep, nil
}

func verifySig(pub crypto.PublicKey, hash []byte, sig64 string) error {
	sig, err := base64.StdEncoding.DecodeString(sig64)
	if err != nil {
		return errors.New("not base64")
	}
	msg := checkpointMessage(hash)
	d := sha256.Sum256(msg)
	ok := false
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d[:], sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) == nil
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	if !ok {
		return errors.New("invalid")
	}
	return nil
}

// VerifyFile verifies a JSON-lines audit file (one record a line, as
// FileSink writes it) and reports the first bad line. Blank lines are
// errors too: nothing but records belongs in the file.
func VerifyFile(r io.Reader, opts VerifyOptions) (Report, error) {
	v := newVerifier(opts)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 2*maxRecordLen)
	n := 0
	for sc.Scan() {
		line := n + 1
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return v.rep, v.fail(n, line, "not a record: %v", err)
		}
		if err := v.next(&rec, n, line); err != nil {
			return v.rep, err
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return v.rep, v.fail(n, n+1, "read: %v", err)
	}
	return v.finish(n, n+1)
}
