package acme

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"strings"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/storage"
)

const maxContacts = 10

type newAccountPayload struct {
	Contact                []string        `json:"contact"`
	TermsOfServiceAgreed   bool            `json:"termsOfServiceAgreed"`
	OnlyReturnExisting     bool            `json:"onlyReturnExisting"`
	ExternalAccountBinding json.RawMessage `json:"externalAccountBinding"`
}

// accountView is the account as RFC 8555 §7.1.2 shows it.
func (s *Server) accountView(rc *reqCtx, a *account) map[string]any {
	v := map[string]any{
		"status": a.Status,
		"orders": rc.url("orders", a.ID),
		"key":    a.Key,
	}
	if len(a.Contact) > 0 {
		v["contact"] = a.Contact
	}
	if a.TermsAgreed {
		v["termsOfServiceAgreed"] = true
	}
	if a.EABKeyID != "" {
		v["externalAccountBinding"] = map[string]string{"kid": a.EABKeyID}
	}
	return v
}

func checkContacts(contacts []string) *Problem {
	if len(contacts) > maxContacts {
		return prob(http.StatusBadRequest, "invalidContact", "at most %d contacts", maxContacts)
	}
	for _, c := range contacts {
		addr, ok := strings.CutPrefix(c, "mailto:")
		if !ok {
			return prob(http.StatusBadRequest, "unsupportedContact", "contact %q: only mailto: URLs are supported", c)
		}
		if len(c) > 254 || strings.ContainsAny(addr, ",?&") {
			return prob(http.StatusBadRequest, "invalidContact", "contact %q is not a single email address", c)
		}
		a, err := mail.ParseAddress(addr)
		if err != nil || a.Address != addr || a.Name != "" {
			return prob(http.StatusBadRequest, "invalidContact", "contact %q is not a valid email address", c)
		}
	}
	return nil
}

func (s *Server) newAccount(rc *reqCtx, req *request) error {
	ctx := rc.r.Context()
	var pl newAccountPayload
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("newAccount needs a payload")
		}
		return err
	}
	tp, err := thumbprint(req.jwk)
	if err != nil {
		return prob(http.StatusBadRequest, "badPublicKey", "%v", err)
	}
	st := s.store.ACME()
	if o, err := st.GetByLookupKey(ctx, kindAccount, rc.prov.Name, tp); err == nil {
		a, err := decode[account](o)
		if err != nil {
			return internal(err, "decoding account")
		}
		if a.Status != statusValid {
			return unauthorized("the account for this key is %s", a.Status)
		}
		rc.w.Header().Set("Location", rc.url("acct", a.ID))
		s.reply(rc, http.StatusOK, s.accountView(rc, a))
		return nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return internal(err, "looking up account")
	}
	if pl.OnlyReturnExisting {
		return prob(http.StatusBadRequest, "accountDoesNotExist", "no account for this key")
	}
	if p := checkContacts(pl.Contact); p != nil {
		return p
	}
	if rc.prov.TermsOfService != "" && !pl.TermsOfServiceAgreed {
		return prob(http.StatusForbidden, "userActionRequired", "you must agree to the terms of service %s", rc.prov.TermsOfService)
	}
	key, err := marshalKey(req.jwk)
	if err != nil {
		return malformed("%v", err)
	}
	a := &account{ID: randID(16), Status: statusValid, Contact: pl.Contact, TermsAgreed: pl.TermsOfServiceAgreed,
		Key: key, CreatedAt: s.now()}
	var eab *storage.ACMEObject
	switch {
	case len(pl.ExternalAccountBinding) > 0 && string(pl.ExternalAccountBinding) != "null":
		o, p := s.verifyEAB(rc, req, pl.ExternalAccountBinding)
		if p != nil {
			return p
		}
		eab, a.EABKeyID = o, o.ID
	case !rc.prov.Open:
		return prob(http.StatusUnauthorized, "externalAccountRequired", "this directory requires an external account binding")
	}
	data, err := encode(a)
	if err != nil {
		return internal(err, "encoding account")
	}
	ao := &storage.ACMEObject{Kind: kindAccount, ID: a.ID, Provisioner: rc.prov.Name, LookupKey: tp,
		Status: a.Status, Data: data}
	err = s.store.InTx(ctx, func(tx storage.Repos) error {
		if eab != nil {
			// Bind the key to this account: the version check makes it
			// single use even against a concurrent registration.
			k, err := decode[eabKey](eab)
			if err != nil {
				return err
			}
			k.AccountID, k.BoundAt = a.ID, s.now()
			if eab.Data, err = encode(k); err != nil {
				return err
			}
			eab.Status = eabUsed
			if err := tx.ACME().Update(ctx, eab); err != nil {
				if errors.Is(err, storage.ErrConflict) {
					return unauthorized("external account binding key was used concurrently")
				}
				return err
			}
		}
		return tx.ACME().Put(ctx, ao)
	})
	if errors.Is(err, storage.ErrConflict) {
		return prob(http.StatusConflict, "malformed", "an account for this key was created concurrently; retry")
	}
	if err != nil {
		var p *Problem
		if errors.As(err, &p) {
			return p
		}
		return internal(err, "creating account")
	}
	s.logger.InfoContext(ctx, "acme: account created", "provisioner", rc.prov.Name, "account", a.ID, "eab", a.EABKeyID)
	rc.w.Header().Set("Location", rc.url("acct", a.ID))
	s.reply(rc, http.StatusCreated, s.accountView(rc, a))
	return nil
}

// verifyEAB checks an externalAccountBinding (RFC 8555 §7.3.4): an HS*
// JWS, kid an unused EAB key of this provisioner, url the newAccount URL,
// payload the account's JWK, signed with the key's HMAC secret.
func (s *Server) verifyEAB(rc *reqCtx, req *request, raw json.RawMessage) (*storage.ACMEObject, *Problem) {
	ctx := rc.r.Context()
	bad := func(format string, args ...any) (*storage.ACMEObject, *Problem) {
		return nil, unauthorized("external account binding: "+format, args...)
	}
	var f flattened
	if err := json.Unmarshal(raw, &f); err != nil || f.Signatures != nil || f.Header != nil || f.Protected == nil || f.Payload == nil || f.Signature == nil {
		return nil, malformed("external account binding must be a flattened JWS")
	}
	jws, err := jose.ParseSignedJSON(string(raw), []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512})
	if err != nil || len(jws.Signatures) != 1 {
		return nil, malformed("external account binding: not an HMAC JWS")
	}
	h := jws.Signatures[0].Protected
	if h.Nonce != "" {
		return nil, malformed("external account binding must not have a nonce")
	}
	if u, _ := h.ExtraHeaders["url"].(string); u != req.url {
		return bad("url %q does not match %q", u, req.url)
	}
	if h.KeyID == "" {
		return bad("no kid")
	}
	o, err := s.store.ACME().Get(ctx, kindEAB, h.KeyID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && o.Provisioner != rc.prov.Name) {
		return bad("unknown key id")
	}
	if err != nil {
		return nil, internal(err, "loading EAB key")
	}
	if o.Status != statusValid {
		return bad("key is %s", o.Status)
	}
	if !o.ExpiresAt.IsZero() && !s.cfg.Now().Before(o.ExpiresAt) {
		return bad("key expired")
	}
	k, err := decode[eabKey](o)
	if err != nil {
		return nil, internal(err, "decoding EAB key")
	}
	secret, err := s.sealer.Open(ctx, sealKindEAB, o.ID, k.SealedHMAC)
	if err != nil {
		return nil, internal(err, "opening EAB key")
	}
	payload, err := jws.Verify(secret)
	clear(secret)
	if err != nil {
		return bad("signature does not verify")
	}
	var inner jose.JSONWebKey
	if err := inner.UnmarshalJSON(payload); err != nil {
		return nil, malformed("external account binding payload is not a JWK")
	}
	t1, err1 := thumbprint(&inner)
	t2, err2 := thumbprint(req.jwk)
	if err1 != nil || err2 != nil || t1 != t2 {
		return bad("payload is not the account key")
	}
	return o, nil
}

type accountUpdate struct {
	Contact *[]string `json:"contact"`
	Status  string    `json:"status"`
	// Other fields (termsOfServiceAgreed, orders, key) are ignored.
}

func (s *Server) account(rc *reqCtx, req *request, id string) error {
	if req.account.ID != id {
		return unauthorized("the JWS is not signed by account %s", id)
	}
	a, o := req.account, req.accountO
	if !req.postGet {
		var up accountUpdate
		if err := decodePayload(req.payload, &up); err != nil {
			return err
		}
		switch up.Status {
		case "":
		case statusDeactivated:
			a.Status = statusDeactivated
		default:
			return malformed("status may only be set to deactivated")
		}
		if up.Contact != nil {
			if p := checkContacts(*up.Contact); p != nil {
				return p
			}
			a.Contact = *up.Contact
		}
		if err := s.saveAccount(rc.r.Context(), a, o); err != nil {
			return err
		}
	}
	rc.w.Header().Set("Location", rc.url("acct", a.ID))
	s.reply(rc, http.StatusOK, s.accountView(rc, a))
	return nil
}

func (s *Server) saveAccount(ctx context.Context, a *account, o *storage.ACMEObject) error {
	data, err := encode(a)
	if err != nil {
		return internal(err, "encoding account")
	}
	o.Data, o.Status = data, a.Status
	if err := s.store.ACME().Update(ctx, o); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return prob(http.StatusConflict, "malformed", "the account changed concurrently; retry")
		}
		return internal(err, "saving account")
	}
	return nil
}

// keyChange rolls the account key over (RFC 8555 §7.3.5).
func (s *Server) keyChange(rc *reqCtx, req *request) error {
	ctx := rc.r.Context()
	if req.postGet {
		return malformed("keyChange needs a payload")
	}
	inner, p := parseJWS(req.payload)
	if p != nil {
		p.Detail = "inner JWS: " + p.Detail
		return p
	}
	if p := inner.checkHeader(true); p != nil {
		p.Detail = "inner JWS: " + p.Detail
		return p
	}
	if inner.url != req.url {
		return malformed("inner JWS url %q differs from the outer %q", inner.url, req.url)
	}
	payload, p := inner.verify(inner.jwk)
	if p != nil {
		return p
	}
	var kc struct {
		Account string          `json:"account"`
		OldKey  json.RawMessage `json:"oldKey"`
	}
	if err := decodePayload(payload, &kc); err != nil {
		return malformed("inner JWS payload: %v", err)
	}
	if kc.Account != rc.url("acct", req.account.ID) {
		return unauthorized("inner payload account %q is not the signing account", kc.Account)
	}
	old, err := unmarshalKey(kc.OldKey)
	if err != nil {
		return malformed("oldKey: %v", err)
	}
	oldTP, err1 := thumbprint(old)
	curTP, err2 := thumbprint(req.jwk)
	if err1 != nil || err2 != nil || oldTP != curTP {
		return unauthorized("oldKey is not the account's current key")
	}
	newTP, err := thumbprint(inner.jwk)
	if err != nil {
		return prob(http.StatusBadRequest, "badPublicKey", "%v", err)
	}
	if newTP == curTP {
		return malformed("new key equals the old key")
	}
	if other, err := s.store.ACME().GetByLookupKey(ctx, kindAccount, rc.prov.Name, newTP); err == nil {
		p := prob(http.StatusConflict, "malformed", "the new key is already in use by another account")
		p.location = rc.url("acct", other.ID)
		return p
	}
	key, err := marshalKey(inner.jwk)
	if err != nil {
		return malformed("%v", err)
	}
	a, o := req.account, req.accountO
	a.Key = key
	o.LookupKey = newTP
	if err := s.saveAccount(ctx, a, o); err != nil {
		return err
	}
	s.logger.InfoContext(ctx, "acme: account key rolled over", "account", a.ID)
	rc.w.Header().Set("Location", rc.url("acct", a.ID))
	s.reply(rc, http.StatusOK, s.accountView(rc, a))
	return nil
}

// orders lists the account's order URLs (RFC 8555 §7.1.2.1), one page.
func (s *Server) orders(rc *reqCtx, req *request, id string) error {
	if req.account.ID != id {
		return unauthorized("the JWS is not signed by account %s", id)
	}
	list, err := s.store.ACME().List(rc.r.Context(), storage.ACMEFilter{Kind: kindOrder, AccountID: id, Limit: 1000})
	if err != nil {
		return internal(err, "listing orders")
	}
	urls := []string{}
	for _, o := range list {
		if o.Status == statusPending || o.Status == statusProcessing {
			urls = append(urls, rc.url("order", o.ID))
		}
	}
	s.reply(rc, http.StatusOK, map[string]any{"orders": urls})
	return nil
}

var errNoProvisioner = errors.New("acme: no such provisioner")

func (s *Server) provisioner(name string) (*Provisioner, error) {
	if name == "" {
		name = s.cfg.DefaultProvisioner
	}
	p, ok := s.provs[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", errNoProvisioner, name)
	}
	return p, nil
}
