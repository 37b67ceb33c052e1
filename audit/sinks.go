package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/internal/groupcommit"
	"github.com/sigil-ca/sigil/storage"
)

// FileOptions configure a FileSink.
type FileOptions struct {
	// SyncEvery > 1 batches fsync: the file is synced after that many
	// records or SyncInterval after the first unsynced one, whichever comes
	// first, so a crash loses at most that bound of acknowledged records.
	// 0 or 1 syncs every record before Append returns.
	SyncEvery    int
	SyncInterval time.Duration // default 1s
}

// FileSink appends records as JSON lines to a file of mode 0600.
type FileSink struct {
	path string
	opts FileOptions

	mu       sync.Mutex
	f        *os.File
	head     Head
	unsynced int
	// err is sticky: after a failed write or fsync the file's content is
	// unknown (a torn line, or pages the kernel dropped), so every later
	// append fails until an operator intervenes.
	err  error
	stop chan struct{}
	done chan struct{}
}

// OpenFile opens (or creates) the audit file at path and recovers the
// chain's head from its last line, whose hash it checks. It refuses a file
// others can read or write, and one whose last line is torn (a crash mid-
// write): appending after it would bury the damage.
func OpenFile(path string, opts FileOptions) (*FileSink, error) {
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = time.Second
	}
	s := &FileSink{path: path, opts: opts}
	f, head, err := openChainFile(path)
	if err != nil {
		return nil, err
	}
	s.f, s.head = f, head
	if opts.SyncEvery > 1 {
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		go s.syncLoop()
	}
	return s, nil
}

func openChainFile(path string) (*os.File, Head, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, Head{}, fmt.Errorf("audit file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Head{}, fmt.Errorf("audit file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		f.Close()
		return nil, Head{}, fmt.Errorf("audit file %s: mode %v, want 0600", path, fi.Mode().Perm())
	}
	head, err := lastHead(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, Head{}, fmt.Errorf("audit file %s: %w", path, err)
	}
	return f, head, nil
}

// lastHead reads the last line of the file and checks its hash.
func lastHead(f *os.File, size int64) (Head, error) {
	if size == 0 {
		return Head{}, nil
	}
	n := min(size, int64(2*maxRecordLen))
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil && !errors.Is(err, io.EOF) {
		return Head{}, err
	}
	if buf[len(buf)-1] != '\n' {
		return Head{}, errors.New("last line is incomplete (torn write?): inspect the file, then rotate it away")
	}
	buf = buf[:len(buf)-1]
	line := buf[bytes.LastIndexByte(buf, '\n')+1:]
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return Head{}, fmt.Errorf("last line is not a record: %w", err)
	}
	prev, err := hexHash(r.PrevHash)
	if err != nil {
		return Head{}, fmt.Errorf("last record: prev_hash: %w", err)
	}
	h, err := chainHash(prev, &r)
	if err != nil {
		return Head{}, err
	}
	if hex.EncodeToString(h) != r.Hash {
		return Head{}, fmt.Errorf("last record (seq %d) does not match its hash: %w", r.Seq, ErrTampered)
	}
	return Head{Seq: r.Seq, Hash: h}, nil
}

// Head returns the sink's current head.
func (s *FileSink) Head() Head {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.head
}

// Append implements Sink.
func (s *FileSink) Append(ctx context.Context, build BuildFunc) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.f == nil {
		return errors.New("audit file: closed")
	}
	r, err := build(s.head)
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	h, err := hexHash(r.Hash)
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	// One write of the whole line: with O_APPEND it lands at the end as a
	// unit, and a short write is a torn line we must not write past.
	if _, err := s.f.Write(append(line, '\n')); err != nil {
		s.err = fmt.Errorf("audit file %s: write: %w", s.path, err)
		return s.err
	}
	s.unsynced++
	if s.opts.SyncEvery <= 1 || s.unsynced >= s.opts.SyncEvery {
		if err := s.sync(); err != nil {
			return err
		}
	}
	s.head = Head{Seq: r.Seq, Hash: h}
	return nil
}

// sync fsyncs; the caller holds mu.
func (s *FileSink) sync() error {
	if s.unsynced == 0 || s.f == nil {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		s.err = fmt.Errorf("audit file %s: fsync: %w", s.path, err)
		return s.err
	}
	s.unsynced = 0
	return nil
}

func (s *FileSink) syncLoop() {
	defer close(s.done)
	t := time.NewTicker(s.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			_ = s.sync() // a failure is sticky in s.err; the next Append reports it
			s.mu.Unlock()
		}
	}
}

// Reopen closes and reopens the file at the same path, for logrotate
// (call it on SIGHUP). The chain continues across files: the new file's
// first record links to the old file's last, so verify a rotated file with
// VerifyOptions.Continuation. A non-empty file at the path must end at the
// current head.
func (s *FileSink) Reopen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return errors.New("audit file: closed")
	}
	if err := s.sync(); err != nil {
		return err
	}
	f, head, err := openChainFile(s.path)
	if err != nil {
		return err
	}
	if head.Seq != 0 && (head.Seq != s.head.Seq || !bytes.Equal(head.Hash, s.head.Hash)) {
		f.Close()
		return fmt.Errorf("audit file %s: after reopen its last record is seq %d, not the head %d", s.path, head.Seq, s.head.Seq)
	}
	old := s.f
	s.f = f
	if err := old.Close(); err != nil {
		return fmt.Errorf("audit file %s: close old: %w", s.path, err)
	}
	return nil
}

// Close syncs and closes the file.
func (s *FileSink) Close() error {
	if s.stop != nil {
		close(s.stop)
		<-s.done
		s.stop = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	serr := s.sync()
	cerr := s.f.Close()
	s.f = nil
	return errors.Join(serr, cerr)
}

// DBSink appends records to the database's audit log, whose head row
// serialises appends from every node sharing the database. Concurrent
// appends are group-committed: one transaction links and stores every
// record queued meanwhile, and each caller returns only once its record is
// committed.
type DBSink struct {
	store  DBStore
	commit *groupcommit.Committer[BuildFunc]
}

// DBStore is the storage a DBSink writes to; storage.Store satisfies it.
type DBStore interface {
	Audit() storage.AuditLog
	InTx(ctx context.Context, fn func(tx storage.Repos) error) error
}

// maxDBBatch bounds the records linked in one transaction.
const maxDBBatch = 128

// NewDBSink returns a sink over a store's audit log.
func NewDBSink(store DBStore) *DBSink {
	s := &DBSink{store: store}
	s.commit = groupcommit.New(maxDBBatch, s.appendBatch, nil, nil)
	return s
}

// Append implements Sink.
func (s *DBSink) Append(ctx context.Context, build BuildFunc) error {
	if err := s.commit.Do(ctx, build); err != nil {
		return fmt.Errorf("audit db: %w", err)
	}
	return nil
}

// appendBatch links and stores builds in order in one transaction, reading
// and moving the head once; each record links to the one before it. If the
// batch fails, nothing of it is stored and the committer retries each
// record in its own transaction.
func (s *DBSink) appendBatch(ctx context.Context, builds []BuildFunc) error {
	return s.store.InTx(ctx, func(tx storage.Repos) error { return s.AppendBatchTx(ctx, tx, builds) })
}

// AppendBatchTx implements TxSink: the records are linked in order to the
// head the transaction sees, which is read and moved once for all of them.
func (s *DBSink) AppendBatchTx(ctx context.Context, tx storage.Repos, builds []BuildFunc) error {
	recs := make([]func(int64, []byte) (*storage.AuditRecord, error), len(builds))
	for i, build := range builds {
		recs[i] = dbRecord(build)
	}
	if err := tx.Audit().AppendBatch(ctx, recs); err != nil {
		return fmt.Errorf("audit db: %w", err)
	}
	return nil
}

// dbRecord adapts a BuildFunc to the storage audit log's form.
func dbRecord(build BuildFunc) func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error) {
	return func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error) {
		r, err := build(Head{Seq: uint64(prevSeq), Hash: prevHash})
		if err != nil {
			return nil, err
		}
		h, err := hexHash(r.Hash)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		return &storage.AuditRecord{Seq: int64(r.Seq), Time: r.Time, PrevHash: prevHash, Hash: h, Record: b}, nil
	}
}

// Close implements Sink; the store is closed by its owner.
func (s *DBSink) Close() error { return nil }

// VerifyDB reads the whole database log and verifies it against the
// stored head, so a removed tail is detected too.
func VerifyDB(ctx context.Context, log storage.AuditLog, opts VerifyOptions) (Report, error) {
	seq, hash, err := log.Head(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("audit db: %w", err)
	}
	if opts.ExpectHead == nil {
		opts.ExpectHead = &Head{Seq: uint64(seq), Hash: hash}
	}
	v := newVerifier(opts)
	var after int64
	n := 0
	for {
		page, err := log.List(ctx, after, 1000)
		if err != nil {
			return v.rep, fmt.Errorf("audit db: %w", err)
		}
		if len(page) == 0 {
			break
		}
		for _, row := range page {
			var r Record
			if err := json.Unmarshal(row.Record, &r); err != nil {
				return v.rep, v.fail(n, 0, "row %d is not a record: %v", row.Seq, err)
			}
			// The columns are what the chain links by; the JSON is what
			// a reader sees. They must agree.
			if r.Seq != uint64(row.Seq) || r.Hash != hex.EncodeToString(row.Hash) {
				return v.rep, v.fail(n, 0, "row %d: columns and record disagree", row.Seq)
			}
			if err := v.next(&r, n, 0); err != nil {
				return v.rep, err
			}
			n++
		}
		after = page[len(page)-1].Seq
	}
	return v.finish(n, 0)
}
