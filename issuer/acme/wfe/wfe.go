package wfe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/ratelimit"
	"github.com/sigil-ca/sigil/storage"
)

// Store is the storage the front end uses (nonces and their key).
type Store interface {
	ACME() storage.ACME
}

// Config configures the front end.
type Config struct {
	// BaseURL is the public URL the handler is mounted at, e.g.
	// "https://sigil.example:8443/acme". The directory of the default
	// provisioner is BaseURL+"/directory", that of provisioner NAME
	// BaseURL+"/NAME/directory".
	BaseURL       string
	NonceLifetime time.Duration // default 1h
	// LocalNonces: this process is the only server on its database (the
	// embedded store), so nonces are minted under a key made at start and
	// their use is remembered in memory instead of written to storage,
	// which saves a write transaction on every POST. A restart invalidates
	// the nonces handed out (clients retry on badNonce). With several nodes
	// on one database it must be false: a nonce from one node would be
	// refused by the others.
	LocalNonces bool
	// UsedNonceLimit bounds the used nonces LocalNonces remember; past it
	// the oldest are refused. Default DefaultUsedNonceLimit.
	UsedNonceLimit int
	MaxBodySize    int64 // default 64 KiB
	// RateLimits are per client IP on newNonce, newAccount and newOrder.
	RateLimits RateLimits
	Now        func() time.Time
	Logger     *slog.Logger
}

// Rate is a token bucket: PerSecond refill, Burst capacity. The zero value
// takes the default for its endpoint; a negative PerSecond disables it.
type Rate struct {
	PerSecond float64
	Burst     int
}

// RateLimits are the per-client-IP limits of the endpoints anyone can call.
type RateLimits struct {
	NewNonce   Rate // default 10/s, burst 100
	NewAccount Rate // default 1 per 10 s, burst 20
	NewOrder   Rate // default 5/s, burst 100
}

// Default rate limits: generous for hosts (a client takes one nonce per
// session, one account ever, a few orders per renewal) and still far
// below what would fill storage or a SQLite write gate.
var (
	defaultNonceRate   = Rate{PerSecond: 10, Burst: 100}
	defaultAccountRate = Rate{PerSecond: 0.1, Burst: 20}
	defaultOrderRate   = Rate{PerSecond: 5, Burst: 100}
)

func (r Rate) withDefault(d Rate) Rate {
	if r.PerSecond == 0 {
		r.PerSecond = d.PerSecond
		if r.Burst == 0 {
			r.Burst = d.Burst
		}
	}
	if r.Burst <= 0 {
		r.Burst = 1
	}
	return r
}

// limiter returns nil (no limit) for a disabled rate.
func (r Rate) limiter() *ratelimit.Limiter {
	if r.PerSecond <= 0 {
		return nil
	}
	return ratelimit.New(r.PerSecond, r.Burst)
}

// Reserved reports whether name is a resource name, which cannot be a
// provisioner name.
func Reserved(name string) bool {
	switch name {
	case "directory", "new-nonce", "new-account", "new-order", "revoke-cert", "key-change",
		"acct", "order", "orders", "authz", "chall", "cert", "renewal-info":
		return true
	}
	return false
}

// WFE is the ACME web front end.
type WFE struct {
	cfg     Config
	ra      *ra.RA
	logger  *slog.Logger
	base    *url.URL
	handler http.Handler

	// Per-client-IP limits on the requests anyone can make unauthenticated
	// (or with a self-made account key); nil: unlimited.
	limNonce, limAccount, limOrder *ratelimit.Limiter

	nonces nonceBook
}

// New builds the front end of authority, keeping nonces in store under a
// key sealed by sealer (unless cfg.LocalNonces).
func New(cfg Config, authority *ra.RA, store Store, sealer ra.Sealer) (*WFE, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("acme: base URL %q must be an absolute http(s) URL without query", cfg.BaseURL)
	}
	if authority == nil || store == nil || sealer == nil {
		return nil, errors.New("acme: RA, Store and Sealer are required")
	}
	for _, p := range authority.Provisioners() {
		if Reserved(p.Name) {
			return nil, fmt.Errorf("acme: invalid provisioner name %q", p.Name)
		}
	}
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	u, _ = url.Parse(cfg.BaseURL)
	if cfg.NonceLifetime <= 0 {
		cfg.NonceLifetime = time.Hour
	}
	if cfg.MaxBodySize <= 0 {
		cfg.MaxBodySize = 64 << 10
	}
	cfg.RateLimits.NewNonce = cfg.RateLimits.NewNonce.withDefault(defaultNonceRate)
	cfg.RateLimits.NewAccount = cfg.RateLimits.NewAccount.withDefault(defaultAccountRate)
	cfg.RateLimits.NewOrder = cfg.RateLimits.NewOrder.withDefault(defaultOrderRate)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &WFE{cfg: cfg, ra: authority, logger: cfg.Logger, base: u,
		limNonce: cfg.RateLimits.NewNonce.limiter(), limAccount: cfg.RateLimits.NewAccount.limiter(),
		limOrder: cfg.RateLimits.NewOrder.limiter()}
	if cfg.LocalNonces {
		if f.nonces, err = newLocalNonces(cfg.UsedNonceLimit, cfg.Now); err != nil {
			return nil, err
		}
	} else {
		f.nonces = &storedNonces{store: store, sealer: sealer, now: f.now}
	}
	f.handler = f.routes()
	return f, nil
}

// Handler serves the ACME API under the path of Config.BaseURL.
func (f *WFE) Handler() http.Handler { return f.handler }

// reqCtx is one request with the provisioner its path named.
type reqCtx struct {
	w      http.ResponseWriter
	r      *http.Request
	prov   *ra.Provisioner
	prefix string // base URL, + "/NAME" for a named provisioner
}

func (rc *reqCtx) url(parts ...string) string {
	return rc.prefix + "/" + strings.Join(parts, "/")
}

// keyMode says how a request must name its key (RFC 8555 §6.2).
type keyMode int

const (
	keyKID    keyMode = iota // kid: an existing account
	keyJWK                   // jwk: newAccount
	keyEither                // revokeCert: an account or the certificate's key
)

// routes registers every resource for the default provisioner at the base
// path and for each provisioner under base/NAME, as literal patterns:
// provisioner names are never resource names, so no two patterns overlap.
func (f *WFE) routes() http.Handler {
	mux := http.NewServeMux()
	basePath := strings.TrimSuffix(f.base.Path, "/")
	def, _ := f.ra.Provisioner("")
	f.mount(mux, basePath, f.cfg.BaseURL, def)
	for _, p := range f.ra.Provisioners() {
		f.mount(mux, basePath+"/"+p.Name, f.cfg.BaseURL+"/"+p.Name, p)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rc := &reqCtx{w: w, r: r, prov: def, prefix: f.cfg.BaseURL}
		rest, _ := strings.CutPrefix(r.URL.Path, basePath+"/")
		if first, _, more := strings.Cut(rest, "/"); more && !Reserved(first) {
			if _, err := f.ra.Provisioner(first); err != nil {
				f.writeProblem(rc, notFound("no such provisioner %q", first))
				return
			}
		}
		f.writeProblem(rc, notFound("no such resource"))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		mux.ServeHTTP(w, r)
	})
}

// mount registers one provisioner's resources under path.
func (f *WFE) mount(mux *http.ServeMux, path, prefix string, p *ra.Provisioner) {
	rc := func(w http.ResponseWriter, r *http.Request) *reqCtx {
		return &reqCtx{w: w, r: r, prov: p, prefix: prefix}
	}
	get := func(name string, lim *ratelimit.Limiter, h func(*reqCtx)) {
		mux.HandleFunc("GET "+path+"/"+name, func(w http.ResponseWriter, r *http.Request) {
			rc := rc(w, r)
			if err := f.rateLimit(rc, lim, name); err != nil {
				f.writeProblem(rc, err)
				return
			}
			h(rc)
		})
	}
	post := func(name string, lim *ratelimit.Limiter, mode keyMode, h func(*reqCtx, *request) error) {
		pattern := path + "/" + name
		mux.HandleFunc("POST "+pattern, func(w http.ResponseWriter, r *http.Request) {
			rc := rc(w, r)
			if err := f.rateLimit(rc, lim, strings.Split(name, "/")[0]); err != nil {
				f.writeProblem(rc, err)
				return
			}
			f.post(rc, mode, h)
		})
		// Any other method on a POST resource: 405 with Allow (RFC 8555
		// §6.3 makes every fetch a POST-as-GET).
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			rc := rc(w, r)
			w.Header().Set("Allow", "POST")
			f.writeProblem(rc, prob(http.StatusMethodNotAllowed, "malformed", "method %s not allowed", r.Method))
		})
	}
	get("directory", nil, f.directory)
	get("new-nonce", f.limNonce, f.newNonce)
	get("renewal-info/{id}", nil, f.renewalInfo)
	post("new-account", f.limAccount, keyJWK, f.newAccount)
	post("new-order", f.limOrder, keyKID, f.newOrder)
	post("revoke-cert", nil, keyEither, f.revokeCert)
	post("key-change", nil, keyKID, f.keyChange)
	post("acct/{id}", nil, keyKID, f.account)
	post("orders/{id}", nil, keyKID, f.orders)
	post("order/{id}", nil, keyKID, f.order)
	post("order/{id}/finalize", nil, keyKID, f.finalize)
	post("authz/{id}", nil, keyKID, f.authz)
	post("chall/{authz}/{type}", nil, keyKID, f.challenge)
	post("cert/{serial}", nil, keyKID, f.certificate)
	post("cert/{serial}/{alt}", nil, keyKID, f.certificate)
}

// rateLimit applies a per-client-IP limit (nil: none) before any other
// work, JWS verification included, so a flood costs neither storage nor
// signature checks. Retry-After comes from the limiter's state.
func (f *WFE) rateLimit(rc *reqCtx, l *ratelimit.Limiter, name string) error {
	ok, wait := l.Allow(ratelimit.SourceKey(rc.r.RemoteAddr))
	if ok {
		return nil
	}
	return &rateLimited{problem: *prob(http.StatusTooManyRequests, "rateLimited",
		"too many %s requests from your address; retry after %s", name, max(wait, defaultRetryAfter).Round(time.Second)), wait: wait}
}

// ---- responses

// addNonce sets Replay-Nonce; a failure to store one is logged and the
// header left out (the client then asks new-nonce).
func (f *WFE) addNonce(rc *reqCtx) {
	n, err := f.makeNonce(rc.r.Context())
	if err != nil {
		f.logger.ErrorContext(rc.r.Context(), "acme: making nonce", "error", err)
		return
	}
	rc.w.Header().Set("Replay-Nonce", n)
}

func (f *WFE) headers(rc *reqCtx) {
	rc.w.Header().Add("Link", link(rc.url("directory"), "index"))
	f.addNonce(rc)
}

func link(u, rel string) string { return "<" + u + `>;rel="` + rel + `"` }

// reply sends v as JSON with status.
func (f *WFE) reply(rc *reqCtx, status int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		f.writeProblem(rc, fmt.Errorf("encoding response: %w", err))
		return
	}
	f.headers(rc)
	rc.w.Header().Set("Content-Type", "application/json")
	rc.w.WriteHeader(status)
	if rc.r.Method != http.MethodHead {
		_, _ = rc.w.Write(body)
	}
}

func (f *WFE) now() time.Time { return f.cfg.Now().UTC().Truncate(time.Second) }

// ---- authenticated POST

// request is an authenticated ACME request.
type request struct {
	payload []byte
	postGet bool             // empty payload: POST-as-GET
	jwk     *jose.JSONWebKey // the signing key
	account *ra.Account      // the signing account (kid requests)
	url     string
}

// post authenticates a POST and calls h.
func (f *WFE) post(rc *reqCtx, mode keyMode, h func(*reqCtx, *request) error) {
	req, err := f.authenticate(rc, mode)
	if err == nil {
		err = h(rc, req)
	}
	if err != nil {
		f.writeProblem(rc, err)
	}
}

func (f *WFE) authenticate(rc *reqCtx, mode keyMode) (*request, error) {
	r := rc.r
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/jose+json" {
		return nil, prob(http.StatusUnsupportedMediaType, "malformed", "Content-Type must be application/jose+json")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, f.cfg.MaxBodySize+1))
	if err != nil {
		return nil, malformed("reading body: %v", err)
	}
	if int64(len(body)) > f.cfg.MaxBodySize {
		return nil, prob(http.StatusRequestEntityTooLarge, "malformed", "request body larger than %d bytes", f.cfg.MaxBodySize)
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
	want := f.requestURL(rc)
	if jws.url != want {
		return nil, unauthorized("JWS url header %q does not match the request URL %q", jws.url, want)
	}
	req := &request{url: want}
	if jws.jwk != nil {
		req.jwk = jws.jwk
	} else {
		id, ok := strings.CutPrefix(jws.kid, rc.url("acct")+"/")
		if !ok || id == "" || strings.Contains(id, "/") {
			return nil, prob(http.StatusBadRequest, "accountDoesNotExist", "kid %q is not an account URL of this directory", jws.kid)
		}
		if req.account, err = f.ra.Account(r.Context(), rc.prov, id); err != nil {
			return nil, err
		}
		if req.jwk, err = ra.UnmarshalKey(req.account.Key); err != nil {
			return nil, fmt.Errorf("loading account key: %w", err)
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
	if err := f.useNonce(r.Context(), jws.nonce); err != nil {
		if errors.Is(err, errBadNonce) {
			return nil, prob(http.StatusBadRequest, "badNonce", "%v", err)
		}
		return nil, fmt.Errorf("checking nonce: %w", err)
	}
	req.payload = payload
	req.postGet = len(payload) == 0
	return req, nil
}

// requestURL is the URL the client addressed, built from the configured
// base (the handler may sit behind a proxy or another listener).
func (f *WFE) requestURL(rc *reqCtx) string {
	return f.base.Scheme + "://" + f.base.Host + rc.r.URL.EscapedPath()
}
