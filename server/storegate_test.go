package server

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/cluster"
	"github.com/sigil-ca/sigil/internal/errs"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestStoreGate: the one store-gate decision, as the interceptor (ran:
// after the handler) and the tap (before anything ran) apply it.
func TestStoreGate(t *testing.T) {
	const method = "/sigil.v1.CAService/Sign"
	internal := errs.New(errs.Internal, "boom")
	unavailable := errs.New(errs.Unavailable, "sigil is sealed")
	invalid := errs.New(errs.InvalidArgument, "bad name")
	for _, tt := range []struct {
		name     string
		method   string
		down     bool // the node was marked down before the call
		pingFail bool
		err      error
		ran      bool
		want     error // nil: the call's own error comes back unchanged
	}{
		{"healthy, before the call", method, false, false, nil, false, nil},
		{"cut off, before the call", method, true, true, nil, false, cluster.ErrStorageUnavailable},
		{"cut off, status is exempt", sigilv1.SysService_Status_FullMethodName, true, true, nil, false, nil},
		{"handler's internal error, database gone", method, false, true, internal, true, cluster.ErrStorageLost},
		{"handler's unavailable, database gone", method, false, true, unavailable, true, cluster.ErrStorageLost},
		{"handler's internal error, database answers", method, false, false, internal, true, nil},
		{"handler's invalid argument, database gone", method, false, true, invalid, true, nil},
		{"tap's internal error, database gone", method, false, true, internal, false, cluster.ErrStorageUnavailable},
		{"tap's unavailable, database gone", method, false, true, unavailable, false, nil},
		{"exempt method's internal error, database gone", sigilv1.SysService_Status_FullMethodName, false, true, internal, true, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ping := func(context.Context) error { return nil }
			if tt.pingFail {
				ping = func(context.Context) error { return errors.New("connection refused") }
			}
			// A non-nil DB makes the node one of a shared cluster; the gate
			// never touches it (Healthy reads the last heartbeat, StorageFailed
			// pings).
			n := cluster.New(cluster.Config{DB: new(sql.DB), Ping: ping})
			if tt.down {
				n.MarkDown()
			}
			s := &Server{log: slog.New(slog.DiscardHandler), cluster: n}
			got := s.storeGate(context.Background(), tt.method, tt.err, tt.ran)
			if tt.want == nil {
				if got != tt.err {
					t.Fatalf("got %v, want the call's own error %v", got, tt.err)
				}
				return
			}
			if st, _ := status.FromError(got); st.Code() != codes.Unavailable || st.Message() != tt.want.Error() {
				t.Fatalf("got %v, want Unavailable: %v", got, tt.want)
			}
		})
	}
}
