package server

import (
	"context"
	"encoding/base64"
	"strconv"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type transitService struct {
	sigilv1.UnimplementedTransitServiceServer
	s *Server
}

// needTransit completes "mount X is a T engine; ..." for a mount that has
// no transit keys.
const needTransit = "transit operations need a transit mount"

// engine returns the mount's transit engine; the authorization table has
// already checked the path and the caller's grant.
func (h transitService) engine(ctx context.Context, mount string) (engines.Transit, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	te, err := engines.Capability[engines.Transit](ctx, a.Mounts, mount, needTransit)
	if err != nil {
		return nil, h.s.grpcError("transit", err)
	}
	return te, nil
}

func (h transitService) keyInfo(ctx context.Context, e engines.Transit, name string) (*sigilv1.TransitKeyInfo, error) {
	k, err := e.ReadKey(ctx, name)
	if err != nil {
		return nil, h.s.grpcError("read key", err)
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
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	if err := e.CreateKey(ctx, req.GetName(), req.GetType(), req.GetManaged()); err != nil {
		return nil, h.s.grpcError("create key", err)
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) RotateKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	if _, err := e.RotateKey(ctx, req.GetName()); err != nil {
		return nil, h.s.grpcError("rotate key", err)
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) ConfigureKey(ctx context.Context, req *sigilv1.ConfigureTransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	var c engines.TransitKeyConfig
	if m := int(req.GetMinDecryptionVersion()); m != 0 {
		c.MinDecryptionVersion = &m
	}
	c.DeletionAllowed = req.DeletionAllowed
	if err := e.ConfigureKey(ctx, req.GetName(), c); err != nil {
		return nil, h.s.grpcError("configure key", err)
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) ReadKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	return h.keyInfo(ctx, e, req.GetName())
}

func (h transitService) ListKeys(ctx context.Context, req *sigilv1.ListTransitKeysRequest) (*sigilv1.ListTransitKeysResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	te, err := engines.Capability[engines.Transit](ctx, a.Mounts, req.GetMount(), needTransit)
	if err != nil {
		return nil, h.s.grpcError("list keys", err)
	}
	names, err := te.ListKeys(ctx)
	if err != nil {
		return nil, h.s.grpcError("list keys", err)
	}
	return &sigilv1.ListTransitKeysResponse{Names: names}, nil
}

func (h transitService) DeleteKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.DeleteTransitKeyResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	if err := e.DeleteKey(ctx, req.GetName()); err != nil {
		return nil, h.s.grpcError("delete key", err)
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
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	rs, err := e.Encrypt(ctx, req.GetName(), items(req))
	if err != nil {
		return nil, h.s.grpcError("encrypt", err)
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs)}, nil
}

// envelopeID binds transit envelopes to the key they came from.
func envelopeID(mount, name string) string { return "transit:" + mount + "/" + name }

func (h transitService) Decrypt(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	// Resolve the recipient first: plaintext nobody can receive is never made.
	to, err := h.s.core.Destination(ctx, recipientRef(req.GetRecipient()), 0)
	if err != nil {
		return nil, err
	}
	rs, err := e.Decrypt(ctx, req.GetName(), items(req))
	if err != nil {
		return nil, h.s.grpcError("decrypt", err)
	}
	data := make(map[string]string, len(rs))
	for i, r := range rs {
		if r.Err == nil {
			data[strconv.Itoa(i)] = base64.StdEncoding.EncodeToString(r.Plaintext)
			clear(r.Plaintext)
		}
	}
	d, err := h.s.core.Deliver(ctx, to, core.Secret{BindingID: envelopeID(req.GetMount(), req.GetName()), Data: data}, nil)
	if err != nil {
		return nil, err
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs), Envelope: d.Envelope}, nil
}

func (h transitService) Rewrap(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	rs, err := e.Rewrap(ctx, req.GetName(), items(req))
	if err != nil {
		return nil, h.s.grpcError("rewrap", err)
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs)}, nil
}

func (h transitService) DataKey(ctx context.Context, req *sigilv1.DataKeyRequest) (*sigilv1.DataKeyResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	var to core.To
	if !req.GetWrappedOnly() {
		if to, err = h.s.core.Destination(ctx, recipientRef(req.GetRecipient()), 0); err != nil {
			return nil, err
		}
	}
	pt, wrapped, err := e.DataKey(ctx, req.GetName(), int(req.GetBits()), req.GetAssociatedData())
	if err != nil {
		return nil, h.s.grpcError("data key", err)
	}
	defer clear(pt)
	resp := &sigilv1.DataKeyResponse{Ciphertext: wrapped}
	if req.GetWrappedOnly() {
		return resp, nil
	}
	d, err := h.s.core.Deliver(ctx, to, core.Secret{BindingID: envelopeID(req.GetMount(), req.GetName()),
		Data: map[string]string{"plaintext": base64.StdEncoding.EncodeToString(pt)}}, nil)
	if err != nil {
		return nil, err
	}
	resp.Envelope = d.Envelope
	return resp, nil
}

func (h transitService) Sign(ctx context.Context, req *sigilv1.TransitSignRequest) (*sigilv1.TransitSignResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	sig, err := e.Sign(ctx, req.GetName(), req.GetInput(), engines.TransitSignOptions{Prehashed: req.GetPrehashed(), RSAPKCS1v15: req.GetPkcs1V15()})
	if err != nil {
		return nil, h.s.grpcError("sign", err)
	}
	return &sigilv1.TransitSignResponse{Signature: sig}, nil
}

func (h transitService) Verify(ctx context.Context, req *sigilv1.TransitVerifyRequest) (*sigilv1.TransitVerifyResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	ok, err := e.Verify(ctx, req.GetName(), req.GetInput(), req.GetSignature(), engines.TransitSignOptions{Prehashed: req.GetPrehashed(), RSAPKCS1v15: req.GetPkcs1V15()})
	if err != nil {
		return nil, h.s.grpcError("verify", err)
	}
	return &sigilv1.TransitVerifyResponse{Valid: ok}, nil
}

func (h transitService) HMAC(ctx context.Context, req *sigilv1.TransitSignRequest) (*sigilv1.TransitSignResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	tag, err := e.HMAC(ctx, req.GetName(), req.GetInput())
	if err != nil {
		return nil, h.s.grpcError("hmac", err)
	}
	return &sigilv1.TransitSignResponse{Signature: tag}, nil
}

func (h transitService) VerifyHMAC(ctx context.Context, req *sigilv1.TransitVerifyRequest) (*sigilv1.TransitVerifyResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	ok, err := e.VerifyHMAC(ctx, req.GetName(), req.GetInput(), req.GetSignature())
	if err != nil {
		return nil, h.s.grpcError("verify hmac", err)
	}
	return &sigilv1.TransitVerifyResponse{Valid: ok}, nil
}
