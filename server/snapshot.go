package server

// The snapshot RPC: an online backup of the embedded store, streamed to
// the CLI (the node and package snapshot do the work; this is the adapter).

import (
	"bufio"
	"context"

	"github.com/sigil-ca/sigil/internal/errs"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// snapshotPath is the policy path a snapshot needs read (and, as a sys/
// path, sudo) on: a snapshot is
// the whole database (sealed, but with every certificate, policy and
// audit record in clear), so it is granted like the other sys operations
// that expose everything.
const snapshotPath = "sys/storage/snapshot"

// snapshotChunk is the size of each streamed message, well under the
// gRPC message limit.
const snapshotChunk = 1 << 20

type snapshotService struct {
	sigilv1.UnimplementedSnapshotServiceServer
	s *Server
}

// chunkWriter sends what is written to it as SnapshotChunk messages.
type chunkWriter struct {
	stream sigilv1.SnapshotService_SaveServer
}

func (w chunkWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += snapshotChunk {
		end := min(off+snapshotChunk, len(p))
		if err := w.stream.Send(&sigilv1.SnapshotChunk{Data: p[off:end]}); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

func (h snapshotService) Save(_ *sigilv1.SnapshotSaveRequest, stream sigilv1.SnapshotService_SaveServer) error {
	s := h.s
	ctx := stream.Context()
	if _, err := s.core.Unsealed(); err != nil {
		return err
	}
	// streamAuthz has checked sudo on snapshotPath; the audit record is
	// written before any byte leaves, and the call fails if it cannot be.
	r := requestFrom(ctx)
	if r == nil || r.Decision == nil {
		return errs.New(errs.Internal, "no authorisation decision")
	}
	if err := s.auditStreamCall(ctx, sigilv1.SnapshotService_Save_FullMethodName, snapshotPath, nil); err != nil {
		return err
	}
	// Buffered, so the stream carries chunks of snapshotChunk bytes rather
	// than io.Copy's 32 KiB pieces.
	w := bufio.NewWriterSize(chunkWriter{stream: stream}, snapshotChunk)
	hdr, err := s.node.Snapshot(ctx, w)
	if err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return errs.Wrap(errs.Internal, "snapshot save", err)
	}
	s.log.InfoContext(ctx, "snapshot saved", "bytes", hdr.Size, "sha256", hdr.SHA256, "schema_version", hdr.SchemaVersion)
	return nil
}

// auditStreamCall records a streaming call's authorisation decision (the
// unary audit interceptor does not see streams): streamAuthz records a
// refusal, a handler its start. A record that cannot be written fails the
// call, as unaryAudit does.
func (s *Server) auditStreamCall(ctx context.Context, method, path string, callErr error) error {
	r := requestFrom(ctx)
	if r == nil {
		return nil
	}
	rec := r.AuditRecord(r.rid, method)
	rec.Path, rec.Status = path, grpcCode(callErr).String()
	if callErr != nil {
		rec.Error = publicMessage(callErr)
	}
	return s.core.Audit(ctx, rec)
}
