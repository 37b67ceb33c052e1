package server

import (
	"context"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// transitService adapts the transit engine and use cases (core/transit.go).
// The authorization table has already checked the path and the grant.
type transitService struct {
	sigilv1.UnimplementedTransitServiceServer
	s *Server
}

// onTransit runs f on the request's transit mount; op names the step in
// its error.
func onTransit[T any](ctx context.Context, h transitService, mount, op string, f func(engines.Transit) (*T, error)) (*T, error) {
	e, err := h.s.core.Transit(ctx, mount)
	if err != nil {
		return nil, err
	}
	resp, err := f(e)
	return reply(resp, core.OpError(op, err))
}

func keyInfo(ctx context.Context, e engines.Transit, name string) (*sigilv1.TransitKeyInfo, error) {
	k, err := e.ReadKey(ctx, name)
	if err != nil {
		return nil, err
	}
	out := &sigilv1.TransitKeyInfo{Name: k.Name, Type: k.Type, Managed: k.Managed, LatestVersion: int32(k.Latest),
		MinDecryptionVersion: int32(k.MinDecryptionVersion), DeletionAllowed: k.DeletionAllowed}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, &sigilv1.TransitKeyVersion{Version: int32(v.Version),
			CreatedAtUnix: v.Created.Unix(), PublicKeyPem: v.PublicKeyPEM})
	}
	return out, nil
}

// keyChange runs a change to a key, then answers with the key.
func (h transitService) keyChange(ctx context.Context, mount, name, op string, change func(engines.Transit) error) (*sigilv1.TransitKeyInfo, error) {
	return onTransit(ctx, h, mount, op, func(e engines.Transit) (*sigilv1.TransitKeyInfo, error) {
		if err := change(e); err != nil {
			return nil, err
		}
		return keyInfo(ctx, e, name)
	})
}

func (h transitService) CreateKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	return h.keyChange(ctx, req.GetMount(), req.GetName(), "create key", func(e engines.Transit) error {
		return e.CreateKey(ctx, req.GetName(), req.GetType(), req.GetManaged())
	})
}

func (h transitService) RotateKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	return h.keyChange(ctx, req.GetMount(), req.GetName(), "rotate key", func(e engines.Transit) error {
		_, err := e.RotateKey(ctx, req.GetName())
		return err
	})
}

func (h transitService) ConfigureKey(ctx context.Context, req *sigilv1.ConfigureTransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	c := engines.TransitKeyConfig{DeletionAllowed: req.DeletionAllowed}
	if m := int(req.GetMinDecryptionVersion()); m != 0 {
		c.MinDecryptionVersion = &m
	}
	return h.keyChange(ctx, req.GetMount(), req.GetName(), "configure key", func(e engines.Transit) error {
		return e.ConfigureKey(ctx, req.GetName(), c)
	})
}

func (h transitService) ReadKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
	return h.keyChange(ctx, req.GetMount(), req.GetName(), "read key", func(engines.Transit) error { return nil })
}

func (h transitService) ListKeys(ctx context.Context, req *sigilv1.ListTransitKeysRequest) (*sigilv1.ListTransitKeysResponse, error) {
	return onTransit(ctx, h, req.GetMount(), "list keys", func(e engines.Transit) (*sigilv1.ListTransitKeysResponse, error) {
		names, err := e.ListKeys(ctx)
		return &sigilv1.ListTransitKeysResponse{Names: names}, err
	})
}

func (h transitService) DeleteKey(ctx context.Context, req *sigilv1.TransitKeyRequest) (*sigilv1.DeleteTransitKeyResponse, error) {
	return onTransit(ctx, h, req.GetMount(), "delete key", func(e engines.Transit) (*sigilv1.DeleteTransitKeyResponse, error) {
		return &sigilv1.DeleteTransitKeyResponse{}, e.DeleteKey(ctx, req.GetName())
	})
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

// batch adapts Encrypt and Rewrap, which differ only in the engine method.
func (h transitService) batch(ctx context.Context, req *sigilv1.TransitBatchRequest, op string,
	f func(engines.Transit) func(context.Context, string, []engines.TransitItem) ([]engines.TransitResult, error)) (*sigilv1.TransitBatchResponse, error) {
	return onTransit(ctx, h, req.GetMount(), op, func(e engines.Transit) (*sigilv1.TransitBatchResponse, error) {
		rs, err := f(e)(ctx, req.GetName(), items(req))
		return &sigilv1.TransitBatchResponse{Results: results(rs)}, err
	})
}

func (h transitService) Encrypt(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	return h.batch(ctx, req, "encrypt", func(e engines.Transit) func(context.Context, string, []engines.TransitItem) ([]engines.TransitResult, error) {
		return e.Encrypt
	})
}

func (h transitService) Rewrap(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	return h.batch(ctx, req, "rewrap", func(e engines.Transit) func(context.Context, string, []engines.TransitItem) ([]engines.TransitResult, error) {
		return e.Rewrap
	})
}

func (h transitService) Decrypt(ctx context.Context, req *sigilv1.TransitBatchRequest) (*sigilv1.TransitBatchResponse, error) {
	rs, d, err := h.s.core.Decrypt(ctx, req.GetMount(), req.GetName(), items(req), recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.TransitBatchResponse{Results: results(rs), Envelope: d.Envelope}, nil
}

func (h transitService) DataKey(ctx context.Context, req *sigilv1.DataKeyRequest) (*sigilv1.DataKeyResponse, error) {
	wrapped, d, err := h.s.core.DataKey(ctx, req.GetMount(), req.GetName(), int(req.GetBits()), req.GetAssociatedData(),
		req.GetWrappedOnly(), recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	resp := &sigilv1.DataKeyResponse{Ciphertext: wrapped}
	if d != nil {
		resp.Envelope = d.Envelope
	}
	return resp, nil
}

func signOptions(prehashed, pkcs1v15 bool) engines.TransitSignOptions {
	return engines.TransitSignOptions{Prehashed: prehashed, RSAPKCS1v15: pkcs1v15}
}

func (h transitService) Sign(ctx context.Context, req *sigilv1.TransitSignRequest) (*sigilv1.TransitSignResponse, error) {
	return onTransit(ctx, h, req.GetMount(), "sign", func(e engines.Transit) (*sigilv1.TransitSignResponse, error) {
		sig, err := e.Sign(ctx, req.GetName(), req.GetInput(), signOptions(req.GetPrehashed(), req.GetPkcs1V15()))
		return &sigilv1.TransitSignResponse{Signature: sig}, err
	})
}

func (h transitService) Verify(ctx context.Context, req *sigilv1.TransitVerifyRequest) (*sigilv1.TransitVerifyResponse, error) {
	return onTransit(ctx, h, req.GetMount(), "verify", func(e engines.Transit) (*sigilv1.TransitVerifyResponse, error) {
		ok, err := e.Verify(ctx, req.GetName(), req.GetInput(), req.GetSignature(), signOptions(req.GetPrehashed(), req.GetPkcs1V15()))
		return &sigilv1.TransitVerifyResponse{Valid: ok}, err
	})
}

func (h transitService) HMAC(ctx context.Context, req *sigilv1.TransitSignRequest) (*sigilv1.TransitSignResponse, error) {
	return onTransit(ctx, h, req.GetMount(), "hmac", func(e engines.Transit) (*sigilv1.TransitSignResponse, error) {
		tag, err := e.HMAC(ctx, req.GetName(), req.GetInput())
		return &sigilv1.TransitSignResponse{Signature: tag}, err
	})
}

func (h transitService) VerifyHMAC(ctx context.Context, req *sigilv1.TransitVerifyRequest) (*sigilv1.TransitVerifyResponse, error) {
	return onTransit(ctx, h, req.GetMount(), "verify hmac", func(e engines.Transit) (*sigilv1.TransitVerifyResponse, error) {
		ok, err := e.VerifyHMAC(ctx, req.GetName(), req.GetInput(), req.GetSignature())
		return &sigilv1.TransitVerifyResponse{Valid: ok}, err
	})
}
