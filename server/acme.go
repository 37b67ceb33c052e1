package server

import (
	"context"
	"time"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/issuer/acme"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type acmeService struct {
	sigilv1.UnimplementedACMEServiceServer
	s *Server
}

// onACME runs f on the ACME server; op names the step in f's error.
func onACME[T any](h acmeService, op string, f func(*acme.Server) (*T, error)) (*T, error) {
	srv, err := h.s.core.ACME()
	if err != nil {
		return nil, err
	}
	resp, err := f(srv)
	return reply(resp, core.OpError(op, err))
}

func (h acmeService) CreateEAB(ctx context.Context, req *sigilv1.CreateEABRequest) (*sigilv1.CreateEABResponse, error) {
	e, err := h.s.core.CreateEAB(ctx, core.EABRequest{Provisioner: req.GetProvisioner(), Recipient: recipientRef(req.GetRecipient()),
		Policy: acme.EABPolicy{Description: req.GetDescription(), DNSSuffixes: req.GetDnsSuffixes()},
		TTL:    time.Duration(req.GetTtlSeconds()) * time.Second, WrapTTL: time.Duration(req.GetWrapTtlSeconds()) * time.Second})
	if err != nil {
		return nil, err
	}
	d := e.Delivery
	return &sigilv1.CreateEABResponse{KeyId: e.Key.KeyID, Provisioner: e.Key.Provisioner, Envelope: d.Envelope,
		WrapToken: d.WrapToken, WrapExpiresAtUnix: wrapExpiry(d)}, nil
}

func (h acmeService) ListEAB(ctx context.Context, req *sigilv1.ListEABRequest) (*sigilv1.ListEABResponse, error) {
	return onACME(h, "list EAB keys", func(srv *acme.Server) (*sigilv1.ListEABResponse, error) {
		keys, err := srv.ListEAB(ctx, req.GetProvisioner())
		resp := &sigilv1.ListEABResponse{}
		for _, k := range keys {
			resp.Keys = append(resp.Keys, &sigilv1.EABInfo{KeyId: k.KeyID, Provisioner: k.Provisioner, Status: k.Status,
				Description: k.Policy.Description, AccountId: k.AccountID, CreatedAtUnix: k.CreatedAt.Unix()})
		}
		return resp, err
	})
}

func (h acmeService) RevokeEAB(ctx context.Context, req *sigilv1.RevokeEABRequest) (*sigilv1.RevokeEABResponse, error) {
	return onACME(h, "revoke EAB key", func(srv *acme.Server) (*sigilv1.RevokeEABResponse, error) {
		return &sigilv1.RevokeEABResponse{}, srv.RevokeEAB(ctx, req.GetKeyId())
	})
}

func (h acmeService) ListAccounts(ctx context.Context, req *sigilv1.ListACMEAccountsRequest) (*sigilv1.ListACMEAccountsResponse, error) {
	return onACME(h, "list ACME accounts", func(srv *acme.Server) (*sigilv1.ListACMEAccountsResponse, error) {
		accts, err := srv.ListAccounts(ctx, req.GetProvisioner())
		resp := &sigilv1.ListACMEAccountsResponse{}
		for _, a := range accts {
			resp.Accounts = append(resp.Accounts, &sigilv1.ACMEAccountInfo{Id: a.ID, Provisioner: a.Provisioner, Status: a.Status,
				Contact: a.Contact, EabKeyId: a.EABKeyID, CreatedAtUnix: a.CreatedAt.Unix()})
		}
		return resp, err
	})
}

func (h acmeService) DeactivateAccount(ctx context.Context, req *sigilv1.DeactivateACMEAccountRequest) (*sigilv1.DeactivateACMEAccountResponse, error) {
	return onACME(h, "deactivate ACME account", func(srv *acme.Server) (*sigilv1.DeactivateACMEAccountResponse, error) {
		return &sigilv1.DeactivateACMEAccountResponse{}, srv.DeactivateAccount(ctx, req.GetId())
	})
}
