package server

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type transitService struct {
	sigilv1.UnimplementedTransitServiceServer
	s *Server
}

// transitError maps transit errors to gRPC codes with their message.
func (h transitService) transitError(op string, err error) error {
	switch {
	case errors.Is(err, transit.ErrKeyNotFound):
		return status.Error(codes.NotFound, op+": "+err.Error())
	case errors.Is(err, transit.ErrKeyExists):
		return status.Error(codes.AlreadyExists, op+": "+err.Error())
	case errors.Is(err, transit.ErrInvalidCiphertext), errors.Is(err, transit.ErrWrongKeyType),
		errors.Is(err, transit.ErrTooLarge):
		return status.Error(codes.InvalidArgument, op+": "+err.Error())
	case errors.Is(err, transit.ErrVersionTooOld):
		return status.Error(codes.FailedPrecondition, op+": "+err.Error())
	}
	return h.s.engineError(op, err)
}

// needTransit completes "mount X is a T engine; ..." for a mount that has
// no transit keys.
const needTransit = "transit operations need a transit mount"

// engine authorises capability c on MOUNT/SUB/NAME and returns the
// mount's transit engine.
func (h transitService) engine(ctx context.Context, mount, sub, name string, c policy.Capability) (engines.Transit, error) {
	if err := engines.CheckPath(mount); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := transit.CheckName(name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := h.s.authorize(ctx, mount+"/"+sub+"/"+name, c); err != nil {
		return nil, err
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	te, err := engines.Capability[engines.Transit](ctx, a.Mounts, mount, needTransit)
	if err != nil {
		return nil, h.s.engineError("transit", err)
	}
	return te, nil
}

func (h transitService) keyInfo(ctx context.Context, e engines.Transit, name string) (*sigilv1.TransitKeyInfo, error) {
	k, err := e.ReadKey(ctx, name)
	if err != nil {
		return nil, h.transitError("read key", err)
	}
	out := &sigilv1.TransitKeyInfo{Name: k.Name, Type: k.Type, Managed: k.Managed, LatestVersion: int32(k.Latest),
		MinDecryptionVersion: int32(k.MinDecryptionVersion), DeletionAllowed: k.DeletionAllowed}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, &sigilv1.TransitKeyVersion{Version: int32(v.Version),
			CreatedAtUnix: v.Created.Unix(), PublicKeyPem: v.PublicKeyPEM})
	}
	return out, nil
}

func (h transitService) CreateKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount(), "keys", req.GetName(), policy.Create)
	if err != nil {
		return nil, err
	}
	if err := e.CreateKey(ctx, req.GetName(), req.GetType(), req.GetManaged()); err != nil {
		return nil, h.transitError("create key", err)
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) RotateKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount(), "keys", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	if _, err := e.RotateKey(ctx, req.GetName()); err != nil {
		return nil, h.transitError("rotate key", err)
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) ConfigureKey(ctx context.Context, req *sigilv1.ConfigureTransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount(), "keys", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	var c engines.TransitKeyConfig
	if m := int(req.GetMinDecryptionVersion()); m != 0 {
		c.MinDecryptionVersion = &m
	}
	c.DeletionAllowed = req.DeletionAllowed
	if err := e.ConfigureKey(ctx, req.GetName(), c); err != nil {
		return nil, h.transitError("configure key", err)
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) ReadKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount(), "keys", req.GetName(), policy.Read)
	if err != nil {
		return nil, err
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) ListKeys(ctx context.Context, req *sigilv1.ListTransitKeysRequest) (*sigilv1.ListTransitKeysResponse, error) {
	if err := engines.CheckPath(req.GetMount()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := h.s.authorize(ctx, req.GetMount()+"/keys", policy.List); err != nil {
		return nil, err
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	te, err := engines.Capability[engines.Transit](ctx, a.Mounts, req.GetMount(), needTransit)
	if err != nil {
		return nil, h.s.engineError("list keys", err)
	}
	names, err := te.ListKeys(ctx)
	if err != nil {
		return nil, h.transitError("list keys", err)
	}
	return &sigilv1.ListTransitKeysResponse{Names: names}, nil
}

func (h transitService) DeleteKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.DeleteTransitKeyResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "keys", req.GetName(), policy.Delete)
	if err != nil {
		return nil, err
	}
	if err := e.DeleteKey(ctx, req.GetName()); err != nil {
		return nil, h.transitError("delete key", err)
	}
	return &sigilv1.DeleteTransitKeyResponse{}, nil
}

func items(req *sigilv1.TransitBatchRequest) []engines.TransitItem {
	out := make([]engines.TransitItem, len(req.GetItems()))
	for i, it := range req.GetItems() {
		out[i] = engines.TransitItem{Plaintext: it.GetPlaintext(), Ciphertext: it.GetCiphertext(), AssociatedData: it.GetAssociatedData()}
	}
	return out
}

func results(rs []engines.TransitResult) []*sigilv1.TransitResult {
	out := make([]*sigilv1.TransitResult, len(rs))
	for i, r := range rs {
		out[i] = &sigilv1.TransitResult{Ciphertext: r.Ciphertext}
		if r.Err != nil {
			out[i].Error = r.Err.Error()
		}
	}
	return out
}

func (h transitService) Encrypt(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "encrypt", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	rs, err := e.Encrypt(ctx, req.GetName(), items(req))
	if err != nil {
		return nil, h.transitError("encrypt", err)
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs)}, nil
}

// envelopeID binds transit envelopes to the key they came from.
func envelopeID(mount, name string) string { return "transit:" + mount + "/" + name }

func (h transitService) Decrypt(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "decrypt", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	// Resolve the recipient first: plaintext nobody can receive is never made.
	rcpt, err := (engineService{s: h.s}).recipient(ctx, a, req.GetRecipient())
	if err != nil {
		return nil, err
	}
	rs, err := e.Decrypt(ctx, req.GetName(), items(req))
	if err != nil {
		return nil, h.transitError("decrypt", err)
	}
	data := make(map[string]string, len(rs))
	for i, r := range rs {
		if r.Err == nil {
			data[strconv.Itoa(i)] = base64.StdEncoding.EncodeToString(r.Plaintext)
			clear(r.Plaintext)
		}
	}
	wire, err := sealTo(rcpt, envelopeID(req.GetMount(), req.GetName()), data)
	clear(data)
	if err != nil {
		return nil, h.s.engineError("seal plaintext", err)
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs), Envelope: wire}, nil
}

func (h transitService) Rewrap(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "rewrap", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	rs, err := e.Rewrap(ctx, req.GetName(), items(req))
	if err != nil {
		return nil, h.transitError("rewrap", err)
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs)}, nil
}

func (h transitService) DataKey(ctx context.Context, req *sigilv1.DataKeyRequest) (*sigilv1.DataKeyResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "datakey", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	rcpt, rcptErr := (engineService{s: h.s}).recipient(ctx, a, req.GetRecipient())
	if !req.GetWrappedOnly() && rcptErr != nil {
		return nil, rcptErr
	}
	pt, wrapped, err := e.DataKey(ctx, req.GetName(), int(req.GetBits()), req.GetAssociatedData())
	if err != nil {
		return nil, h.transitError("data key", err)
	}
	defer clear(pt)
	resp := &sigilv1.DataKeyResponse{Ciphertext: wrapped}
	if req.GetWrappedOnly() {
		return resp, nil
	}
	if resp.Envelope, err = sealTo(rcpt, envelopeID(req.GetMount(), req.GetName()),
		map[string]string{"plaintext": base64.StdEncoding.EncodeToString(pt)}); err != nil {
		return nil, h.s.engineError("seal data key", err)
	}
	return resp, nil
}

func (h transitService) Sign(ctx context.Context, req *sigilv1.TransitSignRequest) (*sigilv1.TransitSignResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "sign", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	sig, err := e.Sign(ctx, req.GetName(), req.GetInput(), engines.TransitSignOptions{Prehashed: req.GetPrehashed(), RSAPKCS1v15: req.GetPkcs1V15()})
	if err != nil {
		return nil, h.transitError("sign", err)
	}
	return &sigilv1.TransitSignResponse{Signature: sig}, nil
}

func (h transitService) Verify(ctx context.Context, req *sigilv1.TransitVerifyRequest) (*sigilv1.TransitVerifyResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "verify", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	ok, err := e.Verify(ctx, req.GetName(), req.GetInput(), req.GetSignature(), engines.TransitSignOptions{Prehashed: req.GetPrehashed(), RSAPKCS1v15: req.GetPkcs1V15()})
	if err != nil {
		return nil, h.transitError("verify", err)
	}
	return &sigilv1.TransitVerifyResponse{Valid: ok}, nil
}

func (h transitService) HMAC(ctx context.Context, req *sigilv1.TransitSignRequest) (*sigilv1.TransitSignResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "hmac", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	tag, err := e.HMAC(ctx, req.GetName(), req.GetInput())
	if err != nil {
		return nil, h.transitError("hmac", err)
	}
	return &sigilv1.TransitSignResponse{Signature: tag}, nil
}

func (h transitService) VerifyHMAC(ctx context.Context, req *sigilv1.TransitVerifyRequest) (*sigilv1.TransitVerifyResponse, error) {
	e, err := h.engine(ctx, req.GetMount(), "verify-hmac", req.GetName(), policy.Update)
	if err != nil {
		return nil, err
	}
	ok, err := e.VerifyHMAC(ctx, req.GetName(), req.GetInput(), req.GetSignature())
	if err != nil {
		return nil, h.transitError("verify hmac", err)
	}
	return &sigilv1.TransitVerifyResponse{Valid: ok}, nil
}
