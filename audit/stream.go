package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// StreamSink writes records as JSON lines to a stream: standard output for
// a container's log collector, or syslog. A stream cannot be read back, so
// its chain starts at the genesis hash each time the sink is created;
// `sigil audit verify` checks a captured stream like a rotated file
// (VerifyOptions.Continuation when it was captured mid-run).
type StreamSink struct {
	name string
	w    io.Writer

	mu   sync.Mutex
	head Head
}

// NewStreamSink returns a sink writing to w; name labels its errors.
func NewStreamSink(name string, w io.Writer) *StreamSink {
	return &StreamSink{name: name, w: w, head: Head{Hash: Genesis()}}
}

// Append implements Sink.
func (s *StreamSink) Append(ctx context.Context, build BuildFunc) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("audit %s: %w", s.name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := build(s.head)
	if err != nil {
		return fmt.Errorf("audit %s: %w", s.name, err)
	}
	h, err := hexHash(r.Hash)
	if err != nil {
		return fmt.Errorf("audit %s: %w", s.name, err)
	}
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit %s: %w", s.name, err)
	}
	if _, err := s.w.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("audit %s: write: %w", s.name, err)
	}
	s.head = Head{Seq: r.Seq, Hash: h}
	return nil
}

// Close implements Sink; the stream belongs to its creator.
func (s *StreamSink) Close() error { return nil }
