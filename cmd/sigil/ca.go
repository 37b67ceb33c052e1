package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"go.step.sm/crypto/pemutil"
)

// caCall runs fn with a CA client (see connCall).
func caCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, nargs int, fn func(ctx context.Context, c sigilv1.CAServiceClient) error) error {
	return connCall(ctx, fs, cf, args, nargs, func(ctx context.Context, conn *grpc.ClientConn) error {
		return fn(ctx, sigilv1.NewCAServiceClient(conn))
	})
}

func runCARoot(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca root", "sigil ca root [--format text|json]")
	cf.register(fs, env)
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		b, err := c.GetRoot(ctx, &sigilv1.GetRootRequest{})
		if err != nil {
			return err
		}
		return printBundle(&cf, b.GetPem())
	})
}

func runCAChain(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca chain", "sigil ca chain [--format text|json]")
	cf.register(fs, env)
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		b, err := c.GetChain(ctx, &sigilv1.GetChainRequest{})
		if err != nil {
			return err
		}
		return printBundle(&cf, b.GetPem())
	})
}

// printBundle prints PEM certificates as they are, or as JSON with each
// certificate's subject, serial, expiry and SHA-256 fingerprint (the value
// `sigil ca bootstrap --fingerprint` checks).
func printBundle(cf *clientFlags, bundle string) error {
	type cert struct {
		Subject     string    `json:"subject"`
		Serial      string    `json:"serial"`
		NotAfter    time.Time `json:"not_after"`
		Fingerprint string    `json:"fingerprint_sha256"`
		PEM         string    `json:"pem"`
	}
	out := []cert{}
	certs, err := pemutil.ParseCertificateBundle([]byte(bundle))
	if err != nil {
		return fmt.Errorf("server sent an unparsable certificate bundle: %w", err)
	}
	for _, c := range certs {
		out = append(out, cert{c.Subject.String(), c.SerialNumber.Text(16), c.NotAfter.UTC(), fingerprint(c.Raw), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))})
	}
	return cf.output(out, func(w io.Writer) error {
		_, err := io.WriteString(w, bundle)
		return err
	})
}

// maxCSRFile bounds what the CLI reads before sending; the server bounds it too.
const maxCSRFile = 1 << 20

// minCertTTL mirrors the CA's minimum (ca.MinTTL), so a unit slip such as
// --ttl 1ns is refused here with the flag's name instead of becoming 0
// seconds, which means "the profile default".
const minCertTTL = time.Minute

// readCSR reads a CSR file, or stdin for "-", bounded by maxCSRFile.
func readCSR(env *cliEnv, path string) ([]byte, error) {
	var r io.Reader = env.stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	csr, err := io.ReadAll(io.LimitReader(r, maxCSRFile+1))
	if err != nil {
		return nil, err
	}
	if len(csr) > maxCSRFile {
		return nil, fmt.Errorf("CSR %s is larger than %d bytes", path, maxCSRFile)
	}
	return csr, nil
}

func runCASign(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca sign", "sigil ca sign --csr FILE [--profile P] [--ttl D]  (PEM chain on stdout)")
	cf.register(fs, env)
	csrPath := fs.String("csr", "", "CSR file (PEM or DER); - for stdin")
	profile := fs.String("profile", "server", "signing profile (leaf profiles only; subordinate CAs: sigil ca sign-intermediate)")
	ttl := ttlFlag(fs, "ttl", 0, minCertTTL, maxCertTTL, "certificate lifetime, at least 1m (default: the profile's; above its maximum: capped, with a warning)")
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		if *csrPath == "" {
			return usagef("--csr is required")
		}
		secs := int64(*ttl / time.Second)
		csr, err := readCSR(env, *csrPath)
		if err != nil {
			return err
		}
		sent := time.Now()
		resp, err := c.Sign(ctx, &sigilv1.SignRequest{Csr: csr, Profile: *profile, TtlSeconds: secs})
		if err != nil {
			return err
		}
		return printSigned(&cf, resp, *ttl, sent)
	})
}

func runCASignIntermediate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca sign-intermediate",
		"sigil ca sign-intermediate --csr FILE --permitted-dns D [--permitted-dns D ...] [--permitted-ip CIDR ...] [--permitted-uri DOMAIN ...] [--profile P] [--ttl D]  (PEM chain on stdout; needs sudo on sys/ca/sign/PROFILE)")
	cf.register(fs, env)
	var dns, ips, uris stringList
	csrPath := fs.String("csr", "", "CSR file of the subordinate CA (PEM or DER); - for stdin")
	profile := fs.String("profile", "intermediate", "CA signing profile")
	ttl := ttlFlag(fs, "ttl", 0, minCertTTL, maxCertTTL, "certificate lifetime, at least 1m (default: the profile's)")
	fs.Var(&dns, "permitted-dns", "DNS domain the sub-CA may sign for, and names below it (\".example.org\": only below); repeatable")
	fs.Var(&ips, "permitted-ip", "CIDR the sub-CA may sign IP addresses in; repeatable")
	fs.Var(&uris, "permitted-uri", "host of the URIs the sub-CA may sign (a SPIFFE trust domain); repeatable")
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		if *csrPath == "" {
			return usagef("--csr is required")
		}
		if len(dns)+len(ips)+len(uris) == 0 {
			return usagef("give at least one --permitted-dns, --permitted-ip or --permitted-uri: a subordinate CA is always name-constrained")
		}
		secs := int64(*ttl / time.Second)
		csr, err := readCSR(env, *csrPath)
		if err != nil {
			return err
		}
		sent := time.Now()
		resp, err := c.SignIntermediate(ctx, &sigilv1.SignIntermediateRequest{Csr: csr, Profile: *profile, TtlSeconds: secs,
			PermittedDns: dns, PermittedIp: ips, PermittedUri: uris})
		if err != nil {
			return err
		}
		return printSigned(&cf, resp, *ttl, sent)
	})
}

// printSigned prints the chain (text) or its JSON view, warning on stderr
// when the server shortened the requested TTL.
func printSigned(cf *clientFlags, resp *sigilv1.SignResponse, ttl time.Duration, sent time.Time) error {
	view := map[string]any{
		"serial": resp.GetSerial(), "not_after": time.Unix(resp.GetNotAfterUnix(), 0).UTC(),
		"certificate": resp.GetCertificatePem(), "chain": resp.GetChainPem(),
	}
	ttlReport(cf.env.stderr, view, "--ttl", ttl, sent, resp.GetNotAfterUnix())
	return cf.output(view, func(w io.Writer) error {
		_, err := io.WriteString(w, resp.GetCertificatePem()+resp.GetChainPem())
		return err
	})
}

func runCAIssue(ctx context.Context, env *cliEnv, args []string) error {
	return issueWorkload(ctx, env, args, "ca issue", "sigil ca issue --spiffe-id ID --key-out F --cert-out F [--ttl D]")
}

func runIdentityRenew(ctx context.Context, env *cliEnv, args []string) error {
	return issueWorkload(ctx, env, args, "identity renew",
		"sigil identity renew --client-cert C --client-key K --spiffe-id ID --key-out F --cert-out F [--ttl D]")
}

// issueWorkload makes a key here and has the workload profile certify it:
// `ca issue` with a token, `identity renew` with the current SVID.
func issueWorkload(ctx context.Context, env *cliEnv, args []string, name, usage string) error {
	var cf clientFlags
	fs := newFlagSet(env, name, usage)
	cf.register(fs, env)
	spiffeID := fs.String("spiffe-id", "", "SPIFFE ID (spiffe://TRUST-DOMAIN/PATH)")
	keyOut := fs.String("key-out", "", "where to write the new private key (mode 0600)")
	certOut := fs.String("cert-out", "", "where to write the certificate and chain")
	ttl := ttlFlag(fs, "ttl", 0, minCertTTL, maxCertTTL, "certificate lifetime, capped by the profile (default: the profile's)")
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		if *spiffeID == "" || *keyOut == "" || *certOut == "" {
			return usagef("--spiffe-id, --key-out and --cert-out are required")
		}
		secs := int64(*ttl / time.Second)
		key, csr, err := newWorkloadCSR(*spiffeID)
		if err != nil {
			return err
		}
		sent := time.Now()
		resp, err := c.Sign(ctx, &sigilv1.SignRequest{Csr: csr, Profile: "workload", TtlSeconds: secs})
		if err != nil {
			return err
		}
		if err := writeKeyAndCert(*keyOut, *certOut, key, resp.GetCertificatePem()+resp.GetChainPem()); err != nil {
			return err
		}
		notAfter := time.Unix(resp.GetNotAfterUnix(), 0).UTC()
		view := map[string]any{"serial": resp.GetSerial(), "spiffe_id": *spiffeID,
			"not_after": notAfter, "key_file": *keyOut, "cert_file": *certOut}
		ttlReport(env.stderr, view, "--ttl", *ttl, sent, resp.GetNotAfterUnix())
		return cf.output(view, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "issued %s serial %s, expires %s\n", *spiffeID, resp.GetSerial(), notAfter.Format(time.RFC3339))
			return err
		})
	})
}

// writeNew writes a file with mode perm, replacing any existing one.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// revocationReasons maps RFC 5280 CRLReason names to codes.
var revocationReasons = map[string]int32{
	"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
	"superseded": 4, "cessationOfOperation": 5, "certificateHold": 6,
	"removeFromCRL": 8, "privilegeWithdrawn": 9, "aACompromise": 10,
}

func parseReason(s string) (int32, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 10 || n == 7 {
			return 0, usagef("--reason %d is not an RFC 5280 reason code", n)
		}
		return int32(n), nil
	}
	for name, code := range revocationReasons {
		if strings.EqualFold(name, s) {
			return code, nil
		}
	}
	return 0, usagef("--reason %q: use a code 0-10 or a name such as keyCompromise, superseded, cessationOfOperation", s)
}

func runCARevoke(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca revoke", "sigil ca revoke [--reason R] SERIAL")
	cf.register(fs, env)
	reason := fs.String("reason", "unspecified", "RFC 5280 reason (name or code)")
	return caCall(ctx, fs, &cf, args, 1, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		code, err := parseReason(*reason)
		if err != nil {
			return err
		}
		serial := strings.ToLower(strings.ReplaceAll(fs.Arg(0), ":", ""))
		if _, err := c.Revoke(ctx, &sigilv1.RevokeRequest{Serial: serial, Reason: code}); err != nil {
			return err
		}
		return cf.output(map[string]any{"serial": serial, "revoked": true, "reason": code}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "revoked %s\n", serial)
			return err
		})
	})
}

func runCAList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca list", "sigil ca list [--expiring-within D] [--revoked] [--name N]")
	cf.register(fs, env)
	within := ttlFlag(fs, "expiring-within", 0, minTTL, 100*year, "only certificates expiring within this duration")
	revoked := fs.Bool("revoked", false, "only revoked certificates")
	name := fs.String("name", "", "only certificates with this name")
	limit := fs.Int("limit", 0, "stop after this many certificates (0: all)")
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		var all []*sigilv1.CertificateInfo
		page := ""
		for {
			resp, err := c.ListCertificates(ctx, &sigilv1.ListCertificatesRequest{
				ExpiringWithinSeconds: int64(within.Seconds()), RevokedOnly: *revoked, Name: *name, PageToken: page, PageSize: 500,
			})
			if err != nil {
				return err
			}
			all = append(all, resp.GetCertificates()...)
			page = resp.GetNextPageToken()
			if page == "" || (*limit > 0 && len(all) >= *limit) {
				break
			}
		}
		if *limit > 0 && len(all) > *limit {
			all = all[:*limit]
		}
		type row struct {
			Serial    string    `json:"serial"`
			Subject   string    `json:"subject"`
			Names     []string  `json:"names"`
			NotAfter  time.Time `json:"not_after"`
			Profile   string    `json:"profile"`
			Status    string    `json:"status"`
			Requester string    `json:"requester"`
		}
		rows := []row{}
		for _, ci := range all {
			rows = append(rows, row{ci.GetSerial(), ci.GetSubject(), ci.GetNames(), time.Unix(ci.GetNotAfterUnix(), 0).UTC(), ci.GetProfile(), ci.GetStatus(), ci.GetRequester()})
		}
		return cf.output(rows, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERIAL\tSTATUS\tPROFILE\tNOT AFTER\tNAMES")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Serial, r.Status, r.Profile, r.NotAfter.Format(time.RFC3339), strings.Join(r.Names, ","))
			}
			return tw.Flush()
		})
	})
}

func runCACRL(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca crl", "sigil ca crl [--issuer ID] [--shard N] [--out FILE]")
	cf.register(fs, env)
	issuer := fs.String("issuer", "", "issuer ID (default: the active intermediate)")
	shard := fs.Int("shard", 0, "CRL shard")
	out := fs.String("out", "", "write the DER CRL here instead of stdout")
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		resp, err := c.GetCRL(ctx, &sigilv1.GetCRLRequest{IssuerId: *issuer, Shard: int32(*shard)})
		if err != nil {
			return err
		}
		if *out != "" {
			if err := writeNew(*out, resp.GetCrlDer(), 0o644); err != nil {
				return err
			}
		}
		view := map[string]any{"crl_der": resp.GetCrlDer()}
		if *out != "" {
			view = map[string]any{"file": *out, "bytes": len(resp.GetCrlDer())}
		}
		return cf.output(view, func(w io.Writer) error {
			if *out != "" {
				return nil
			}
			_, err := w.Write(resp.GetCrlDer())
			return err
		})
	})
}

func runCAInit(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca init", "sigil ca init [--common-name CN] [--organization O] [--key-type T] [--root-ttl D] [--intermediate-ttl D]")
	cf.register(fs, env)
	cn := fs.String("common-name", "", "CA common name (default: ca.common_name of the server)")
	org := fs.String("organization", "", "CA organization")
	keyType := fs.String("key-type", "ecdsa-p256", "CA key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519")
	rootTTL := ttlFlag(fs, "root-ttl", 0, time.Hour, maxCATTL, "root lifetime (default 10 years)")
	intTTL := ttlFlag(fs, "intermediate-ttl", 0, time.Hour, maxCATTL, "intermediate lifetime (default 3 years)")
	external := fs.Bool("external-root", false, "create only the intermediate key and print its CSR for an external root to sign; install the result with sigil ca intermediate import")
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		req := &sigilv1.CAInitRequest{CommonName: *cn, Organization: *org, KeyType: *keyType,
			RootTtlSeconds: int64(rootTTL.Seconds()), IntermediateTtlSeconds: int64(intTTL.Seconds())}
		if *external {
			resp, err := c.CreateIntermediateCSR(ctx, req)
			if err != nil {
				return err
			}
			return cf.output(map[string]any{"csr": resp.GetCsrPem()}, func(w io.Writer) error {
				// stdout is the CSR alone (README: > int.csr); the summary
				// goes to stderr.
				fmt.Fprintln(env.stderr, "created the intermediate key; its CSR follows: have the external root sign it, then run sigil ca intermediate import CHAIN.pem")
				_, err := io.WriteString(w, resp.GetCsrPem())
				return err
			})
		}
		resp, err := c.Init(ctx, req)
		if err != nil {
			return err
		}
		if cf.format == "json" || cf.field != "" {
			return printBundle(&cf, resp.GetChainPem())
		}
		return printCAInit(env.stdout, resp.GetChainPem())
	})
}

// printCAInit is ca init's text output: what was created, one summary line
// like the other commands', then the chain PEM (intermediate first).
func printCAInit(w io.Writer, bundle string) error {
	certs, err := pemutil.ParseCertificateBundle([]byte(bundle))
	if err != nil || len(certs) == 0 {
		return fmt.Errorf("server sent an unparsable certificate bundle: %v", err)
	}
	describe := func(c *x509.Certificate) string {
		return fmt.Sprintf("%q (serial %s, expires %s)", c.Subject.String(), c.SerialNumber.Text(16), c.NotAfter.UTC().Format(time.RFC3339))
	}
	line := "initialised the CA: root " + describe(certs[len(certs)-1])
	if len(certs) > 1 {
		line += ", intermediate " + describe(certs[0])
	}
	if _, err := fmt.Fprintf(w, "%s\n\n", line); err != nil {
		return err
	}
	_, err = io.WriteString(w, bundle)
	return err
}

func printIssuers(cf *clientFlags, list []*sigilv1.IssuerInfo) error {
	type row struct {
		ID       string    `json:"id"`
		Kind     string    `json:"kind"`
		Active   bool      `json:"active"`
		Subject  string    `json:"subject"`
		NotAfter time.Time `json:"not_after"`
	}
	rows := []row{}
	for _, is := range list {
		rows = append(rows, row{is.GetId(), is.GetKind(), is.GetActive(), is.GetSubject(), time.Unix(is.GetNotAfterUnix(), 0).UTC()})
	}
	return cf.output(rows, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tACTIVE\tNOT AFTER\tSUBJECT")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\n", r.ID, r.Kind, r.Active, r.NotAfter.Format(time.RFC3339), r.Subject)
		}
		return tw.Flush()
	})
}

func runCAIssuers(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca issuers", "sigil ca issuers")
	cf.register(fs, env)
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		resp, err := c.ListIssuers(ctx, &sigilv1.ListIssuersRequest{})
		if err != nil {
			return err
		}
		return printIssuers(&cf, resp.GetIssuers())
	})
}

func runCAIntermediateImport(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca intermediate import", "sigil ca intermediate import CHAIN.pem  (intermediate first, root last)")
	cf.register(fs, env)
	return caCall(ctx, fs, &cf, args, 1, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer f.Close()
		chain, err := io.ReadAll(io.LimitReader(f, maxCSRFile+1))
		if err != nil {
			return err
		}
		if len(chain) > maxCSRFile {
			return fmt.Errorf("%s is larger than %d bytes", fs.Arg(0), maxCSRFile)
		}
		is, err := c.ImportIntermediate(ctx, &sigilv1.ImportIntermediateRequest{ChainPem: chain})
		if err != nil {
			return err
		}
		return printIssuers(&cf, []*sigilv1.IssuerInfo{is})
	})
}

func runCAIntermediateRotate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca intermediate rotate", "sigil ca intermediate rotate")
	cf.register(fs, env)
	return caCall(ctx, fs, &cf, args, 0, func(ctx context.Context, c sigilv1.CAServiceClient) error {
		is, err := c.RotateIntermediate(ctx, &sigilv1.RotateIntermediateRequest{})
		if err != nil {
			return err
		}
		return printIssuers(&cf, []*sigilv1.IssuerInfo{is})
	})
}

func runCAIntermediateRevoke(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ca intermediate revoke",
		"sigil ca intermediate revoke [--reason R] [--rotate | --force] (ISSUER-ID | --serial SERIAL)  (needs sudo on sys/ca/hierarchy)")
	cf.register(fs, env)
	reason := fs.String("reason", "unspecified", "RFC 5280 reason (name or code), e.g. keyCompromise, cACompromise, superseded")
	serial := fs.String("serial", "", "serial of a CA certificate to revoke, e.g. a subordinate CA from sign-intermediate")
	rotate := fs.Bool("rotate", false, "if it is the active intermediate: sign a new one with the root first")
	force := fs.Bool("force", false, "if it is the active intermediate: revoke it without a replacement (issuance stops)")
	return call(ctx, fs, &cf, args, 0, 1, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		if (fs.NArg() == 1) == (*serial != "") {
			return usagef("name the issuer by ID (see `sigil ca issuers`) or give --serial, not both")
		}
		if *rotate && *force {
			return usagef("--rotate and --force exclude each other")
		}
		code, err := parseReason(*reason)
		if err != nil {
			return err
		}
		req := &sigilv1.RevokeIssuerRequest{IssuerId: fs.Arg(0), Reason: code, Rotate: *rotate, Force: *force}
		if *serial != "" {
			req.Serial = strings.ToLower(strings.ReplaceAll(*serial, ":", ""))
		}
		resp, err := sigilv1.NewCAServiceClient(conn).RevokeIssuer(ctx, req)
		if err != nil {
			return err
		}
		view := map[string]any{"serial": resp.GetSerial(), "issuer_id": resp.GetIssuerId()}
		if ni := resp.GetNewIssuer(); ni != nil {
			view["new_issuer_id"] = ni.GetId()
		} else if *force {
			fmt.Fprintln(env.stderr, "warning: no active intermediate is usable: issuance is refused until one is installed (`sigil ca intermediate rotate` or `import`)")
		}
		return cf.output(view, func(w io.Writer) error {
			what := "CA certificate " + resp.GetSerial()
			if resp.GetIssuerId() != "" {
				what = fmt.Sprintf("issuer %s (serial %s)", resp.GetIssuerId(), resp.GetSerial())
			}
			fmt.Fprintf(w, "revoked %s\n", what)
			if ni := resp.GetNewIssuer(); ni != nil {
				fmt.Fprintf(w, "active intermediate is now %s\n", ni.GetId())
			}
			return nil
		})
	})
}
