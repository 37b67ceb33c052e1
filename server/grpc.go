package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
)

// authenticate finds the caller of a non-public method from the credential
// the early gate checked: core finishes that check (spending a use of a
// limited token, or looking the SVID up in the inventory) rather than
// repeating it.
func (s *Server) authenticate(ctx context.Context, method string) (context.Context, error) {
	if s.publicMethod(method) {
		return ctx, nil
	}
	ctx, r := withCall(ctx)
	caller, err := s.core.Authenticate(ctx, r.cred)
	if err != nil {
		return nil, err
	}
	r.Caller = caller
	return ctx, nil
}

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	if err := s.streamAuthz(ctx, info.FullMethod); err != nil {
		return err
	}
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// unaryRecover turns a handler panic into an Internal error instead of a
// crashed server, and logs the stack.
func (s *Server) unaryRecover(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "panic in gRPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = errs.New(errs.Internal, "panic")
		}
	}()
	return handler(ctx, req)
}

// reply is resp, or nil and err when err is set, so an adapter builds the
// wire response from a use case's result in one expression (conversions
// take nil results).
func reply[T any](resp *T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// onUnsealed runs f on the unsealed graph; op names the step in f's error.
func onUnsealed[T any](s *Server, op string, f func(*core.Unsealed) (*T, error)) (*T, error) {
	u, err := s.core.Unsealed()
	if err != nil {
		return nil, err
	}
	resp, err := f(u)
	return reply(resp, core.OpError(op, err))
}

type sysService struct {
	sigilv1.UnimplementedSysServiceServer
	s *Server
}

func (h sysService) Status(ctx context.Context, _ *sigilv1.StatusRequest) (*sigilv1.StatusResponse, error) {
	s := h.s
	st := s.core.Status()
	resp := &sigilv1.StatusResponse{
		Version:        s.version,
		StorageBackend: s.node.StorageBackend(),
		Custody:        s.node.Custody(),
		Initialized:    st.Initialized,
		Sealed:         st.Sealed(),
		// The threshold is shown unsealed too (how many operators a
		// re-seal will need); progress counts only while sealed.
		UnsealProgress: int32(st.Progress), UnsealThreshold: int32(st.Threshold),
		BuildRevision: s.build.Revision, BuildTime: s.build.BuildTime, GoVersion: s.build.GoVersion,
		ServerTimeUnix: time.Now().Unix(),
	}
	root, issuing := st.CA()
	if root != nil {
		resp.CaSubject, resp.CaNotAfterUnix = root.Subject.String(), root.NotAfter.Unix()
	}
	if issuing != nil {
		resp.IntermediateSubject, resp.IntermediateNotAfterUnix = issuing.Subject.String(), issuing.NotAfter.Unix()
	}
	return resp, nil
}

type caService struct {
	sigilv1.UnimplementedCAServiceServer
	s *Server
}

func pemBundle(certs ...*x509.Certificate) string { return ca.PEMCertificates(certs...) }

func (h caService) GetRoot(ctx context.Context, _ *sigilv1.GetRootRequest) (*sigilv1.CertificateBundle, error) {
	root, err := h.s.core.Root()
	if err != nil {
		return nil, err
	}
	return &sigilv1.CertificateBundle{Pem: pemBundle(root)}, nil
}

func (h caService) GetChain(ctx context.Context, _ *sigilv1.GetChainRequest) (*sigilv1.CertificateBundle, error) {
	chain, err := h.s.core.Chain()
	if err != nil {
		return nil, err
	}
	return &sigilv1.CertificateBundle{Pem: pemBundle(chain...)}, nil
}

func signResponse(issued *ca.Issued) *sigilv1.SignResponse {
	return &sigilv1.SignResponse{
		CertificatePem: pemBundle(issued.Certificate),
		ChainPem:       issued.IssuerChainPEM(),
		Serial:         issued.Record.Serial,
		NotAfterUnix:   issued.Certificate.NotAfter.Unix(),
		Warnings:       issued.Warnings,
	}
}

// Sign issues leaf certificates (core.Sign decides who may).
func (h caService) Sign(ctx context.Context, req *sigilv1.SignRequest) (*sigilv1.SignResponse, error) {
	// The success record commits with the certificate's inventory row.
	audited := successAudit(ctx, sigilv1.CAService_Sign_FullMethodName, req)
	issued, err := h.s.core.Sign(ctx, callerFrom(ctx), core.SignRequest{CSR: req.GetCsr(), Profile: req.GetProfile(), TTLSeconds: req.GetTtlSeconds(), Audit: audited})
	markAudited(ctx, audited)
	if err != nil {
		return nil, err
	}
	h.s.metrics.Issued()
	return signResponse(issued), nil
}

// SignIntermediate issues a name-constrained subordinate CA. It is
// administrative: sys/ca/sign/<profile>, which as a sys path needs sudo.
func (h caService) SignIntermediate(ctx context.Context, req *sigilv1.SignIntermediateRequest) (*sigilv1.SignResponse, error) {
	issued, err := h.s.core.SignIntermediate(ctx, callerFrom(ctx), ca.SubCARequest{CSR: req.GetCsr(), Profile: req.GetProfile(),
		Constraints: ca.NameConstraints{DNS: req.GetPermittedDns(), IPRanges: req.GetPermittedIp(), URIDomains: req.GetPermittedUri()}}, req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	h.s.metrics.Issued()
	return signResponse(issued), nil
}

func (h caService) Revoke(ctx context.Context, req *sigilv1.RevokeRequest) (*sigilv1.RevokeResponse, error) {
	if err := h.s.core.RevokeCertificate(ctx, req.GetSerial(), int(req.GetReason())); err != nil {
		return nil, err
	}
	return &sigilv1.RevokeResponse{}, nil
}

func (h caService) RevokeIssuer(ctx context.Context, req *sigilv1.RevokeIssuerRequest) (*sigilv1.RevokeIssuerResponse, error) {
	res, err := h.s.core.RevokeIssuer(ctx, ca.RevokeIssuerRequest{IssuerID: req.GetIssuerId(), Serial: req.GetSerial(),
		Reason: int(req.GetReason()), Rotate: req.GetRotate(), Force: req.GetForce()})
	if err != nil {
		return nil, err
	}
	resp := &sigilv1.RevokeIssuerResponse{Serial: res.Serial, IssuerId: res.IssuerID}
	if res.NewIssuer != nil {
		resp.NewIssuer = issuerInfo(*res.NewIssuer)
	}
	return resp, nil
}

func (h caService) ListCertificates(ctx context.Context, req *sigilv1.ListCertificatesRequest) (*sigilv1.ListCertificatesResponse, error) {
	certs, next, err := h.s.core.ListCertificates(ctx, core.CertQuery{Name: req.GetName(), RevokedOnly: req.GetRevokedOnly(),
		ExpiringWithin: time.Duration(max(0, req.GetExpiringWithinSeconds())) * time.Second, PageToken: req.GetPageToken(), PageSize: int(req.GetPageSize())})
	if err != nil {
		return nil, err
	}
	resp := &sigilv1.ListCertificatesResponse{NextPageToken: next}
	for _, c := range certs {
		resp.Certificates = append(resp.Certificates, certificateInfo(c))
	}
	return resp, nil
}

func certificateInfo(c *storage.Certificate) *sigilv1.CertificateInfo {
	info := &sigilv1.CertificateInfo{
		Serial: c.Serial, IssuerId: c.IssuerID, Subject: c.Subject,
		NotBeforeUnix: c.NotBefore.Unix(), NotAfterUnix: c.NotAfter.Unix(),
		Profile: c.Profile, Requester: c.Requester, Status: string(c.Status),
		RevocationReason: int32(c.Reason),
	}
	info.Names = append(append(append(append(info.Names, c.DNSNames...), c.IPs...), c.URIs...), c.Emails...)
	if !c.RevokedAt.IsZero() {
		info.RevokedAtUnix = c.RevokedAt.Unix()
	}
	return info
}

func (h caService) GetCRL(ctx context.Context, req *sigilv1.GetCRLRequest) (*sigilv1.GetCRLResponse, error) {
	der, err := h.s.core.CRL(ctx, req.GetIssuerId(), int(req.GetShard()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.GetCRLResponse{CrlDer: der}, nil
}

func (h caService) Init(ctx context.Context, req *sigilv1.CAInitRequest) (*sigilv1.CAInitResponse, error) {
	chain, err := h.s.core.InitCA(ctx, caInit(req))
	if err != nil {
		return nil, err
	}
	return &sigilv1.CAInitResponse{ChainPem: pemBundle(chain...)}, nil
}

func issuerInfo(is ca.IssuerInfo) *sigilv1.IssuerInfo {
	return &sigilv1.IssuerInfo{
		Id: is.ID, Kind: is.Kind, Active: is.Active, Subject: is.Certificate.Subject.String(),
		NotAfterUnix: is.Certificate.NotAfter.Unix(), CertificatePem: pemBundle(is.Certificate),
	}
}

// caInit is the wire CA init request as core takes it.
func caInit(req *sigilv1.CAInitRequest) core.CAInit {
	return core.CAInit{CommonName: req.GetCommonName(), Organization: req.GetOrganization(), KeyType: req.GetKeyType(),
		RootTTL:         time.Duration(req.GetRootTtlSeconds()) * time.Second,
		IntermediateTTL: time.Duration(req.GetIntermediateTtlSeconds()) * time.Second}
}

func (h caService) CreateIntermediateCSR(ctx context.Context, req *sigilv1.CAInitRequest) (*sigilv1.CreateIntermediateCSRResponse, error) {
	csr, err := h.s.core.IntermediateCSR(ctx, caInit(req))
	if err != nil {
		return nil, err
	}
	return &sigilv1.CreateIntermediateCSRResponse{CsrPem: string(csr)}, nil
}

func (h caService) ImportIntermediate(ctx context.Context, req *sigilv1.ImportIntermediateRequest) (*sigilv1.IssuerInfo, error) {
	return issuer(h.s.core.ImportIntermediate(ctx, req.GetChainPem()))
}

func (h caService) RotateIntermediate(ctx context.Context, _ *sigilv1.RotateIntermediateRequest) (*sigilv1.IssuerInfo, error) {
	return issuer(h.s.core.RotateIntermediate(ctx))
}

func issuer(is ca.IssuerInfo, err error) (*sigilv1.IssuerInfo, error) {
	if err != nil {
		return nil, err
	}
	return issuerInfo(is), nil
}

func (h caService) ListIssuers(ctx context.Context, _ *sigilv1.ListIssuersRequest) (*sigilv1.ListIssuersResponse, error) {
	list, err := h.s.core.Issuers()
	if err != nil {
		return nil, err
	}
	resp := &sigilv1.ListIssuersResponse{}
	for _, is := range list {
		resp.Issuers = append(resp.Issuers, issuerInfo(is))
	}
	return resp, nil
}
