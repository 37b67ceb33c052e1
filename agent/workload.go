package agent

import (
	"context"
	"encoding/pem"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-ca/sigil/registration"
)

// workloadAPI is the SPIFFE Workload API over the agent's cache.
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	a *Agent
}

func registerWorkloadAPI(s *grpc.Server, a *Agent) {
	workload.RegisterSpiffeWorkloadAPIServer(s, workloadAPI{a: a})
}

func pemToDER(b []byte) []byte {
	var out []byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, blk.Bytes...)
		}
	}
}

// caller checks the security header and attests the caller, returning the
// entries it matches; none is PermissionDenied.
func (w workloadAPI) caller(ctx context.Context, spiffeID string) ([]*registration.Entry, *process, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return nil, nil, status.Error(codes.InvalidArgument, "security header missing from request: workload.spiffe.io: true")
	}
	p, err := attest(ctx, w.a.cfg.ProcRoot)
	if err != nil {
		w.a.log.Warn("workload attestation failed", "err", err)
		return nil, nil, status.Error(codes.PermissionDenied, "workload attestation failed")
	}
	w.a.st.mu.RLock()
	var out []*registration.Entry
	for _, e := range w.a.st.entries {
		if spiffeID != "" && e.SPIFFEID != spiffeID {
			continue
		}
		if p.matches(e) {
			out = append(out, e)
		}
	}
	w.a.st.mu.RUnlock()
	if len(out) == 0 {
		w.a.log.Warn("no registration entry matches the caller", "pid", p.pid, "uid", p.uid, "gid", p.gid, "exe", p.exe)
		return nil, nil, status.Errorf(codes.PermissionDenied, "no identity issued: no registration entry matches this process (uid %d, %s)", p.uid, p.exe)
	}
	slices.SortFunc(out, func(a, b *registration.Entry) int {
		if a.SPIFFEID != b.SPIFFEID {
			if a.SPIFFEID < b.SPIFFEID {
				return -1
			}
			return 1
		}
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	return out, p, nil
}

// x509Response builds the response for the matched entries from the cache,
// with ok false when none has an SVID yet.
func (w workloadAPI) x509Response(matched []*registration.Entry) (*workload.X509SVIDResponse, <-chan struct{}, bool) {
	st := w.a.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	resp := &workload.X509SVIDResponse{}
	var bundle []byte
	if st.x509 != nil {
		for _, c := range st.x509.X509Authorities() {
			bundle = append(bundle, c.Raw...)
		}
	}
	now := time.Now()
	for _, e := range matched {
		c, ok := st.svids[e.ID]
		if !ok || !now.Before(c.svid.Certificates[0].NotAfter) {
			continue // not minted yet, or expired during an outage
		}
		var chain []byte
		for _, cert := range c.svid.Certificates {
			chain = append(chain, cert.Raw...)
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{SpiffeId: c.svid.ID.String(), X509Svid: chain, X509SvidKey: c.keyDER, Bundle: bundle})
	}
	return resp, st.changed, len(resp.Svids) > 0
}

func (w workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	var last *workload.X509SVIDResponse
	for {
		matched, _, err := w.caller(ctx, "")
		if err != nil {
			return err
		}
		resp, changed, ok := w.x509Response(matched)
		if ok && (last == nil || !sameSVIDs(last, resp)) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = resp
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(w.a.cfg.SyncInterval):
		}
	}
}

func sameSVIDs(a, b *workload.X509SVIDResponse) bool {
	if len(a.Svids) != len(b.Svids) {
		return false
	}
	for i := range a.Svids {
		if string(a.Svids[i].X509Svid) != string(b.Svids[i].X509Svid) || string(a.Svids[i].Bundle) != string(b.Svids[i].Bundle) {
			return false
		}
	}
	return true
}

func (w workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := stream.Context()
	var last []byte
	for {
		if _, _, err := w.caller(ctx, ""); err != nil {
			return err
		}
		st := w.a.st
		st.mu.RLock()
		var der []byte
		if st.x509 != nil {
			for _, c := range st.x509.X509Authorities() {
				der = append(der, c.Raw...)
			}
		}
		td, changed := st.td, st.changed
		st.mu.RUnlock()
		if len(der) > 0 && string(der) != string(last) {
			if err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{td.IDString(): der}}); err != nil {
				return err
			}
			last = der
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(w.a.cfg.SyncInterval):
		}
	}
}

func (w workloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	matched, _, err := w.caller(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	resp := &workload.JWTSVIDResponse{}
	for _, e := range matched {
		tok, err := w.jwt(ctx, e, req.GetAudience())
		if err != nil {
			return nil, err
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: e.SPIFFEID, Svid: tok})
	}
	return resp, nil
}

// jwt returns a JWT-SVID for entry e and audience: a cached one until half
// its lifetime, a new one from the server after that, and the cached one
// again (until it expires) while the server cannot be reached.
func (w workloadAPI) jwt(ctx context.Context, e *registration.Entry, audience []string) (string, error) {
	aud := slices.Sorted(slices.Values(audience))
	key := e.ID + "\x00" + strings.Join(aud, "\x00")
	st := w.a.st
	now := time.Now()
	st.mu.RLock()
	c, ok := st.jwts[key]
	st.mu.RUnlock()
	if ok && now.Before(c.renewAt) {
		return c.token, nil
	}
	tok, exp, err := w.a.mintJWT(ctx, e, aud)
	if err != nil {
		if ok && now.Before(c.exp) {
			w.a.log.Warn("mint JWT-SVID failed; serving the cached one", "entry", e.ID, "err", err)
			return c.token, nil
		}
		w.a.log.Warn("mint JWT-SVID failed", "entry", e.ID, "err", err)
		return "", status.Errorf(codes.Unavailable, "could not mint a JWT-SVID for %s: %v", e.SPIFFEID, status.Convert(err).Message())
	}
	st.mu.Lock()
	if len(st.jwts) >= maxCachedJWTs {
		for k, v := range st.jwts {
			if !now.Before(v.exp) {
				delete(st.jwts, k)
			}
		}
	}
	if len(st.jwts) < maxCachedJWTs {
		st.jwts[key] = cachedJWT{token: tok, exp: exp, renewAt: now.Add(exp.Sub(now) / 2)}
	}
	st.mu.Unlock()
	return tok, nil
}

func (w workloadAPI) jwksBytes() (string, []byte, <-chan struct{}, error) {
	st := w.a.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.jwks == nil {
		return "", nil, st.changed, nil
	}
	b, err := st.jwks.Marshal()
	return st.td.IDString(), b, st.changed, err
}

func (w workloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	ctx := stream.Context()
	var last []byte
	for {
		if _, _, err := w.caller(ctx, ""); err != nil {
			return err
		}
		td, b, changed, err := w.jwksBytes()
		if err != nil {
			return status.Errorf(codes.Internal, "JWT bundle: %v", err)
		}
		if b != nil && string(b) != string(last) {
			if err := stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{td: b}}); err != nil {
				return err
			}
			last = b
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(w.a.cfg.SyncInterval):
		}
	}
}

func (w workloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, _, err := w.caller(ctx, ""); err != nil {
		return nil, err
	}
	w.a.st.mu.RLock()
	jb := w.a.st.jwks
	w.a.st.mu.RUnlock()
	if jb == nil {
		return nil, status.Error(codes.Unavailable, "no JWT bundle yet")
	}
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), jb, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %v", err)
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "claims: %v", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}
