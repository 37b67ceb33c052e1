package wfe

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
)

// ---- directory and nonces

func (f *WFE) directory(rc *reqCtx) {
	p := rc.prov
	meta := directoryMeta{TermsOfService: p.TermsOfService, Website: p.Website, CAAIdentities: p.CAAIdentities,
		ExternalAccountRequired: !p.Open, Profiles: map[string]string{}}
	for name, pr := range p.Profiles {
		d := pr.Description
		if d == "" {
			d = name
		}
		meta.Profiles[name] = d
	}
	f.reply(rc, http.StatusOK, &directoryJSON{
		NewNonce: rc.url("new-nonce"), NewAccount: rc.url("new-account"), NewOrder: rc.url("new-order"),
		RevokeCert: rc.url("revoke-cert"), KeyChange: rc.url("key-change"), RenewalInfo: rc.url("renewal-info"),
		Meta: meta,
	})
}

func (f *WFE) newNonce(rc *reqCtx) {
	f.headers(rc)
	if rc.r.Method == http.MethodGet {
		rc.w.WriteHeader(http.StatusNoContent)
		return
	}
	rc.w.WriteHeader(http.StatusOK)
}

// ---- accounts

func (f *WFE) newAccount(rc *reqCtx, req *request) error {
	var pl struct {
		Contact                []string        `json:"contact"`
		TermsOfServiceAgreed   bool            `json:"termsOfServiceAgreed"`
		OnlyReturnExisting     bool            `json:"onlyReturnExisting"`
		ExternalAccountBinding json.RawMessage `json:"externalAccountBinding"`
	}
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("newAccount needs a payload")
		}
		return err
	}
	a, created, err := f.ra.NewAccount(rc.r.Context(), ra.NewAccountRequest{Provisioner: rc.prov, Key: req.jwk,
		Contact: pl.Contact, TermsAgreed: pl.TermsOfServiceAgreed, OnlyReturnExisting: pl.OnlyReturnExisting,
		ExternalAccountBinding: pl.ExternalAccountBinding, URL: req.url})
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	rc.w.Header().Set("Location", rc.url("acct", a.ID))
	f.reply(rc, status, accountView(rc, a))
	return nil
}

func (f *WFE) account(rc *reqCtx, req *request) error {
	if id := rc.r.PathValue("id"); req.account.ID != id {
		return unauthorized("the JWS is not signed by account %s", id)
	}
	a := req.account
	if !req.postGet {
		var pl struct {
			Contact *[]string `json:"contact"`
			Status  string    `json:"status"`
			// Other fields (termsOfServiceAgreed, orders, key) are ignored.
		}
		if err := decodePayload(req.payload, &pl); err != nil {
			return err
		}
		if pl.Status != "" && pl.Status != ra.StatusDeactivated {
			return malformed("status may only be set to deactivated")
		}
		up := ra.AccountUpdate{Contact: pl.Contact, Deactivate: pl.Status == ra.StatusDeactivated}
		if err := f.ra.UpdateAccount(rc.r.Context(), a, up); err != nil {
			return err
		}
	}
	rc.w.Header().Set("Location", rc.url("acct", a.ID))
	f.reply(rc, http.StatusOK, accountView(rc, a))
	return nil
}

// keyChange rolls the account key over (RFC 8555 §7.3.5): the inner JWS
// is checked here, the key swap is the RA's.
func (f *WFE) keyChange(rc *reqCtx, req *request) error {
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
	a := req.account
	if err := f.ra.KeyChange(rc.r.Context(), a, kc.OldKey, inner.jwk); err != nil {
		return err
	}
	rc.w.Header().Set("Location", rc.url("acct", a.ID))
	f.reply(rc, http.StatusOK, accountView(rc, a))
	return nil
}

// orders lists the account's order URLs (RFC 8555 §7.1.2.1), one page.
func (f *WFE) orders(rc *reqCtx, req *request) error {
	if id := rc.r.PathValue("id"); req.account.ID != id {
		return unauthorized("the JWS is not signed by account %s", id)
	}
	ids, err := f.ra.PendingOrders(rc.r.Context(), req.account)
	if err != nil {
		return err
	}
	v := &ordersJSON{Orders: make([]string, len(ids))}
	for i, id := range ids {
		v.Orders[i] = rc.url("order", id)
	}
	f.reply(rc, http.StatusOK, v)
	return nil
}

// ---- orders

func (f *WFE) newOrder(rc *reqCtx, req *request) error {
	var pl struct {
		Identifiers []ra.Identifier `json:"identifiers"`
		NotBefore   string          `json:"notBefore"`
		NotAfter    string          `json:"notAfter"`
		Profile     string          `json:"profile"`
		Replaces    string          `json:"replaces"`
	}
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("newOrder needs a payload")
		}
		return err
	}
	o, err := f.ra.NewOrder(rc.r.Context(), ra.NewOrderRequest{Account: req.account, Identifiers: pl.Identifiers,
		NotBefore: pl.NotBefore, NotAfter: pl.NotAfter, Profile: pl.Profile, Replaces: pl.Replaces})
	if err != nil {
		return err
	}
	rc.w.Header().Set("Location", rc.url("order", o.ID))
	f.reply(rc, http.StatusCreated, orderView(rc, o))
	return nil
}

func (f *WFE) order(rc *reqCtx, req *request) error {
	o, err := f.ra.Order(rc.r.Context(), req.account, rc.r.PathValue("id"))
	if err != nil {
		return err
	}
	f.reply(rc, http.StatusOK, orderView(rc, o))
	return nil
}

func (f *WFE) finalize(rc *reqCtx, req *request) error {
	var pl struct {
		CSR string `json:"csr"`
	}
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("finalize needs a CSR")
		}
		return err
	}
	der, err := base64.RawURLEncoding.DecodeString(pl.CSR)
	if err != nil {
		return prob(http.StatusBadRequest, "badCSR", "csr is not base64url DER")
	}
	o, err := f.ra.Finalize(rc.r.Context(), ra.FinalizeRequest{Account: req.account, OrderID: rc.r.PathValue("id"), CSR: der})
	if err != nil {
		return err
	}
	rc.w.Header().Set("Location", rc.url("order", o.ID))
	f.reply(rc, http.StatusOK, orderView(rc, o))
	return nil
}

// ---- authorizations and challenges

func (f *WFE) authz(rc *reqCtx, req *request) error {
	ctx, id := rc.r.Context(), rc.r.PathValue("id")
	if req.postGet {
		az, err := f.ra.Authorization(ctx, req.account, id)
		if err != nil {
			return err
		}
		f.reply(rc, http.StatusOK, authzView(rc, az))
		return nil
	}
	var up struct {
		Status string `json:"status"`
	}
	if err := decodePayload(req.payload, &up); err != nil {
		return err
	}
	if up.Status != ra.StatusDeactivated {
		return malformed("an authorization's status may only be set to deactivated")
	}
	az, err := f.ra.DeactivateAuthorization(ctx, req.account, id)
	if err != nil {
		return err
	}
	f.reply(rc, http.StatusOK, authzView(rc, az))
	return nil
}

func (f *WFE) challenge(rc *reqCtx, req *request) error {
	ctx, authzID, typ := rc.r.Context(), rc.r.PathValue("authz"), rc.r.PathValue("type")
	var az *ra.Authorization
	var c *ra.Challenge
	var err error
	if req.postGet {
		az, c, err = f.ra.Challenge(ctx, req.account, authzID, typ)
	} else {
		// The payload is an empty object (RFC 8555 §7.5.1); its content
		// is ignored but it must be JSON.
		var resp struct{}
		if err := decodePayload(req.payload, &resp); err != nil {
			return err
		}
		az, c, err = f.ra.StartValidation(ctx, req.account, authzID, typ)
	}
	if err != nil {
		return err
	}
	rc.w.Header().Add("Link", link(rc.url("authz", az.ID), "up"))
	if c.Status == ra.StatusProcessing {
		rc.w.Header().Set("Retry-After", "1")
	}
	f.reply(rc, http.StatusOK, challengeView(rc, az, c))
	return nil
}

// ---- certificates

func (f *WFE) certificate(rc *reqCtx, req *request) error {
	serial, alt := rc.r.PathValue("serial"), rc.r.PathValue("alt")
	cert, err := f.ra.Certificate(rc.r.Context(), req.account, serial)
	if err != nil {
		return err
	}
	n := 0
	if alt != "" {
		if n, err = strconv.Atoi(alt); err != nil || n < 1 || n >= len(cert.Chains) {
			return notFound("no alternate chain %q", alt)
		}
	}
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: cert.DER})
	if len(cert.Chains) > 0 {
		for _, c := range cert.Chains[n] {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	for i := range cert.Chains {
		if i == 0 && i != n {
			rc.w.Header().Add("Link", link(rc.url("cert", serial), "alternate"))
		} else if i != n {
			rc.w.Header().Add("Link", link(rc.url("cert", serial, strconv.Itoa(i)), "alternate"))
		}
	}
	f.headers(rc)
	rc.w.Header().Set("Content-Type", "application/pem-certificate-chain")
	rc.w.WriteHeader(http.StatusOK)
	_, _ = rc.w.Write(buf.Bytes())
	return nil
}

func (f *WFE) revokeCert(rc *reqCtx, req *request) error {
	var pl struct {
		Certificate string `json:"certificate"`
		Reason      *int   `json:"reason"`
	}
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("revokeCert needs a payload")
		}
		return err
	}
	der, err := base64.RawURLEncoding.DecodeString(pl.Certificate)
	if err != nil {
		return malformed("certificate is not base64url DER")
	}
	if err := f.ra.RevokeCert(rc.r.Context(), ra.RevokeRequest{Account: req.account, Key: req.jwk, Certificate: der, Reason: pl.Reason}); err != nil {
		return err
	}
	f.headers(rc)
	rc.w.WriteHeader(http.StatusOK)
	return nil
}

// ---- renewal information (RFC 9773)

// ariRetryAfter is how often clients should poll renewalInfo.
const ariRetryAfter = 6 * time.Hour

func (f *WFE) renewalInfo(rc *reqCtx) {
	ri, err := f.ra.RenewalInfo(rc.r.Context(), rc.r.PathValue("id"))
	if err != nil {
		f.writeProblem(rc, err)
		return
	}
	var v renewalInfoJSON
	v.SuggestedWindow.Start, v.SuggestedWindow.End = ri.Start.Format(time.RFC3339), ri.End.Format(time.RFC3339)
	rc.w.Header().Set("Retry-After", strconv.Itoa(int(ariRetryAfter.Seconds())))
	f.reply(rc, http.StatusOK, &v)
}
