package ra

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// addressChecker is the VA's address policy (*validation.VA has it).
type addressChecker interface {
	CheckAddress(ip net.IP) error
}

// NewOrderRequest is a newOrder (RFC 8555 §7.4).
type NewOrderRequest struct {
	Account     *Account
	Identifiers []Identifier
	NotBefore   string
	NotAfter    string
	Profile     string // "" for the provisioner's default
	Replaces    string // ARI certID (RFC 9773 §5)
}

func rejected(id Identifier, k Kind, format string, args ...any) *Error {
	e := errorf(k, format, args...)
	e.Identifier = &Identifier{Type: id.Type, Value: id.Value}
	return e
}

// normalizeIdentifier checks an order identifier and returns it in
// canonical form (lowercase DNS name, possibly "*."; canonical IP text).
func normalizeIdentifier(id Identifier) (Identifier, *Error) {
	switch id.Type {
	case validation.IdentifierDNS:
		v := strings.ToLower(strings.TrimSuffix(id.Value, "."))
		base := strings.TrimPrefix(v, "*.")
		if err := checkDNSName(base); err != "" {
			return id, rejected(id, KindRejectedIdentifier, "DNS identifier %q: %s", id.Value, err)
		}
		return Identifier{Type: validation.IdentifierDNS, Value: v}, nil
	case validation.IdentifierIP:
		ip := net.ParseIP(id.Value)
		if ip == nil || strings.Contains(id.Value, "%") {
			return id, rejected(id, KindMalformed, "IP identifier %q is not an IP address", id.Value)
		}
		return Identifier{Type: validation.IdentifierIP, Value: ip.String()}, nil
	}
	return id, rejected(id, KindUnsupportedIdentifier, "identifier type %q is not supported", id.Type)
}

// checkDNSName returns why name is not a valid host name ("" if it is).
func checkDNSName(name string) string {
	if name == "" || len(name) > 253 {
		return "empty or longer than 253 characters"
	}
	if net.ParseIP(name) != nil {
		return "an IP address is not a DNS name"
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 {
			return "empty or overlong label"
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "label starts or ends with a hyphen"
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Sprintf("invalid character %q", c)
			}
		}
	}
	return ""
}

// allowed applies the provisioner's and the EAB key's identifier limits:
// a rejection (*Error) or a storage failure.
func (ra *RA) allowed(ctx context.Context, prov *Provisioner, acct *Account, id Identifier) (*Error, error) {
	reject := func(format string, args ...any) (*Error, error) {
		return rejected(id, KindRejectedIdentifier, format, args...), nil
	}
	if id.Type == validation.IdentifierIP {
		ip := net.ParseIP(id.Value)
		if !prov.allowsIP(ip) {
			return reject("IP address %s is not allowed by this directory", id.Value)
		}
		// Refuse at once what validation would refuse to connect to.
		if ac, ok := ra.va.(addressChecker); ok {
			if err := ac.CheckAddress(ip); err != nil {
				return reject("IP address %s cannot be validated: %v", id.Value, err)
			}
		}
		return nil, nil
	}
	base := strings.TrimPrefix(id.Value, "*.")
	if strings.HasPrefix(id.Value, "*.") && !prov.allowsChallenge(validation.DNS01) {
		return reject("wildcard names need dns-01, which this directory does not offer")
	}
	if !prov.allowsDNS(base) {
		return reject("DNS name %s is not allowed by this directory", id.Value)
	}
	if acct.EABKeyID != "" {
		o, err := ra.store.ACME().Get(ctx, kindEAB, acct.EABKeyID)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
		if err == nil {
			k, err := decode[eabKey](o)
			if err != nil {
				return nil, err
			}
			if len(k.Policy.DNSSuffixes) > 0 && !allowsDNS(k.Policy.DNSSuffixes, base) {
				return reject("DNS name %s is outside this account's external account binding policy", id.Value)
			}
		}
	}
	return nil, nil
}

// checkIdentifiers normalizes and deduplicates the order's identifiers and
// applies the limits, collecting every rejection.
func (ra *RA) checkIdentifiers(ctx context.Context, prov *Provisioner, acct *Account, raw []Identifier) ([]Identifier, error) {
	var idents []Identifier
	var subs []*Error
	for _, r := range raw {
		id, rej := normalizeIdentifier(r)
		if rej == nil {
			var err error
			if rej, err = ra.allowed(ctx, prov, acct, id); err != nil {
				return nil, internal(err, "checking identifiers")
			}
		}
		if rej != nil {
			subs = append(subs, rej)
			continue
		}
		if !slices.Contains(idents, id) {
			idents = append(idents, id)
		}
	}
	switch len(subs) {
	case 0:
		return idents, nil
	case 1:
		return nil, subs[0]
	}
	e := errorf(KindRejectedIdentifier, "%d identifiers were rejected", len(subs))
	e.Subproblems = subs
	return nil, e
}

// NewOrder creates an order, reusing the account's authorizations that
// stay usable.
func (ra *RA) NewOrder(ctx context.Context, req NewOrderRequest) (*Order, error) {
	acct := req.Account
	prov, err := ra.Provisioner(acct.prov)
	if err != nil {
		return nil, internal(err, "account provisioner")
	}
	if req.NotBefore != "" || req.NotAfter != "" {
		return nil, malformed("notBefore and notAfter are not supported; choose a profile")
	}
	if len(req.Identifiers) == 0 {
		return nil, malformed("an order needs at least one identifier")
	}
	if len(req.Identifiers) > prov.MaxIdentifiers {
		return nil, errorf(KindRejectedIdentifier, "at most %d identifiers per order", prov.MaxIdentifiers)
	}
	profile := req.Profile
	if profile == "" {
		profile = prov.def
	}
	if _, ok := prov.Profiles[profile]; !ok {
		return nil, errorf(KindInvalidProfile, "unknown profile %q (the directory lists the profiles offered)", req.Profile)
	}
	idents, err := ra.checkIdentifiers(ctx, prov, acct, req.Identifiers)
	if err != nil {
		return nil, err
	}
	if err := ra.checkPendingLimit(ctx, prov, acct.ID); err != nil {
		return nil, err
	}
	if req.Replaces != "" {
		if err := ra.checkReplaces(ctx, acct, req.Replaces); err != nil {
			return nil, err
		}
	}
	now := ra.now()
	o := &Order{ID: newID(), AccountID: acct.ID, Status: StatusPending, Expires: now.Add(ra.cfg.OrderLifetime),
		Identifiers: idents, Profile: profile, Replaces: req.Replaces, CreatedAt: now}
	var newAuthzs []*Authorization
	// The order's status is worked out from the authorizations in hand
	// (just made, or just read for reuse) rather than read back.
	var states []*storage.ACMEObject
	for _, id := range idents {
		az, err := ra.reusableAuthz(ctx, acct.ID, id, now)
		if err != nil {
			return nil, internal(err, "looking up authorizations")
		}
		if az == nil {
			az = ra.makeAuthz(prov, acct.ID, id, now)
			newAuthzs = append(newAuthzs, az)
		}
		if az.Expires.Before(o.Expires) {
			o.Expires = az.Expires
		}
		o.AuthzIDs = append(o.AuthzIDs, az.ID)
		states = append(states, &storage.ACMEObject{Status: az.Status, ExpiresAt: az.Expires})
	}
	err = ra.store.InTx(ctx, func(tx storage.Repos) error {
		for _, az := range newAuthzs {
			if err := putObj(ctx, tx.ACME(), kindAuthz, az.ID, prov.Name, az.AccountID, authzRef(az), az.Status, az.Expires, az); err != nil {
				return err
			}
		}
		return putObj(ctx, tx.ACME(), kindOrder, o.ID, prov.Name, o.AccountID, "", o.Status, o.Expires, o)
	})
	if err != nil {
		return nil, internal(err, "storing order")
	}
	cp := *o
	cp.Status = statusFrom(o, states, ra.cfg.Now())
	return &cp, nil
}

func putObj(ctx context.Context, st storage.ACME, kind, id, prov, acct, ref, status string, exp time.Time, v any) error {
	data, err := encode(v)
	if err != nil {
		return err
	}
	return st.Put(ctx, &storage.ACMEObject{Kind: kind, ID: id, Provisioner: prov, AccountID: acct, Ref: ref,
		Status: status, ExpiresAt: exp, Data: data})
}

// authzRef is the reuse key: the identifier as ordered ("*." kept, since a
// wildcard authorization offers only dns-01).
func authzRef(az *Authorization) string {
	if az.Wildcard {
		return "dns:*." + az.Identifier.Value
	}
	return az.Identifier.key()
}

// reusableAuthz finds a valid (or pending) authorization of the account
// for id that stays usable for at least a day.
func (ra *RA) reusableAuthz(ctx context.Context, acctID string, id Identifier, now time.Time) (*Authorization, error) {
	for _, st := range []string{StatusValid, StatusPending} {
		list, err := ra.store.ACME().List(ctx, storage.ACMEFilter{Kind: kindAuthz, AccountID: acctID, Ref: id.key(), Status: st, Limit: 20})
		if err != nil {
			return nil, err
		}
		for _, o := range list {
			if o.ExpiresAt.Before(now.Add(24 * time.Hour)) {
				continue
			}
			az, err := decode[Authorization](o)
			if err != nil {
				return nil, err
			}
			if st == StatusPending && slices.ContainsFunc(az.Challenges, func(c *Challenge) bool { return c.Status != StatusPending }) {
				continue
			}
			return az, nil
		}
	}
	return nil, nil
}

func (ra *RA) makeAuthz(prov *Provisioner, acctID string, id Identifier, now time.Time) *Authorization {
	az := &Authorization{ID: newID(), AccountID: acctID, Identifier: id, Status: StatusPending,
		Expires: now.Add(ra.cfg.OrderLifetime)}
	types := []string{validation.HTTP01, validation.DNS01, validation.TLSALPN01}
	switch {
	case id.Type == validation.IdentifierIP:
		types = []string{validation.HTTP01, validation.TLSALPN01}
	case strings.HasPrefix(id.Value, "*."):
		az.Wildcard = true
		az.Identifier.Value = strings.TrimPrefix(id.Value, "*.")
		types = []string{validation.DNS01}
	}
	for _, t := range types {
		if prov.allowsChallenge(t) {
			az.Challenges = append(az.Challenges, &Challenge{Type: t, Token: newToken(), Status: StatusPending})
		}
	}
	return az
}

// Order returns an order of the account, with its current status.
func (ra *RA) Order(ctx context.Context, acct *Account, id string) (*Order, error) {
	o, _, err := ra.loadOrder(ctx, acct, id)
	if err != nil {
		return nil, err
	}
	return ra.withStatus(ctx, o)
}

// loadOrder loads an order of the account, as stored.
func (ra *RA) loadOrder(ctx context.Context, acct *Account, id string) (*Order, *storage.ACMEObject, error) {
	o, err := ra.store.ACME().Get(ctx, kindOrder, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (o.Provisioner != acct.prov || o.AccountID != acct.ID)) {
		return nil, nil, notFound("no order %q for this account", id)
	}
	if err != nil {
		return nil, nil, internal(err, "loading order")
	}
	ord, err := decode[Order](o)
	if err != nil {
		return nil, nil, internal(err, "decoding order")
	}
	return ord, o, nil
}

// withStatus returns a copy of o carrying its computed status.
func (ra *RA) withStatus(ctx context.Context, o *Order) (*Order, error) {
	st, err := ra.orderStatus(ctx, o)
	if err != nil {
		return nil, internal(err, "computing order status")
	}
	cp := *o
	cp.Status = st
	return &cp, nil
}

// orderStatus computes pending/ready/invalid for a pending order from its
// authorizations; other statuses are stored.
func (ra *RA) orderStatus(ctx context.Context, o *Order) (string, error) {
	if o.Status != StatusPending {
		return o.Status, nil
	}
	azs, err := ra.orderAuthzs(ctx, o)
	if err != nil {
		return "", err
	}
	return statusFrom(o, azs, ra.cfg.Now()), nil
}

// orderAuthzs loads o's authorizations as stored, nil for one that is
// gone.
func (ra *RA) orderAuthzs(ctx context.Context, o *Order) ([]*storage.ACMEObject, error) {
	azs := make([]*storage.ACMEObject, len(o.AuthzIDs))
	for i, id := range o.AuthzIDs {
		obj, err := ra.store.ACME().Get(ctx, kindAuthz, id)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		azs[i] = obj
	}
	return azs, nil
}

// statusFrom is a pending order's status given its authorizations (nil:
// gone): invalid once it or any authorization is past use, ready once all
// are valid, else pending. Orders in any other status keep it.
func statusFrom(o *Order, azs []*storage.ACMEObject, now time.Time) string {
	if o.Status != StatusPending {
		return o.Status
	}
	if !now.Before(o.Expires) {
		return StatusInvalid
	}
	ready := true
	for _, obj := range azs {
		if obj == nil {
			return StatusInvalid
		}
		switch authzStatus(obj.Status, obj.ExpiresAt, now) {
		case StatusValid:
		case StatusPending:
			ready = false
		default:
			return StatusInvalid
		}
	}
	if ready {
		return StatusReady
	}
	return StatusPending
}

func authzStatus(stored string, expires, now time.Time) string {
	if (stored == StatusPending || stored == StatusValid) && !now.Before(expires) {
		return StatusExpired
	}
	return stored
}

// checkPendingLimit refuses a new order when the account already has
// MaxPendingOrders unexpired pending orders. RetryAfter is when the first
// of them expires (finishing one frees a slot sooner).
func (ra *RA) checkPendingLimit(ctx context.Context, prov *Provisioner, acctID string) error {
	now := ra.cfg.Now()
	n, first, err := ra.store.ACME().CountUnexpired(ctx, storage.ACMEFilter{Kind: kindOrder, AccountID: acctID, Status: StatusPending}, now)
	if err != nil {
		return internal(err, "counting pending orders")
	}
	if n < prov.MaxPendingOrders {
		return nil
	}
	e := errorf(KindRateLimited, "too many pending orders (%d); finish or let some expire", prov.MaxPendingOrders)
	e.RetryAfter = max(first.Sub(now), time.Second)
	return e
}
