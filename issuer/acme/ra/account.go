package ra

import (
	"context"
	"encoding/json"
	"errors"
	"net/mail"
	"strings"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/storage"
)

const maxContacts = 10

// NewAccountRequest is a newAccount (RFC 8555 §7.3).
type NewAccountRequest struct {
	Provisioner        *Provisioner
	Key                *jose.JSONWebKey // the key the request was signed with
	Contact            []string
	TermsAgreed        bool
	OnlyReturnExisting bool
	// ExternalAccountBinding is the raw EAB JWS, if any; URL is the
	// newAccount URL it must name.
	ExternalAccountBinding json.RawMessage
	URL                    string
}

// Account loads a valid account of the provisioner.
func (ra *RA) Account(ctx context.Context, prov *Provisioner, id string) (*Account, error) {
	o, err := ra.loadAccount(ctx, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && o.Provisioner != prov.Name) {
		return nil, errorf(KindAccountDoesNotExist, "no account %q", id)
	}
	if err != nil {
		return nil, internal(err, "loading account")
	}
	a, err := decodeAccount(o)
	if err != nil {
		return nil, err
	}
	if a.Status != StatusValid {
		return nil, unauthorized("account is %s", a.Status)
	}
	return a, nil
}

// loadAccount reads an account object, from the cache when there is one.
func (ra *RA) loadAccount(ctx context.Context, id string) (*storage.ACMEObject, error) {
	if ra.accounts == nil {
		return ra.store.ACME().Get(ctx, kindAccount, id)
	}
	o, gen := ra.accounts.get(id)
	if o != nil {
		return o, nil
	}
	o, err := ra.store.ACME().Get(ctx, kindAccount, id)
	if err == nil {
		ra.accounts.put(o, gen)
	}
	return o, err
}

// accountWritten tells the cache, if any, that an account's row was
// written (or may have been: an error can follow a commit).
func (ra *RA) accountWritten(id string) {
	if ra.accounts != nil {
		ra.accounts.written(id)
	}
}

func decodeAccount(o *storage.ACMEObject) (*Account, error) {
	a, err := decode[Account](o)
	if err != nil {
		return nil, internal(err, "decoding account")
	}
	a.prov, a.obj = o.Provisioner, o
	return a, nil
}

func checkContacts(contacts []string) error {
	if len(contacts) > maxContacts {
		return errorf(KindInvalidContact, "at most %d contacts", maxContacts)
	}
	for _, c := range contacts {
		addr, ok := strings.CutPrefix(c, "mailto:")
		if !ok {
			return errorf(KindUnsupportedContact, "contact %q: only mailto: URLs are supported", c)
		}
		if len(c) > 254 || strings.ContainsAny(addr, ",?&") {
			return errorf(KindInvalidContact, "contact %q is not a single email address", c)
		}
		a, err := mail.ParseAddress(addr)
		if err != nil || a.Address != addr || a.Name != "" {
			return errorf(KindInvalidContact, "contact %q is not a valid email address", c)
		}
	}
	return nil
}

// NewAccount returns the key's existing account (created false) or
// creates one.
func (ra *RA) NewAccount(ctx context.Context, req NewAccountRequest) (acct *Account, created bool, err error) {
	prov := req.Provisioner
	tp, err := Thumbprint(req.Key)
	if err != nil {
		return nil, false, errorf(KindBadPublicKey, "%v", err)
	}
	st := ra.store.ACME()
	if o, err := st.GetByLookupKey(ctx, kindAccount, prov.Name, tp); err == nil {
		a, err := decodeAccount(o)
		if err != nil {
			return nil, false, err
		}
		if a.Status != StatusValid {
			return nil, false, unauthorized("the account for this key is %s", a.Status)
		}
		return a, false, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, false, internal(err, "looking up account")
	}
	if req.OnlyReturnExisting {
		return nil, false, errorf(KindAccountDoesNotExist, "no account for this key")
	}
	if err := checkContacts(req.Contact); err != nil {
		return nil, false, err
	}
	if prov.TermsOfService != "" && !req.TermsAgreed {
		return nil, false, errorf(KindUserActionRequired, "you must agree to the terms of service %s", prov.TermsOfService)
	}
	key, err := marshalKey(req.Key)
	if err != nil {
		return nil, false, malformed("%v", err)
	}
	a := &Account{ID: newID(), Status: StatusValid, Contact: req.Contact, TermsAgreed: req.TermsAgreed,
		Key: key, CreatedAt: ra.now(), prov: prov.Name}
	var eab *storage.ACMEObject
	switch {
	case len(req.ExternalAccountBinding) > 0 && string(req.ExternalAccountBinding) != "null":
		o, err := ra.verifyEAB(ctx, req)
		if err != nil {
			return nil, false, err
		}
		eab, a.EABKeyID = o, o.ID
	case !prov.Open:
		return nil, false, errorf(KindExternalAccountRequired, "this directory requires an external account binding")
	}
	data, err := encode(a)
	if err != nil {
		return nil, false, internal(err, "encoding account")
	}
	ao := &storage.ACMEObject{Kind: kindAccount, ID: a.ID, Provisioner: prov.Name, LookupKey: tp,
		Status: a.Status, Data: data}
	err = ra.store.InTx(ctx, func(tx storage.Repos) error {
		if eab != nil {
			// Bind the key to this account: the version check makes it
			// single use even against a concurrent registration.
			k, err := decode[eabKey](eab)
			if err != nil {
				return err
			}
			k.AccountID, k.BoundAt = a.ID, ra.now()
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
		return nil, false, conflict("an account for this key was created concurrently; retry")
	}
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, false, e
		}
		return nil, false, internal(err, "creating account")
	}
	a.obj = ao
	ra.logger.InfoContext(ctx, "acme: account created", "provisioner", prov.Name, "account", a.ID, "eab", a.EABKeyID)
	return a, true, nil
}

// flattened is the flattened JWS serialization (RFC 7515 §7.2.2), decoded
// only to reject other shapes.
type flattened struct {
	Protected  *string         `json:"protected"`
	Payload    *string         `json:"payload"`
	Signature  *string         `json:"signature"`
	Header     json.RawMessage `json:"header"`
	Signatures json.RawMessage `json:"signatures"`
}

// verifyEAB checks an externalAccountBinding (RFC 8555 §7.3.4): an HS*
// JWS, kid an unused EAB key of this provisioner, url the newAccount URL,
// payload the account's JWK, signed with the key's HMAC secret.
func (ra *RA) verifyEAB(ctx context.Context, req NewAccountRequest) (*storage.ACMEObject, error) {
	raw := req.ExternalAccountBinding
	bad := func(format string, args ...any) (*storage.ACMEObject, error) {
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
	if u, _ := h.ExtraHeaders["url"].(string); u != req.URL {
		return bad("url %q does not match %q", u, req.URL)
	}
	if h.KeyID == "" {
		return bad("no kid")
	}
	o, err := ra.store.ACME().Get(ctx, kindEAB, h.KeyID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && o.Provisioner != req.Provisioner.Name) {
		return bad("unknown key id")
	}
	if err != nil {
		return nil, internal(err, "loading EAB key")
	}
	if o.Status != StatusValid {
		return bad("key is %s", o.Status)
	}
	if !o.ExpiresAt.IsZero() && !ra.cfg.Now().Before(o.ExpiresAt) {
		return bad("key expired")
	}
	k, err := decode[eabKey](o)
	if err != nil {
		return nil, internal(err, "decoding EAB key")
	}
	secret, err := ra.sealer.Open(ctx, sealKindEAB, o.ID, k.SealedHMAC)
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
	t1, err1 := Thumbprint(&inner)
	t2, err2 := Thumbprint(req.Key)
	if err1 != nil || err2 != nil || t1 != t2 {
		return bad("payload is not the account key")
	}
	return o, nil
}

// AccountUpdate changes an account (RFC 8555 §7.3.2, §7.3.6).
type AccountUpdate struct {
	Contact    *[]string // nil: unchanged
	Deactivate bool
}

// UpdateAccount applies up to the account.
func (ra *RA) UpdateAccount(ctx context.Context, a *Account, up AccountUpdate) error {
	if up.Deactivate {
		a.Status = StatusDeactivated
	}
	if up.Contact != nil {
		if err := checkContacts(*up.Contact); err != nil {
			return err
		}
		a.Contact = *up.Contact
	}
	return ra.saveAccount(ctx, a)
}

func (ra *RA) saveAccount(ctx context.Context, a *Account) error {
	data, err := encode(a)
	if err != nil {
		return internal(err, "encoding account")
	}
	a.obj.Data, a.obj.Status = data, a.Status
	err = ra.store.ACME().Update(ctx, a.obj)
	ra.accountWritten(a.ID)
	if err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return conflict("the account changed concurrently; retry")
		}
		return internal(err, "saving account")
	}
	return nil
}

// KeyChange rolls the account key over (RFC 8555 §7.3.5). The WFE has
// verified the inner JWS with NewKey; OldKey is its payload's oldKey.
func (ra *RA) KeyChange(ctx context.Context, a *Account, oldKey json.RawMessage, newKey *jose.JSONWebKey) error {
	old, err := UnmarshalKey(oldKey)
	if err != nil {
		return malformed("oldKey: %v", err)
	}
	oldTP, err := Thumbprint(old)
	if err != nil || oldTP != a.Thumbprint() {
		return unauthorized("oldKey is not the account's current key")
	}
	newTP, err := Thumbprint(newKey)
	if err != nil {
		return errorf(KindBadPublicKey, "%v", err)
	}
	if newTP == a.Thumbprint() {
		return malformed("new key equals the old key")
	}
	if other, err := ra.store.ACME().GetByLookupKey(ctx, kindAccount, a.prov, newTP); err == nil {
		e := conflict("the new key is already in use by another account")
		e.Account = other.ID
		return e
	}
	key, err := marshalKey(newKey)
	if err != nil {
		return malformed("%v", err)
	}
	a.Key = key
	a.obj.LookupKey = newTP
	if err := ra.saveAccount(ctx, a); err != nil {
		return err
	}
	ra.logger.InfoContext(ctx, "acme: account key rolled over", "account", a.ID)
	return nil
}

// PendingOrders lists the ids of the account's pending and processing
// orders (RFC 8555 §7.1.2.1), one page.
func (ra *RA) PendingOrders(ctx context.Context, a *Account) ([]string, error) {
	list, err := ra.store.ACME().List(ctx, storage.ACMEFilter{Kind: kindOrder, AccountID: a.ID, Limit: 1000})
	if err != nil {
		return nil, internal(err, "listing orders")
	}
	ids := []string{}
	for _, o := range list {
		if o.Status == StatusPending || o.Status == StatusProcessing {
			ids = append(ids, o.ID)
		}
	}
	return ids, nil
}
