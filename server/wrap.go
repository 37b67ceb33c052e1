package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
)

// Response wrapping. The wrapped secret is kept barrier-sealed under a
// setting named after a single-use token, and sealed to the recipient the
// unwrapper names at Unwrap: whoever holds the wrapping token decides where
// the secret goes, and only once.
const (
	wrapMetaKey   = "wrapped_lease"
	wrapKind      = "response-wrap"
	wrapSettingPx = "wrap."
)

// wrappedResponse is what a wrapping token stands for.
type wrappedResponse struct {
	LeaseID   string            `json:"lease_id"`
	Duration  int64             `json:"lease_duration"`
	Renewable bool              `json:"renewable"`
	Data      map[string]string `json:"data"`
}

// wrap stores a response under a new single-use token.
func (s *Server) wrap(ctx context.Context, a *core.Unsealed, resp *sigilv1.CredsResponse, data map[string]string, ttl time.Duration) (string, time.Time, error) {
	tok, rec, err := a.Tokens.Create(ctx, auth.CreateOptions{TTL: ttl, Uses: 1, Meta: map[string]string{auth.PurposeMeta: "wrap", wrapMetaKey: resp.GetLeaseId()}})
	if err != nil {
		return "", time.Time{}, err
	}
	pt, err := json.Marshal(wrappedResponse{LeaseID: resp.GetLeaseId(), Duration: resp.GetLeaseDurationSeconds(), Renewable: resp.GetRenewable(), Data: data})
	if err != nil {
		return "", time.Time{}, err
	}
	defer clear(pt)
	sealed, err := s.barrier.Seal(ctx, wrapKind, rec.ID, pt)
	if err != nil {
		return "", time.Time{}, err
	}
	if err := s.store.Settings().PutIfAbsent(ctx, wrapSettingPx+rec.ID, sealed); err != nil {
		return "", time.Time{}, err
	}
	return tok, rec.ExpiresAt, nil
}

type wrapService struct {
	sigilv1.UnimplementedWrapServiceServer
	s *Server
}

// Unwrap implements WrapService.Unwrap. Every attempt is audited, and a
// failed one says why, so a second unwrap (someone got there first) shows.
func (h wrapService) Unwrap(ctx context.Context, req *sigilv1.UnwrapRequest) (resp *sigilv1.CredsResponse, err error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	leaseID := ""
	defer func() {
		rec := audit.Record{Identity: "wrapping-token", AuthMethod: "wrapping-token", Operation: sigilv1.WrapService_Unwrap_FullMethodName,
			Path: "sys/wrapping/unwrap", Decision: audit.Decision{Allowed: err == nil}, Status: status.Code(err).String(),
			Request: map[string]audit.Value{"token": audit.Secret(req.GetToken())}}
		if leaseID != "" {
			rec.LeaseIDs = []string{leaseID}
		}
		if err != nil {
			rec.Error = status.Convert(err).Message()
			rec.Decision.Reason = "unwrap refused"
		} else {
			rec.Decision.Reason = "single-use wrapping token"
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if aerr := h.s.logAudit(actx, a, rec); aerr != nil {
			resp, err = nil, aerr
		}
	}()
	rcpt, err := engineService{s: h.s}.recipient(ctx, a, req.GetRecipient())
	if err != nil {
		return nil, err
	}
	id, err := a.Tokens.VerifyPurpose(ctx, strings.TrimSpace(req.GetToken()), "wrap")
	if errors.Is(err, auth.ErrInvalidToken) || errors.Is(err, auth.ErrWrongPurpose) {
		return nil, status.Error(codes.Unauthenticated, "invalid, expired or already unwrapped wrapping token")
	}
	if err != nil {
		return nil, h.s.grpcError("verify wrapping token", err)
	}
	leaseID = id.Meta[wrapMetaKey]
	if leaseID == "" {
		return nil, status.Error(codes.PermissionDenied, "not a wrapping token")
	}
	key := wrapSettingPx + id.TokenID
	sealed, err := h.s.store.Settings().Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && len(sealed) == 0) {
		return nil, status.Error(codes.NotFound, "the wrapped response is gone")
	}
	if err != nil {
		return nil, h.s.grpcError("load wrapped response", err)
	}
	pt, err := h.s.barrier.Open(ctx, wrapKind, id.TokenID, sealed)
	if err != nil {
		return nil, h.s.grpcError("open wrapped response", err)
	}
	defer clear(pt)
	// Removing it first: a response is handed out at most once.
	if err := h.s.store.Settings().Replace(ctx, key, sealed, []byte{}); err != nil {
		return nil, h.s.grpcError("consume wrapped response", err)
	}
	var w wrappedResponse
	if err := json.Unmarshal(pt, &w); err != nil {
		return nil, status.Error(codes.Internal, "wrapped response is corrupt")
	}
	env, err := envelope.SealData(rcpt, w.LeaseID, w.Data)
	clear(w.Data)
	if err != nil {
		return nil, h.s.engineError("seal secret", err)
	}
	wire, err := env.MarshalBinary()
	if err != nil {
		return nil, status.Error(codes.Internal, "encode envelope")
	}
	return &sigilv1.CredsResponse{LeaseId: w.LeaseID, LeaseDurationSeconds: w.Duration, Renewable: w.Renewable, Envelope: wire}, nil
}

// wrapPruneInterval is how often expired and used wrapping slots are
// deleted. Wrapping TTLs are minutes to hours; a slot outlives its token by
// at most this long.
const wrapPruneInterval = 10 * time.Minute

// wrapPruner deletes wrapping slots (their sealed secret) once the wrapping
// token has expired unused or been used, so a response nobody unwrapped
// does not stay at rest after its token is dead. It deletes the expired
// token too: nothing else removes a wrapping token, which has no lease.
type wrapPruner struct {
	store storage.Store
	// tokens deletes tokens through the verification cache.
	tokens interface {
		Delete(ctx context.Context, id string) error
	}
	log *slog.Logger
	now func() time.Time
	// suspects are slots seen on the previous pass holding a secret while
	// their token was gone. That is also what an unwrap looks like between
	// spending the token and consuming the slot, so such a slot is deleted
	// only when it is still there one pass later. Used by one goroutine.
	suspects map[string]bool
}

func newWrapPruner(store storage.Store, tokens interface {
	Delete(ctx context.Context, id string) error
}, log *slog.Logger) *wrapPruner {
	return &wrapPruner{store: store, tokens: tokens, log: log, now: time.Now, suspects: map[string]bool{}}
}

// run prunes every interval until ctx ends.
func (p *wrapPruner) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := p.prune(ctx)
		if err != nil && ctx.Err() == nil {
			p.log.Warn("prune wrapping slots failed", "err", err)
		}
		if n > 0 {
			p.log.Info("pruned wrapping slots", "count", n)
		}
	}
}

// prune makes one pass over the wrapping slots and returns how many it
// deleted. Errors on one slot do not stop the pass; they are returned
// joined.
func (p *wrapPruner) prune(ctx context.Context) (int, error) {
	keys, err := p.store.Settings().List(ctx, wrapSettingPx)
	if err != nil {
		return 0, fmt.Errorf("list wrapping slots: %w", err)
	}
	var (
		n        int
		errs     []error
		now      = p.now()
		suspects = map[string]bool{}
	)
	for _, key := range keys {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		id := strings.TrimPrefix(key, wrapSettingPx)
		tok, err := p.store.Tokens().Get(ctx, id)
		switch {
		case err == nil && (tok.ExpiresAt.IsZero() || now.Before(tok.ExpiresAt)):
			continue // live: its holder may still unwrap it
		case err == nil:
			// Expired unused. The token can no longer verify, so no unwrap
			// can be reading the slot: delete the secret, then the token.
			if err := p.deleteSlot(ctx, key); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
			if err := p.tokens.Delete(ctx, id); err != nil && !errors.Is(err, storage.ErrNotFound) {
				errs = append(errs, fmt.Errorf("delete expired wrapping token %s: %w", id, err))
			}
		case errors.Is(err, storage.ErrNotFound):
			val, err := p.store.Settings().Get(ctx, key)
			if errors.Is(err, storage.ErrNotFound) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("read wrapping slot %s: %w", key, err))
				continue
			}
			if len(val) > 0 && !p.suspects[key] {
				suspects[key] = true // maybe mid-unwrap: next pass decides
				continue
			}
			if err := p.deleteSlot(ctx, key); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		default:
			errs = append(errs, fmt.Errorf("look up wrapping token %s: %w", id, err))
		}
	}
	p.suspects = suspects
	return n, errors.Join(errs...)
}

func (p *wrapPruner) deleteSlot(ctx context.Context, key string) error {
	if err := p.store.Settings().Delete(ctx, key); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("delete wrapping slot %s: %w", key, err)
	}
	return nil
}
