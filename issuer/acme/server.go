package acme

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/ratelimit"
	"github.com/sigil-ca/sigil/storage"
)

// Server is the ACME server. Create it with New; mount Handler at the path
// of Config.BaseURL; call Close on shutdown to stop pending validations.
type Server struct {
	cfg    Config
	ca     CA
	va     VA
	store  Store
	sealer Sealer
	logger *slog.Logger
	provs  map[string]*Provisioner
	base   *url.URL

	// Per-client-IP limits on the requests anyone can make unauthenticated
	// (or with a self-made account key); nil: unlimited.
	limNonce, limAccount, limOrder *ratelimit.Limiter

	// nk is the nonce HMAC key, loaded (or created) on first use.
	nkMu sync.Mutex
	nk   []byte

	// Asynchronous validations: bounded by sem, stopped by cancel.
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup
}

// New builds a server.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if deps.CA == nil || deps.VA == nil || deps.Store == nil || deps.Sealer == nil {
		return nil, errors.New("acme: CA, VA, Store and Sealer are required")
	}
	if err := cfg.checkProfiles(deps.CA); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	base, _ := url.Parse(cfg.BaseURL) // checked in cfg.check
	s := &Server{cfg: cfg, ca: deps.CA, va: deps.VA, store: deps.Store, sealer: deps.Sealer,
		logger: deps.Logger, provs: map[string]*Provisioner{}, base: base,
		sem: make(chan struct{}, cfg.ValidationWorkers)}
	for i := range s.cfg.Provisioners {
		p := &s.cfg.Provisioners[i]
		s.provs[p.Name] = p
	}
	s.limNonce = cfg.RateLimits.NewNonce.limiter()
	s.limAccount = cfg.RateLimits.NewAccount.limiter()
	s.limOrder = cfg.RateLimits.NewOrder.limiter()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Close cancels running validations and waits for them to finish.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}

// Handler serves the ACME API under the path of Config.BaseURL (for
// example /acme/directory and /acme/NAME/directory).
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// reqCtx is one request's routing result.
type reqCtx struct {
	w      http.ResponseWriter
	r      *http.Request
	prov   *Provisioner
	prefix string   // base URL + "/NAME" for a named provisioner
	parts  []string // path segments after the provisioner
}

func (rc *reqCtx) url(parts ...string) string {
	return rc.prefix + "/" + strings.Join(parts, "/")
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	basePath := strings.TrimSuffix(s.base.Path, "/")
	rest, ok := strings.CutPrefix(r.URL.Path, basePath+"/")
	rc := &reqCtx{w: w, r: r, prov: s.provs[s.cfg.DefaultProvisioner], prefix: s.cfg.BaseURL}
	if !ok {
		s.problem(rc, notFound("no such resource"))
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) > 1 && !reserved(parts[0]) {
		p, ok := s.provs[parts[0]]
		if !ok {
			s.problem(rc, notFound("no such provisioner %q", parts[0]))
			return
		}
		rc.prov, rc.prefix, parts = p, s.cfg.BaseURL+"/"+p.Name, parts[1:]
	}
	rc.parts = parts
	w.Header().Set("Cache-Control", "no-store")
	s.route(rc)
}

func (s *Server) route(rc *reqCtx) {
	r := rc.r
	n := len(rc.parts)
	name := rc.parts[0]
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	post := r.Method == http.MethodPost
	if p := s.rateLimit(rc, name, n, get, post); p != nil {
		s.problem(rc, p)
		return
	}
	switch {
	case name == "directory" && n == 1 && get:
		s.directory(rc)
	case name == "new-nonce" && n == 1 && get:
		s.newNonce(rc)
	case name == "renewal-info" && n == 2 && get:
		s.renewalInfo(rc, rc.parts[1])
	case !post:
		if known(name, n) {
			rc.w.Header().Set("Allow", "POST")
			s.problem(rc, prob(http.StatusMethodNotAllowed, "malformed", "method %s not allowed", r.Method))
			return
		}
		s.problem(rc, notFound("no such resource"))
	case name == "new-account" && n == 1:
		s.post(rc, keyJWK, s.newAccount)
	case name == "new-order" && n == 1:
		s.post(rc, keyKID, s.newOrder)
	case name == "revoke-cert" && n == 1:
		s.post(rc, keyEither, s.revokeCert)
	case name == "key-change" && n == 1:
		s.post(rc, keyKID, s.keyChange)
	case name == "acct" && n == 2:
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.account(rc, req, rc.parts[1]) })
	case name == "orders" && n == 2:
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.orders(rc, req, rc.parts[1]) })
	case name == "order" && n == 2:
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.getOrder(rc, req, rc.parts[1]) })
	case name == "order" && n == 3 && rc.parts[2] == "finalize":
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.finalize(rc, req, rc.parts[1]) })
	case name == "authz" && n == 2:
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.authz(rc, req, rc.parts[1]) })
	case name == "chall" && n == 3:
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.challenge(rc, req, rc.parts[1], rc.parts[2]) })
	case name == "cert" && (n == 2 || n == 3):
		alt := ""
		if n == 3 {
			alt = rc.parts[2]
		}
		s.post(rc, keyKID, func(rc *reqCtx, req *request) error { return s.certificate(rc, req, rc.parts[1], alt) })
	default:
		s.problem(rc, notFound("no such resource"))
	}
}

// rateLimit applies the per-client-IP limits of newNonce, newAccount and
// newOrder before any other work (JWS verification included), so a flood
// costs neither storage nor signature checks.
func (s *Server) rateLimit(rc *reqCtx, name string, n int, get, post bool) *Problem {
	if n != 1 {
		return nil
	}
	var l *ratelimit.Limiter
	switch {
	case name == "new-nonce" && get:
		l = s.limNonce
	case name == "new-account" && post:
		l = s.limAccount
	case name == "new-order" && post:
		l = s.limOrder
	default:
		return nil
	}
	ok, wait := l.Allow(clientKey(rc.r))
	if ok {
		return nil
	}
	p := prob(http.StatusTooManyRequests, "rateLimited", "too many %s requests from your address; retry after %s", name, wait.Round(time.Second))
	p.retryAfter = wait
	return p
}

// clientKey is the rate-limit key of a request: its peer address, with
// IPv6 narrowed to the /64 a single host usually has. The peer is the TCP
// peer: behind a proxy every client shares the proxy's limit.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// known reports whether name is a POST-only resource (for 405 answers).
func known(name string, n int) bool {
	switch name {
	case "directory", "new-nonce", "renewal-info":
		return false
	}
	return reserved(name) && n <= 3
}

// ---- responses

// addNonce sets Replay-Nonce; a failure to store one is logged and the
// header left out (the client then asks new-nonce).
func (s *Server) addNonce(rc *reqCtx) {
	n, err := s.makeNonce(rc.r.Context())
	if err != nil {
		s.logger.ErrorContext(rc.r.Context(), "acme: making nonce", "error", err)
		return
	}
	rc.w.Header().Set("Replay-Nonce", n)
}

func (s *Server) headers(rc *reqCtx) {
	rc.w.Header().Add("Link", link(rc.url("directory"), "index"))
	s.addNonce(rc)
}

func link(u, rel string) string { return "<" + u + `>;rel="` + rel + `"` }

func (s *Server) reply(rc *reqCtx, status int, v any) {
	s.headers(rc)
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		s.problem(rc, internal(err, "encoding response"))
		return
	}
	rc.w.Header().Set("Content-Type", "application/json")
	rc.w.WriteHeader(status)
	if rc.r.Method != http.MethodHead {
		_, _ = rc.w.Write(body)
	}
}

func (s *Server) problem(rc *reqCtx, p *Problem) {
	if p.Status == 0 {
		p.Status = http.StatusBadRequest
	}
	if p.Status >= 500 || p.cause != nil {
		s.logger.ErrorContext(rc.r.Context(), "acme: request failed", "path", rc.r.URL.Path,
			"type", p.Type, "detail", p.Detail, "error", p.cause)
	}
	s.headers(rc)
	if p.location != "" {
		rc.w.Header().Set("Location", p.location)
	}
	if p.Type == errNS+"rateLimited" {
		secs := int64(60)
		if p.retryAfter > 0 {
			secs = int64(math.Ceil(p.retryAfter.Seconds()))
		}
		rc.w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	}
	body, _ := json.Marshal(p)
	rc.w.Header().Set("Content-Type", "application/problem+json")
	rc.w.WriteHeader(p.Status)
	_, _ = rc.w.Write(body)
}

func (s *Server) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Second) }

// randID returns n random bytes, base64url.
func randID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("acme: crypto/rand failed: %v", err)) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// ---- directory and nonces

func (s *Server) directory(rc *reqCtx) {
	p := rc.prov
	meta := map[string]any{}
	if p.TermsOfService != "" {
		meta["termsOfService"] = p.TermsOfService
	}
	if p.Website != "" {
		meta["website"] = p.Website
	}
	if len(p.CAAIdentities) > 0 {
		meta["caaIdentities"] = p.CAAIdentities
	}
	meta["externalAccountRequired"] = !p.Open
	profiles := map[string]string{}
	for name, pr := range p.Profiles {
		d := pr.Description
		if d == "" {
			d = name
		}
		profiles[name] = d
	}
	meta["profiles"] = profiles
	dir := map[string]any{
		"newNonce":    rc.url("new-nonce"),
		"newAccount":  rc.url("new-account"),
		"newOrder":    rc.url("new-order"),
		"revokeCert":  rc.url("revoke-cert"),
		"keyChange":   rc.url("key-change"),
		"renewalInfo": rc.url("renewal-info"),
		"meta":        meta,
	}
	s.reply(rc, http.StatusOK, dir)
}

func (s *Server) newNonce(rc *reqCtx) {
	s.headers(rc)
	if rc.r.Method == http.MethodGet {
		rc.w.WriteHeader(http.StatusNoContent)
		return
	}
	rc.w.WriteHeader(http.StatusOK)
}

// ---- authenticated POST

// keyMode says how a request must name its key (RFC 8555 §6.2).
type keyMode int

const (
	keyKID    keyMode = iota // kid: an existing account
	keyJWK                   // jwk: newAccount
	keyEither                // revokeCert: an account or the certificate's key
)

// request is an authenticated ACME request.
type request struct {
	payload  []byte
	postGet  bool             // empty payload: POST-as-GET
	jwk      *jose.JSONWebKey // the signing key
	account  *account         // the signing account (kid requests)
	accountO *storage.ACMEObject
	url      string
}

// post authenticates a POST and calls h.
func (s *Server) post(rc *reqCtx, mode keyMode, h func(*reqCtx, *request) error) {
	req, p := s.authenticate(rc, mode)
	if p != nil {
		s.problem(rc, p)
		return
	}
	if err := h(rc, req); err != nil {
		s.problem(rc, asProblem(err))
	}
}

func (s *Server) authenticate(rc *reqCtx, mode keyMode) (*request, *Problem) {
	r := rc.r
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/jose+json" {
		return nil, prob(http.StatusUnsupportedMediaType, "malformed", "Content-Type must be application/jose+json")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodySize+1))
	if err != nil {
		return nil, malformed("reading body: %v", err)
	}
	if int64(len(body)) > s.cfg.MaxBodySize {
		return nil, prob(http.StatusRequestEntityTooLarge, "malformed", "request body larger than %d bytes", s.cfg.MaxBodySize)
	}
	jws, p := parseJWS(body)
	if p != nil {
		return nil, p
	}
	switch mode {
	case keyJWK:
		p = jws.checkHeader(true)
	case keyKID:
		p = jws.checkHeader(false)
	default:
		p = jws.checkHeader(jws.jwk != nil)
	}
	if p != nil {
		return nil, p
	}
	want := s.requestURL(rc)
	if jws.url != want {
		return nil, unauthorized("JWS url header %q does not match the request URL %q", jws.url, want)
	}
	req := &request{url: want}
	if jws.jwk != nil {
		req.jwk = jws.jwk
	} else {
		acct, o, p := s.accountByKID(rc, jws.kid)
		if p != nil {
			return nil, p
		}
		req.account, req.accountO = acct, o
		if req.jwk, err = unmarshalKey(acct.Key); err != nil {
			return nil, internal(err, "loading account key")
		}
	}
	payload, p := jws.verify(req.jwk)
	if p != nil {
		return nil, p
	}
	// The nonce is consumed only once the signature verifies, so a forged
	// request cannot burn a client's nonce.
	if jws.nonce == "" {
		return nil, prob(http.StatusBadRequest, "badNonce", "JWS has no nonce")
	}
	if err := s.useNonce(r.Context(), jws.nonce); err != nil {
		if errors.Is(err, errBadNonce) {
			return nil, prob(http.StatusBadRequest, "badNonce", "%v", err)
		}
		return nil, internal(err, "checking nonce")
	}
	req.payload = payload
	req.postGet = len(payload) == 0
	return req, nil
}

// requestURL is the URL the client addressed, built from the configured
// base (the handler may sit behind a proxy or another listener).
func (s *Server) requestURL(rc *reqCtx) string {
	return s.base.Scheme + "://" + s.base.Host + rc.r.URL.EscapedPath()
}

func (s *Server) accountByKID(rc *reqCtx, kid string) (*account, *storage.ACMEObject, *Problem) {
	id, ok := strings.CutPrefix(kid, rc.url("acct")+"/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return nil, nil, prob(http.StatusBadRequest, "accountDoesNotExist", "kid %q is not an account URL of this directory", kid)
	}
	o, err := s.store.ACME().Get(rc.r.Context(), kindAccount, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && o.Provisioner != rc.prov.Name) {
		return nil, nil, prob(http.StatusBadRequest, "accountDoesNotExist", "no account %q", id)
	}
	if err != nil {
		return nil, nil, internal(err, "loading account")
	}
	acct, err := decode[account](o)
	if err != nil {
		return nil, nil, internal(err, "decoding account")
	}
	if acct.Status != statusValid {
		return nil, nil, unauthorized("account is %s", acct.Status)
	}
	return acct, o, nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
