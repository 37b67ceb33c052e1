package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
)

// Response wrapping. The wrapped secret is kept barrier-sealed under a
// setting named after a single-use token, and sealed to the recipient the
// unwrapper names at Unwrap: whoever holds the wrapping token decides where
// the secret goes, and only once.
const (
	wrapMetaKey = "wrapped_lease"
	// WrapKind is the barrier kind wrapped responses are sealed under.
	WrapKind = "response-wrap"
	// WrapSettingPrefix prefixes the settings that hold wrapped responses.
	WrapSettingPrefix = "wrap."
)

// wrappedResponse is what a wrapping token stands for.
type wrappedResponse struct {
	LeaseID   string            `json:"lease_id"`
	Duration  int64             `json:"lease_duration"`
	Renewable bool              `json:"renewable"`
	Data      map[string]string `json:"data"`
}

// wrapRewrapper lists wrapped responses (each bound to its wrapping
// token's id) for the barrier's rewrap registry.
func wrapRewrapper(s storage.Settings) storage.SealedSettings {
	return storage.SealedSettings{Settings: s, Prefix: WrapSettingPrefix, ID: func(key string) string {
		return strings.TrimPrefix(key, WrapSettingPrefix)
	}}
}

// wrap stores s under a new single-use token that lives for ttl.
func (c *Core) wrap(ctx context.Context, s Secret, ttl time.Duration) (string, time.Time, error) {
	u, err := c.Unsealed()
	if err != nil {
		return "", time.Time{}, err
	}
	tok, rec, err := u.Tokens.Create(ctx, auth.CreateOptions{TTL: ttl, Uses: 1,
		Meta: map[string]string{auth.PurposeMeta: "wrap", wrapMetaKey: s.BindingID}})
	if err != nil {
		return "", time.Time{}, err
	}
	pt, err := json.Marshal(wrappedResponse{LeaseID: s.BindingID, Duration: s.LeaseSeconds, Renewable: s.Renewable, Data: s.Data})
	if err != nil {
		return "", time.Time{}, err
	}
	defer clear(pt)
	sealed, err := c.opts.Barrier.Seal(ctx, WrapKind, rec.ID, pt)
	if err != nil {
		return "", time.Time{}, err
	}
	if err := c.opts.Store.Settings().PutIfAbsent(ctx, WrapSettingPrefix+rec.ID, sealed); err != nil {
		return "", time.Time{}, err
	}
	return tok, rec.ExpiresAt, nil
}

// Unwrapped is a wrapped response, sealed to the unwrapper's recipient.
type Unwrapped struct {
	LeaseID      string
	LeaseSeconds int64
	Renewable    bool
	Envelope     []byte
}

// Unwrap spends a wrapping token and returns its response sealed to rcpt
// (resolve rcpt first, so a bad recipient does not spend the token). The
// result names the wrapped lease whenever the token was valid, even on
// error, for the audit record.
func (c *Core) Unwrap(ctx context.Context, token string, rcpt envelope.Recipient) (*Unwrapped, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	id, err := u.Tokens.VerifyPurpose(ctx, strings.TrimSpace(token), "wrap")
	if errors.Is(err, auth.ErrInvalidToken) || errors.Is(err, auth.ErrWrongPurpose) {
		return nil, errs.New(errs.Unauthenticated, "invalid, expired or already unwrapped wrapping token")
	}
	if err != nil {
		return nil, errs.Wrap(errs.Internal, "verify wrapping token", err)
	}
	res := &Unwrapped{LeaseID: id.Meta[wrapMetaKey]}
	if res.LeaseID == "" {
		return nil, errs.New(errs.PermissionDenied, "not a wrapping token")
	}
	settings, key := c.opts.Store.Settings(), WrapSettingPrefix+id.TokenID
	sealed, err := settings.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && len(sealed) == 0) {
		return res, errs.New(errs.NotFound, "the wrapped response is gone")
	}
	if err != nil {
		return res, errs.Wrap(errs.Internal, "load wrapped response", err)
	}
	pt, err := c.opts.Barrier.Open(ctx, WrapKind, id.TokenID, sealed)
	if err != nil {
		return res, errs.Wrap(errs.Internal, "open wrapped response", err)
	}
	defer clear(pt)
	// Removing it first: a response is handed out at most once.
	if err := settings.Replace(ctx, key, sealed, []byte{}); err != nil {
		return res, errs.Wrap(errs.Internal, "consume wrapped response", err)
	}
	var w wrappedResponse
	if err := json.Unmarshal(pt, &w); err != nil {
		return res, errs.Wrap(errs.Internal, "wrapped response is corrupt", err)
	}
	res.LeaseSeconds, res.Renewable = w.Duration, w.Renewable
	res.Envelope, err = sealTo(rcpt, w.LeaseID, w.Data)
	clear(w.Data)
	if err != nil {
		return res, errs.Wrap(errs.Internal, "seal unwrapped secret", err)
	}
	return res, nil
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
func (p *wrapPruner) run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
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
	keys, err := p.store.Settings().List(ctx, WrapSettingPrefix)
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
		id := strings.TrimPrefix(key, WrapSettingPrefix)
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

// AuditedUnwrap resolves the recipient and unwraps token for it, auditing
// every attempt (the token only as an HMAC); a failed one says why, so a
// second unwrap (someone got there first) shows. When the record cannot be
// written the unwrap fails like any audited call. operation is the
// transport's name of the call, as the audit record shows it.
func (c *Core) AuditedUnwrap(ctx context.Context, at Attempt, operation, token string, ref *RecipientRef) (*Unwrapped, error) {
	if _, err := c.Unsealed(); err != nil {
		return nil, err
	}
	var out *Unwrapped
	rcpt, err := c.Recipient(ctx, ref)
	if err == nil {
		out, err = c.Unwrap(ctx, token, rcpt)
	}
	status, msg := at.Outcome(err)
	rec := audit.Record{RequestID: at.RequestID, Identity: "wrapping-token", AuthMethod: "wrapping-token",
		Operation: operation, Path: "sys/wrapping/unwrap",
		Decision: audit.Decision{Allowed: err == nil, Reason: "single-use wrapping token"}, Status: status,
		Request: map[string]audit.Value{"token": audit.Secret(token)}}
	if out != nil && out.LeaseID != "" {
		rec.LeaseIDs = []string{out.LeaseID}
	}
	if err != nil {
		rec.Error, rec.Decision.Reason = msg, "unwrap refused"
	}
	if aerr := c.Audit(ctx, rec); aerr != nil {
		return nil, aerr
	}
	return out, err
}
