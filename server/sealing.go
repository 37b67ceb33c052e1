package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/seal"
	"github.com/sigil-ca/sigil/storage"
)

// Settings holding the seal state. Neither is secret: the share config holds
// keyed tags only, and the wrapped master key opens only inside the HSM.
const (
	settingSealConfig    = "seal.shamir_config"
	settingWrappedMaster = "seal.hsm_wrapped_master"
)

// errSealed is what every gated request answers while sealed.
var errSealed = status.Error(codes.Unavailable, "sigil is sealed: unseal it with `sigil operator unseal` (see `sigil status`)")

// unsealed returns the activation, or the "sealed" error callers return as is.
func (s *Server) unsealed() (*active, error) {
	if a := s.current(); a != nil {
		return a, nil
	}
	return nil, errSealed
}

// current returns the activation, or nil while sealed.
func (s *Server) current() *active {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.act
}

// startUnsealed brings the server to its start-up seal state: dev servers
// unseal from their key file, HSM servers from the wrapped master key, and
// everything else waits sealed (or uninitialised) for operators.
func (s *Server) startUnsealed(ctx context.Context, fresh bool) error {
	if s.cfg.Dev {
		master, err := devMasterKey(ctx, s.cfg.DataDir, s.store, fresh)
		if err != nil {
			return err
		}
		defer clear(master)
		return s.unsealWith(ctx, master)
	}
	raw, err := s.store.Settings().Get(ctx, settingSealConfig)
	if errors.Is(err, storage.ErrNotFound) {
		s.log.Warn("sigil is not initialised: run `sigil operator init`")
		return nil
	}
	if err != nil {
		return fmt.Errorf("load seal config: %w", err)
	}
	cfg, err := seal.ParseConfig(raw)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.initialized, s.progress = true, seal.NewProgress(cfg)
	s.mu.Unlock()
	if s.p11 != nil {
		wrapped, err := s.store.Settings().Get(ctx, settingWrappedMaster)
		if err == nil {
			w, err := s.p11.KeyWrapper(ctx, masterWrapKey)
			if err != nil {
				return fmt.Errorf("HSM key wrapper: %w", err)
			}
			master, err := w.UnwrapMasterKey(ctx, wrapped)
			if err != nil {
				return fmt.Errorf("auto-unseal with the HSM: %w", err)
			}
			defer clear(master)
			s.log.Info("auto-unsealing with the HSM")
			return s.unsealWith(ctx, master)
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("load wrapped master key: %w", err)
		}
	}
	s.log.Warn("sigil is sealed: unseal it with `sigil operator unseal`", "threshold", cfg.Threshold)
	return nil
}

// masterWrapKey names the token's AES key that wraps the master key.
const masterWrapKey = "master"

func (s *Server) unsealWith(ctx context.Context, master []byte) error {
	a, err := s.activate(ctx, master)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.act = a
	s.mu.Unlock()
	s.log.Info("sigil unsealed")
	return nil
}

// Init implements SysService.Init.
func (h sysService) Init(ctx context.Context, req *sigilv1.InitRequest) (*sigilv1.InitResponse, error) {
	s := h.s
	if s.cfg.Dev {
		return nil, status.Error(codes.FailedPrecondition, "a dev server is initialised at start and unseals from its key file")
	}
	n, k := int(req.GetShares()), int(req.GetThreshold())
	if k < 1 || n < k || n > 255 {
		return nil, status.Errorf(codes.InvalidArgument, "need 1 <= threshold (%d) <= shares (%d) <= 255", k, n)
	}
	if r := len(req.GetShareRecipients()); r != 0 && r != n {
		return nil, status.Errorf(codes.InvalidArgument, "%d share recipients for %d shares", r, n)
	}
	// The root token and plain shares are returned sealed to this key.
	r := req.GetRecipient()
	if r == nil || r.GetCertificateSerial() != "" || r.GetKem() > 0xffff {
		return nil, status.Error(codes.InvalidArgument, "recipient (kem and public_key) is required: the root token is only returned sealed")
	}
	rcpt := envelope.Recipient{KEM: uint16(r.GetKem()), PublicKey: r.GetPublicKey()}
	if err := rcpt.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, "recipient: "+err.Error())
	}
	s.initMu.Lock()
	defer s.initMu.Unlock()
	s.mu.RLock()
	done := s.initialized
	s.mu.RUnlock()
	if done {
		return nil, status.Error(codes.FailedPrecondition, "sigil is already initialised")
	}
	master := make([]byte, 32)
	if _, err := rand.Read(master); err != nil {
		return nil, status.Error(codes.Internal, "random master key")
	}
	defer clear(master)
	cfg, shares, err := seal.Split(master, n, k)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &sigilv1.InitResponse{}
	secret := map[string]string{}
	defer clear(secret)
	for i, sh := range shares {
		if len(req.GetShareRecipients()) == 0 {
			secret[fmt.Sprintf("share_%d", i+1)] = seal.EncodeShare(sh)
			continue
		}
		to, err := seal.ParseRecipient(req.GetShareRecipients()[i])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "share recipient %d: %v", i+1, err)
		}
		enc, err := seal.EncryptShare(to, sh)
		if err != nil {
			return nil, status.Error(codes.Internal, "encrypt share")
		}
		resp.Shares = append(resp.Shares, enc)
	}
	var wrapped []byte
	if s.p11 != nil {
		w, err := s.p11.KeyWrapper(ctx, masterWrapKey)
		if err != nil {
			return nil, s.grpcError("HSM key wrapper", err)
		}
		if wrapped, err = w.WrapMasterKey(ctx, master); err != nil {
			return nil, s.grpcError("wrap master key in the HSM", err)
		}
		resp.AutoUnseal = true
	}
	raw, err := cfg.Marshal()
	if err != nil {
		return nil, status.Error(codes.Internal, "encode seal config")
	}
	// Unseal first: the keyring is created under the new master key before
	// the seal config marks the server initialised, so a failure here leaves
	// a server that can simply be initialised again.
	if err := s.unsealWith(ctx, master); err != nil {
		return nil, s.grpcError("initialise", err)
	}
	if wrapped != nil {
		if err := s.store.Settings().Put(ctx, settingWrappedMaster, wrapped); err != nil {
			return nil, s.grpcError("store wrapped master key", err)
		}
	}
	if err := s.store.Settings().PutIfAbsent(ctx, settingSealConfig, raw); err != nil {
		return nil, s.grpcError("store seal config", err)
	}
	tok, err := s.current().tokens.EnsureRoot(ctx, "")
	if err != nil {
		return nil, s.grpcError("create root token", err)
	}
	secret["root_token"] = tok
	if resp.Envelope, err = sealTo(rcpt, "init", secret); err != nil {
		// The recipient was validated above, so this cannot be the caller's
		// fault; the server is initialised and the root token lost: say so.
		s.log.Error("sealing the init response failed after initialising", "err", err)
		return nil, status.Error(codes.Internal, "sealing the root token and shares failed after initialising; wipe the data directory and initialise again")
	}
	s.mu.Lock()
	s.initialized, s.progress = true, seal.NewProgress(cfg)
	s.mu.Unlock()
	s.log.Info("sigil initialised", "shares", n, "threshold", k, "auto_unseal", resp.AutoUnseal)
	return resp, nil
}

// Unseal implements SysService.Unseal.
func (h sysService) Unseal(ctx context.Context, req *sigilv1.UnsealRequest) (*sigilv1.UnsealResponse, error) {
	s := h.s
	s.mu.RLock()
	p, act := s.progress, s.act
	s.mu.RUnlock()
	if p == nil {
		return nil, status.Error(codes.FailedPrecondition, "sigil is not initialised: run `sigil operator init`")
	}
	if act != nil {
		return &sigilv1.UnsealResponse{Sealed: false, Threshold: int32(p.Threshold())}, nil
	}
	if req.GetReset_() {
		p.Reset()
		return &sigilv1.UnsealResponse{Sealed: true, Threshold: int32(p.Threshold())}, nil
	}
	share, err := seal.DecodeShare(req.GetShare())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	master, err := p.Add(share)
	switch {
	case errors.Is(err, seal.ErrWrongShare), errors.Is(err, seal.ErrDuplicateShare):
		return nil, status.Errorf(codes.InvalidArgument, "%v (progress kept: %d/%d)", err, p.Count(), p.Threshold())
	case err != nil:
		return nil, s.grpcError("unseal", err)
	}
	if master == nil {
		return &sigilv1.UnsealResponse{Sealed: true, Progress: int32(p.Count()), Threshold: int32(p.Threshold())}, nil
	}
	defer clear(master)
	s.initMu.Lock()
	defer s.initMu.Unlock()
	if s.current() == nil {
		if err := s.unsealWith(ctx, master); err != nil {
			return nil, s.grpcError("unseal", err)
		}
	}
	return &sigilv1.UnsealResponse{Sealed: false, Threshold: int32(p.Threshold())}, nil
}

// Seal implements SysService.Seal.
func (h sysService) Seal(ctx context.Context, _ *sigilv1.SealRequest) (*sigilv1.SealResponse, error) {
	s := h.s
	if err := s.authorize(ctx, "sys/seal", policy.Update); err != nil {
		return nil, err
	}
	if s.cfg.Dev {
		return nil, status.Error(codes.FailedPrecondition, "a dev server cannot be sealed: it would unseal from its key file at the next start anyway")
	}
	s.initMu.Lock()
	defer s.initMu.Unlock()
	s.mu.Lock()
	a := s.act
	s.act = nil
	s.mu.Unlock()
	if a != nil {
		s.deactivate(a)
		s.log.Warn("sigil sealed by operator")
	}
	return &sigilv1.SealResponse{}, nil
}

// RotateKey implements SysService.RotateKey.
func (h sysService) RotateKey(ctx context.Context, _ *sigilv1.RotateKeyRequest) (*sigilv1.RotateKeyResponse, error) {
	if err := h.s.authorize(ctx, "sys/rotate", policy.Update); err != nil {
		return nil, err
	}
	v, err := h.s.barrier.Rotate(ctx)
	if err != nil {
		return nil, h.s.grpcError("rotate barrier key", err)
	}
	h.s.log.Info("barrier key rotated", "key_version", v)
	return &sigilv1.RotateKeyResponse{KeyVersion: v}, nil
}

// Rewrap implements SysService.Rewrap.
func (h sysService) Rewrap(ctx context.Context, _ *sigilv1.RewrapRequest) (*sigilv1.RewrapResponse, error) {
	if err := h.s.authorize(ctx, "sys/rewrap", policy.Update); err != nil {
		return nil, err
	}
	st, err := h.s.rewrap(ctx)
	if err != nil {
		return nil, h.s.grpcError("rewrap", err)
	}
	h.s.log.Info("sealed values rewrapped", "rewrapped", st.rewrapped, "already_current", st.current)
	return &sigilv1.RewrapResponse{Rewrapped: st.rewrapped, AlreadyCurrent: st.current}, nil
}
