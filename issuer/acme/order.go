package acme

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// addressChecker is the VA's address policy (*validation.VA has it).
type addressChecker interface {
	CheckAddress(ip net.IP) error
}

type newOrderPayload struct {
	Identifiers []Identifier `json:"identifiers"`
	NotBefore   string       `json:"notBefore"`
	NotAfter    string       `json:"notAfter"`
	Profile     string       `json:"profile"`
	Replaces    string       `json:"replaces"`
}

// normalizeIdentifier checks an order identifier and returns it in
// canonical form (lowercase DNS name, possibly "*."; canonical IP text).
func normalizeIdentifier(id Identifier) (Identifier, *Problem) {
	switch id.Type {
	case "dns":
		v := strings.ToLower(strings.TrimSuffix(id.Value, "."))
		base := strings.TrimPrefix(v, "*.")
		if err := checkDNSName(base); err != "" {
			p := prob(http.StatusBadRequest, "rejectedIdentifier", "DNS identifier %q: %s", id.Value, err)
			p.Identifier = &Identifier{Type: id.Type, Value: id.Value}
			return id, p
		}
		return Identifier{Type: "dns", Value: v}, nil
	case "ip":
		ip := net.ParseIP(id.Value)
		if ip == nil || strings.Contains(id.Value, "%") {
			p := prob(http.StatusBadRequest, "malformed", "IP identifier %q is not an IP address", id.Value)
			p.Identifier = &Identifier{Type: id.Type, Value: id.Value}
			return id, p
		}
		return Identifier{Type: "ip", Value: ip.String()}, nil
	}
	p := prob(http.StatusBadRequest, "unsupportedIdentifier", "identifier type %q is not supported", id.Type)
	p.Identifier = &Identifier{Type: id.Type, Value: id.Value}
	return id, p
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

// allowed applies the provisioner's and the EAB key's identifier limits.
func (s *Server) allowed(ctx context.Context, prov *Provisioner, acct *account, id Identifier) (*Problem, error) {
	reject := func(format string, args ...any) (*Problem, error) {
		p := prob(http.StatusBadRequest, "rejectedIdentifier", format, args...)
		p.Identifier = &Identifier{Type: id.Type, Value: id.Value}
		return p, nil
	}
	switch id.Type {
	case "ip":
		ip := net.ParseIP(id.Value)
		if !prov.allowsIP(ip) {
			return reject("IP address %s is not allowed by this directory", id.Value)
		}
		// Refuse at once what validation would refuse to connect to.
		if ac, ok := s.va.(addressChecker); ok {
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
		o, err := s.store.ACME().Get(ctx, kindEAB, acct.EABKeyID)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
		if err == nil {
			k, err := decode[eabKey](o)
			if err != nil {
				return nil, err
			}
			if len(k.Policy.DNSSuffixes) > 0 && !(&Provisioner{DNSSuffixes: k.Policy.DNSSuffixes}).allowsDNS(base) {
				return reject("DNS name %s is outside this account's external account binding policy", id.Value)
			}
		}
	}
	return nil, nil
}

func (s *Server) newOrder(rc *reqCtx, req *request) error {
	ctx := rc.r.Context()
	var pl newOrderPayload
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("newOrder needs a payload")
		}
		return err
	}
	prov := rc.prov
	if pl.NotBefore != "" || pl.NotAfter != "" {
		return malformed("notBefore and notAfter are not supported; choose a profile")
	}
	if len(pl.Identifiers) == 0 {
		return malformed("an order needs at least one identifier")
	}
	if len(pl.Identifiers) > prov.MaxIdentifiers {
		return prob(http.StatusBadRequest, "rejectedIdentifier", "at most %d identifiers per order", prov.MaxIdentifiers)
	}
	profile := pl.Profile
	if profile == "" {
		profile = prov.def
	}
	if _, ok := prov.Profiles[profile]; !ok {
		return prob(http.StatusBadRequest, "invalidProfile", "unknown profile %q (the directory lists the profiles offered)", pl.Profile)
	}
	var idents []Identifier
	var subs []*Problem
	for _, raw := range pl.Identifiers {
		id, p := normalizeIdentifier(raw)
		if p == nil {
			var err error
			if p, err = s.allowed(ctx, prov, req.account, id); err != nil {
				return internal(err, "checking identifiers")
			}
		}
		if p != nil {
			subs = append(subs, p)
			continue
		}
		if !slices.Contains(idents, id) {
			idents = append(idents, id)
		}
	}
	if len(subs) == 1 {
		return subs[0]
	}
	if len(subs) > 1 {
		p := prob(subs[0].Status, "rejectedIdentifier", "%d identifiers were rejected", len(subs))
		p.Subproblems = subs
		return p
	}
	if p, err := s.checkPendingLimit(ctx, prov, req.account.ID); p != nil || err != nil {
		if err != nil {
			return internal(err, "counting pending orders")
		}
		return p
	}
	if pl.Replaces != "" {
		if p := s.checkReplaces(ctx, req.account, pl.Replaces); p != nil {
			return p
		}
	}
	now := s.now()
	o := &order{ID: randID(16), AccountID: req.account.ID, Status: statusPending, Expires: now.Add(s.cfg.OrderLifetime),
		Identifiers: idents, Profile: profile, Replaces: pl.Replaces, CreatedAt: now}
	var newAuthzs []*authorization
	for _, id := range idents {
		az, err := s.reusableAuthz(ctx, req.account.ID, id, now)
		if err != nil {
			return internal(err, "looking up authorizations")
		}
		if az == nil {
			az = s.makeAuthz(prov, req.account.ID, id, now)
			newAuthzs = append(newAuthzs, az)
		}
		if az.Expires.Before(o.Expires) {
			o.Expires = az.Expires
		}
		o.AuthzIDs = append(o.AuthzIDs, az.ID)
	}
	err := s.store.InTx(ctx, func(tx storage.Repos) error {
		for _, az := range newAuthzs {
			if err := putObj(ctx, tx.ACME(), kindAuthz, az.ID, prov.Name, az.AccountID, authzRef(az), az.Status, az.Expires, az); err != nil {
				return err
			}
		}
		return putObj(ctx, tx.ACME(), kindOrder, o.ID, prov.Name, o.AccountID, "", o.Status, o.Expires, o)
	})
	if err != nil {
		return internal(err, "storing order")
	}
	view, err := s.orderView(ctx, rc, o)
	if err != nil {
		return err
	}
	rc.w.Header().Set("Location", rc.url("order", o.ID))
	s.reply(rc, http.StatusCreated, view)
	return nil
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
func authzRef(az *authorization) string {
	if az.Wildcard {
		return "dns:*." + az.Identifier.Value
	}
	return az.Identifier.key()
}

// reusableAuthz finds a valid (or pending) authorization of the account
// for id that stays usable for at least a day.
func (s *Server) reusableAuthz(ctx context.Context, acctID string, id Identifier, now time.Time) (*authorization, error) {
	for _, st := range []string{statusValid, statusPending} {
		list, err := s.store.ACME().List(ctx, storage.ACMEFilter{Kind: kindAuthz, AccountID: acctID, Ref: id.key(), Status: st, Limit: 20})
		if err != nil {
			return nil, err
		}
		for _, o := range list {
			if o.ExpiresAt.Before(now.Add(24 * time.Hour)) {
				continue
			}
			az, err := decode[authorization](o)
			if err != nil {
				return nil, err
			}
			if st == statusPending && slices.ContainsFunc(az.Challenges, func(c *challenge) bool { return c.Status != statusPending }) {
				continue
			}
			return az, nil
		}
	}
	return nil, nil
}

func (s *Server) makeAuthz(prov *Provisioner, acctID string, id Identifier, now time.Time) *authorization {
	az := &authorization{ID: randID(16), AccountID: acctID, Identifier: id, Status: statusPending,
		Expires: now.Add(s.cfg.OrderLifetime)}
	types := []string{validation.HTTP01, validation.DNS01, validation.TLSALPN01}
	switch {
	case id.Type == "ip":
		types = []string{validation.HTTP01, validation.TLSALPN01}
	case strings.HasPrefix(id.Value, "*."):
		az.Wildcard = true
		az.Identifier.Value = strings.TrimPrefix(id.Value, "*.")
		types = []string{validation.DNS01}
	}
	for _, t := range types {
		if prov.allowsChallenge(t) {
			az.Challenges = append(az.Challenges, &challenge{Type: t, Token: randID(32), Status: statusPending})
		}
	}
	return az
}

// loadOrder loads an order of the signing account.
func (s *Server) loadOrder(rc *reqCtx, req *request, id string) (*order, *storage.ACMEObject, error) {
	o, err := s.store.ACME().Get(rc.r.Context(), kindOrder, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (o.Provisioner != rc.prov.Name || o.AccountID != req.account.ID)) {
		return nil, nil, notFound("no order %q for this account", id)
	}
	if err != nil {
		return nil, nil, internal(err, "loading order")
	}
	ord, err := decode[order](o)
	if err != nil {
		return nil, nil, internal(err, "decoding order")
	}
	return ord, o, nil
}

// orderStatus computes pending/ready/invalid for a pending order from its
// authorizations; other statuses are stored.
func (s *Server) orderStatus(ctx context.Context, o *order) (string, error) {
	if o.Status != statusPending {
		return o.Status, nil
	}
	now := s.cfg.Now()
	if !now.Before(o.Expires) {
		return statusInvalid, nil
	}
	ready := true
	for _, id := range o.AuthzIDs {
		obj, err := s.store.ACME().Get(ctx, kindAuthz, id)
		if errors.Is(err, storage.ErrNotFound) {
			return statusInvalid, nil
		}
		if err != nil {
			return "", err
		}
		switch st := authzStatus(obj.Status, obj.ExpiresAt, now); st {
		case statusValid:
		case statusPending:
			ready = false
		default:
			return statusInvalid, nil
		}
	}
	if ready {
		return statusReady, nil
	}
	return statusPending, nil
}

func authzStatus(stored string, expires, now time.Time) string {
	if (stored == statusPending || stored == statusValid) && !now.Before(expires) {
		return statusExpired
	}
	return stored
}

func (s *Server) orderView(ctx context.Context, rc *reqCtx, o *order) (map[string]any, error) {
	st, err := s.orderStatus(ctx, o)
	if err != nil {
		return nil, internal(err, "computing order status")
	}
	authzs := make([]string, len(o.AuthzIDs))
	for i, id := range o.AuthzIDs {
		authzs[i] = rc.url("authz", id)
	}
	v := map[string]any{
		"status":         st,
		"expires":        o.Expires.Format(time.RFC3339),
		"identifiers":    o.Identifiers,
		"authorizations": authzs,
		"finalize":       rc.url("order", o.ID, "finalize"),
		"profile":        o.Profile,
	}
	if o.Replaces != "" {
		v["replaces"] = o.Replaces
	}
	if o.CertSerial != "" {
		v["certificate"] = rc.url("cert", o.CertSerial)
	}
	if o.Error != nil {
		v["error"] = o.Error
	}
	return v, nil
}

func (s *Server) getOrder(rc *reqCtx, req *request, id string) error {
	o, _, err := s.loadOrder(rc, req, id)
	if err != nil {
		return err
	}
	view, err := s.orderView(rc.r.Context(), rc, o)
	if err != nil {
		return err
	}
	s.reply(rc, http.StatusOK, view)
	return nil
}

// ---- authorizations and challenges

func (s *Server) loadAuthz(ctx context.Context, rc *reqCtx, req *request, id string) (*authorization, *storage.ACMEObject, error) {
	o, err := s.store.ACME().Get(ctx, kindAuthz, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (o.Provisioner != rc.prov.Name || o.AccountID != req.account.ID)) {
		return nil, nil, notFound("no authorization %q for this account", id)
	}
	if err != nil {
		return nil, nil, internal(err, "loading authorization")
	}
	az, err := decode[authorization](o)
	if err != nil {
		return nil, nil, internal(err, "decoding authorization")
	}
	return az, o, nil
}

func (s *Server) challengeView(rc *reqCtx, az *authorization, c *challenge) map[string]any {
	v := map[string]any{
		"type":   c.Type,
		"url":    rc.url("chall", az.ID, c.Type),
		"token":  c.Token,
		"status": c.Status,
	}
	if c.Validated != nil {
		v["validated"] = c.Validated.Format(time.RFC3339)
	}
	if c.Error != nil {
		v["error"] = c.Error
	}
	return v
}

func (s *Server) authzView(rc *reqCtx, az *authorization) map[string]any {
	chs := make([]map[string]any, 0, len(az.Challenges))
	for _, c := range az.Challenges {
		chs = append(chs, s.challengeView(rc, az, c))
	}
	v := map[string]any{
		"identifier": az.Identifier,
		"status":     authzStatus(az.Status, az.Expires, s.cfg.Now()),
		"expires":    az.Expires.Format(time.RFC3339),
		"challenges": chs,
	}
	if az.Wildcard {
		v["wildcard"] = true
	}
	return v
}

func (s *Server) authz(rc *reqCtx, req *request, id string) error {
	ctx := rc.r.Context()
	az, o, err := s.loadAuthz(ctx, rc, req, id)
	if err != nil {
		return err
	}
	s.resumeStale(ctx, req, az, o)
	if !req.postGet {
		var up struct {
			Status string `json:"status"`
		}
		if err := decodePayload(req.payload, &up); err != nil {
			return err
		}
		if up.Status != statusDeactivated {
			return malformed("an authorization's status may only be set to deactivated")
		}
		if az.Status != statusPending && az.Status != statusValid {
			return malformed("authorization is %s", az.Status)
		}
		az.Status = statusDeactivated
		if err := s.saveAuthz(ctx, az, o); err != nil {
			if errors.Is(err, storage.ErrConflict) {
				return prob(http.StatusConflict, "malformed", "the authorization changed concurrently; retry")
			}
			return internal(err, "saving authorization")
		}
	}
	s.reply(rc, http.StatusOK, s.authzView(rc, az))
	return nil
}

func (s *Server) saveAuthz(ctx context.Context, az *authorization, o *storage.ACMEObject) error {
	data, err := encode(az)
	if err != nil {
		return err
	}
	o.Data, o.Status, o.ExpiresAt = data, az.Status, az.Expires
	return s.store.ACME().Update(ctx, o)
}

func (s *Server) challenge(rc *reqCtx, req *request, authzID, typ string) error {
	ctx := rc.r.Context()
	az, o, err := s.loadAuthz(ctx, rc, req, authzID)
	if err != nil {
		return err
	}
	idx := slices.IndexFunc(az.Challenges, func(c *challenge) bool { return c.Type == typ })
	if idx < 0 {
		return notFound("no %s challenge in authorization %s", typ, authzID)
	}
	c := az.Challenges[idx]
	rc.w.Header().Add("Link", link(rc.url("authz", az.ID), "up"))
	if req.postGet {
		s.reply(rc, http.StatusOK, s.challengeView(rc, az, c))
		return nil
	}
	var resp map[string]any
	if err := decodePayload(req.payload, &resp); err != nil {
		return err
	}
	status := authzStatus(az.Status, az.Expires, s.cfg.Now())
	busy := slices.ContainsFunc(az.Challenges, func(c *challenge) bool { return c.Status != statusPending })
	if status == statusPending && c.Status == statusPending && !busy {
		now := s.now()
		c.Status, c.Started = statusProcessing, &now
		if err := s.saveAuthz(ctx, az, o); err != nil {
			if errors.Is(err, storage.ErrConflict) {
				return prob(http.StatusConflict, "malformed", "the authorization changed concurrently; retry")
			}
			return internal(err, "saving challenge")
		}
		tp, err := thumbprint(req.jwk)
		if err != nil {
			return internal(err, "account key thumbprint")
		}
		done := s.startValidation(az, c, c.Token+"."+tp)
		if s.cfg.ValidationWait > 0 {
			// Give a quick validation the chance to finish, so the client
			// sees its outcome without polling; never longer than the bound.
			t := time.NewTimer(s.cfg.ValidationWait)
			select {
			case <-done:
				if naz, _, err := s.loadAuthz(ctx, rc, req, authzID); err == nil {
					if i := slices.IndexFunc(naz.Challenges, func(x *challenge) bool { return x.Type == typ }); i >= 0 {
						az, c = naz, naz.Challenges[i]
					}
				}
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	} else if status != statusPending && c.Status == statusPending {
		return malformed("authorization is %s", status)
	}
	if c.Status == statusProcessing {
		rc.w.Header().Set("Retry-After", "1")
	}
	s.reply(rc, http.StatusOK, s.challengeView(rc, az, c))
	return nil
}

// startValidation validates in the background, bounded by the worker
// semaphore and the server's lifetime; the VA bounds each validation's time.
// The returned channel is closed once the outcome is recorded.
func (s *Server) startValidation(az *authorization, c *challenge, keyAuth string) <-chan struct{} {
	req := validation.Request{IdentifierType: az.Identifier.Type, Value: az.Identifier.Value, Wildcard: az.Wildcard,
		Challenge: c.Type, Token: c.Token, KeyAuthorization: keyAuth}
	done := make(chan struct{})
	if s.ctx.Err() != nil {
		return done // shutting down: the challenge stays processing until a restart's pruning
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		var err error
		select {
		case s.sem <- struct{}{}:
			err = s.va.Validate(s.ctx, req)
			<-s.sem
		case <-s.ctx.Done():
			err = s.ctx.Err()
		}
		if s.ctx.Err() != nil && err != nil {
			err = fmt.Errorf("validation interrupted: server shutting down: %w", err)
		}
		// Record the outcome even while shutting down, so the challenge
		// does not stay processing.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 10*time.Second)
		defer cancel()
		if rerr := s.recordValidation(ctx, az.ID, c.Type, err); rerr != nil {
			s.logger.ErrorContext(ctx, "acme: recording validation", "authz", az.ID, "error", rerr)
		}
	}()
	return done
}

// validationProblem converts a VA error into the challenge's problem.
func validationProblem(err error) *Problem {
	var ve interface {
		ProblemType() string
		ProblemDetail() string
	}
	if errors.As(err, &ve) {
		status := http.StatusBadRequest
		if strings.HasSuffix(ve.ProblemType(), ":unauthorized") || strings.HasSuffix(ve.ProblemType(), ":incorrectResponse") ||
			strings.HasSuffix(ve.ProblemType(), ":caa") {
			status = http.StatusForbidden
		}
		return &Problem{Type: ve.ProblemType(), Detail: ve.ProblemDetail(), Status: status}
	}
	return prob(http.StatusInternalServerError, "serverInternal", "validation failed")
}

func (s *Server) recordValidation(ctx context.Context, authzID, typ string, verr error) error {
	for range 5 {
		o, err := s.store.ACME().Get(ctx, kindAuthz, authzID)
		if err != nil {
			return err
		}
		az, err := decode[authorization](o)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(az.Challenges, func(c *challenge) bool { return c.Type == typ })
		if i < 0 || az.Challenges[i].Status != statusProcessing {
			return nil
		}
		c := az.Challenges[i]
		now := s.now()
		if verr == nil {
			c.Status, c.Validated = statusValid, &now
			az.Status, az.Expires = statusValid, now.Add(s.cfg.AuthzLifetime)
		} else {
			c.Status, c.Error = statusInvalid, validationProblem(verr)
			az.Status = statusInvalid
		}
		err = s.saveAuthz(ctx, az, o)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		return err
	}
	return fmt.Errorf("authorization %s: %w", authzID, storage.ErrConflict)
}

// ---- ARI helpers

// parseCertID splits an RFC 9773 certID into the AKI and the serial (hex).
func parseCertID(id string) (aki []byte, serial string, err error) {
	a, b, ok := strings.Cut(id, ".")
	if !ok {
		return nil, "", errors.New("certID must be base64url(AKI).base64url(serial)")
	}
	aki, err = base64.RawURLEncoding.DecodeString(a)
	if err != nil || len(aki) == 0 {
		return nil, "", errors.New("certID: bad authority key identifier")
	}
	sb, err := base64.RawURLEncoding.DecodeString(b)
	if err != nil || len(sb) == 0 || len(sb) > 20 {
		return nil, "", errors.New("certID: bad serial")
	}
	serial, err = ca.ParseSerial(fmt.Sprintf("%x", sb))
	if err != nil {
		return nil, "", fmt.Errorf("certID: %w", err)
	}
	return aki, serial, nil
}

func (s *Server) checkReplaces(ctx context.Context, acct *account, certID string) *Problem {
	_, serial, err := parseCertID(certID)
	if err != nil {
		return malformed("replaces: %v", err)
	}
	o, err := s.store.ACME().Get(ctx, kindCert, serial)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && o.AccountID != acct.ID) {
		return unauthorized("replaces: certificate %s was not issued to this account", serial)
	}
	if err != nil {
		return internal(err, "loading certificate record")
	}
	rec, err := decode[certRecord](o)
	if err != nil {
		return internal(err, "decoding certificate record")
	}
	if rec.ReplacedBy != "" {
		return prob(http.StatusConflict, "alreadyReplaced", "certificate %s was already replaced by order %s", serial, rec.ReplacedBy)
	}
	return nil
}

// checkPendingLimit refuses a new order when the account already has
// MaxPendingOrders unexpired pending orders.
func (s *Server) checkPendingLimit(ctx context.Context, prov *Provisioner, acctID string) (*Problem, error) {
	now := s.cfg.Now()
	n, after := 0, ""
	for {
		list, err := s.store.ACME().List(ctx, storage.ACMEFilter{Kind: kindOrder, AccountID: acctID, Status: statusPending, After: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		for _, o := range list {
			if o.ExpiresAt.After(now) {
				n++
			}
		}
		if n >= prov.MaxPendingOrders {
			p := prob(http.StatusTooManyRequests, "rateLimited", "too many pending orders (%d); finish or let some expire", prov.MaxPendingOrders)
			return p, nil
		}
		if len(list) < 1000 {
			return nil, nil
		}
		after = list[len(list)-1].ID
	}
}

// staleValidation is how long a challenge may stay processing before a
// client's poll restarts its validation (the node running it may have
// stopped); well above the VA's own bound.
const staleValidation = 2 * time.Minute

// resumeStale restarts a validation left processing by a node that stopped.
// The version check makes one poller, on whichever node, win the restart.
func (s *Server) resumeStale(ctx context.Context, req *request, az *authorization, o *storage.ACMEObject) {
	now := s.now()
	for _, c := range az.Challenges {
		if c.Status != statusProcessing || (c.Started != nil && now.Sub(*c.Started) < staleValidation) {
			continue
		}
		c.Started = &now
		if err := s.saveAuthz(ctx, az, o); err != nil {
			return // another poller restarted it, or storage failed: the next poll retries
		}
		tp, err := thumbprint(req.jwk)
		if err != nil {
			return
		}
		s.logger.WarnContext(ctx, "acme: restarting a stale validation", "authz", az.ID, "challenge", c.Type)
		s.startValidation(az, c, c.Token+"."+tp)
		return
	}
}
