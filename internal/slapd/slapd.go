// Package slapd starts and stops a throwaway OpenLDAP server (the Debian
// slapd package) for tests: a slapd.conf and an mdb database in a temporary
// directory, a fixed test directory loaded with slapadd, plain LDAP (with
// StartTLS) and LDAPS on free loopback ports, with a server certificate
// from a CA made for this server only. Stop kills it and removes the
// directory. The core of the package does not import testing; ForTest
// wraps it for tests.
package slapd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrMissing is returned when slapd or its modules are not installed.
var ErrMissing = errors.New("OpenLDAP slapd not found (/usr/sbin/slapd, /usr/lib/ldap/back_mdb.so): run scripts/deps.sh (as root: apt-get install -y slapd ldap-utils)")

// The test directory. Passwords are fixed: the server is throwaway and
// only listens on loopback.
const (
	BaseDN     = "dc=sigil,dc=test"
	PeopleDN   = "ou=people," + BaseDN
	GroupsDN   = "ou=groups," + BaseDN
	ServicesDN = "ou=services," + BaseDN

	// BindDN is a service account that may search people and groups.
	BindDN       = "cn=sigil-svc," + ServicesDN
	BindPassword = "svc-Pa55word"

	// alice is in ops and all; bob is in dev and all; carol (whose uid
	// needs escaping in both DNs and filters) is in ops.
	AlicePassword = "alice-Pa55word"
	BobPassword   = "bob-Pa55word"
	// CarolUID has characters special in DNs (, +) and filters (( ) *).
	CarolUID      = `carol,jr+(qa)*`
	CarolPassword = "carol-Pä55 wörd"

	// AdminUID is a user whose uid starts like "admin*" probes would.
	AdminUID      = "administrator"
	AdminPassword = "admin-Pa55word"
)

// Server is one running throwaway slapd.
type Server struct {
	dir   string
	cmd   *exec.Cmd
	done  chan struct{} // closed when slapd exits
	port  int
	sport int
	caPEM []byte
	log   *lockedBuffer

	stopOnce sync.Once
}

// URL is the plain LDAP URL (ldap://127.0.0.1:PORT), which offers StartTLS.
func (s *Server) URL() string { return "ldap://127.0.0.1:" + strconv.Itoa(s.port) }

// LDAPSURL is the LDAP over TLS URL (ldaps://127.0.0.1:PORT).
func (s *Server) LDAPSURL() string { return "ldaps://127.0.0.1:" + strconv.Itoa(s.sport) }

// CAPEM is the PEM of the CA that issued the server's certificate (valid
// for 127.0.0.1 and localhost).
func (s *Server) CAPEM() []byte { return bytes.Clone(s.caPEM) }

// Log returns what slapd printed so far.
func (s *Server) Log() string { return s.log.String() }

// UserDN is the DN of the test user with uid (escaped per RFC 4514).
func UserDN(uid string) string { return "uid=" + escapeDNValue(uid) + "," + PeopleDN }

// GroupDN is the DN of a test group.
func GroupDN(cn string) string { return "cn=" + cn + "," + GroupsDN }

// Start writes the configuration and the test directory, loads it and
// starts slapd in the foreground as a child process, killed if this
// process dies.
func Start(ctx context.Context) (_ *Server, err error) {
	for _, p := range []string{"/usr/sbin/slapd", "/usr/sbin/slapadd", "/usr/lib/ldap/back_mdb.so", "/etc/ldap/schema/core.schema"} {
		if _, err := os.Stat(p); err != nil {
			return nil, ErrMissing
		}
	}
	s := &Server{done: make(chan struct{}), log: &lockedBuffer{}}
	if s.dir, err = os.MkdirTemp("", "sigil-slapd-"); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if err := s.writeTLS(); err != nil {
		return nil, err
	}
	conf := filepath.Join(s.dir, "slapd.conf")
	if err := os.WriteFile(conf, []byte(s.config()), 0o600); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	if err := os.Mkdir(filepath.Join(s.dir, "db"), 0o700); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	ldif := filepath.Join(s.dir, "data.ldif")
	if err := os.WriteFile(ldif, []byte(directoryLDIF()), 0o600); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(sctx, "/usr/sbin/slapadd", "-q", "-f", conf, "-l", ldif).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("slapd: slapadd: %w\n%s", err, out)
	}

	// Free ports are found by binding and releasing them, so another
	// process may take one first: retry with new ones.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		if s.sport, err = freePort(); err != nil {
			return nil, err
		}
		if err = s.run(sctx, conf); err == nil {
			return s, nil
		}
		if attempt == 3 || sctx.Err() != nil {
			return nil, err
		}
	}
}

// run starts slapd and waits until both listeners accept connections.
func (s *Server) run(ctx context.Context, conf string) error {
	// -d 0 keeps slapd in the foreground (no daemonising), so it is our
	// child: Pdeathsig kills it if the test binary dies.
	cmd := exec.Command("/usr/sbin/slapd", "-d", "0", "-f", conf,
		"-h", s.URL()+"/ "+s.LDAPSURL()+"/")
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("slapd: start: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	for {
		if dialOK(s.port) && dialOK(s.sport) {
			s.cmd, s.done = cmd, done
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("slapd exited at start:\n%s", s.Log())
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("slapd: not listening: %w\n%s", ctx.Err(), s.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop kills slapd and removes its directory. It is safe to call twice.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil {
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		if s.dir != "" {
			_ = os.RemoveAll(s.dir)
		}
	})
}

// ForTest starts a server for t and stops it when t ends. A missing slapd
// fails the test (scripts/deps.sh installs it), so it is never mistaken for
// a pass.
func ForTest(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) config() string {
	return fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
# memberof defines the memberOf attribute and keeps it in step with groups.
moduleload memberof
pidfile %[1]s/slapd.pid
argsfile %[1]s/slapd.args
TLSCACertificateFile %[1]s/ca.pem
TLSCertificateFile %[1]s/server.pem
TLSCertificateKeyFile %[1]s/server.key
disallow bind_anon

database mdb
maxsize 33554432
suffix "%[2]s"
rootdn "cn=admin,%[2]s"
rootpw admin-%[3]s
directory %[1]s/db
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
# Users may only authenticate with their password; the service account and
# bound users may read everything else. Anonymous users get nothing.
access to attrs=userPassword
	by anonymous auth
	by * none
access to *
	by users read
	by * none
`, s.dir, BaseDN, rand.Text())
}

// directoryLDIF is the test directory. memberOf is written here because
// slapadd bypasses the overlay that would maintain it.
func directoryLDIF() string {
	var b strings.Builder
	entry := func(lines ...string) {
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		b.WriteByte('\n')
	}
	b64 := func(attr, v string) string { return attr + ":: " + base64.StdEncoding.EncodeToString([]byte(v)) }
	entry("dn: "+BaseDN, "objectClass: dcObject", "objectClass: organization", "dc: sigil", "o: Sigil test")
	for _, ou := range []string{"people", "groups", "services"} {
		entry("dn: ou="+ou+","+BaseDN, "objectClass: organizationalUnit", "ou: "+ou)
	}
	entry(b64("dn", BindDN), "objectClass: person", "cn: sigil-svc", "sn: svc", b64("userPassword", BindPassword))
	type user struct {
		uid, pw string
		groups  []string
	}
	users := []user{
		{"alice", AlicePassword, []string{"ops", "all"}},
		{"bob", BobPassword, []string{"dev", "all"}},
		{CarolUID, CarolPassword, []string{"ops"}},
		{AdminUID, AdminPassword, nil},
	}
	members := map[string][]string{}
	for _, u := range users {
		lines := []string{b64("dn", UserDN(u.uid)), "objectClass: inetOrgPerson", b64("uid", u.uid),
			b64("cn", u.uid), "sn: test", "mail: " + strings.Map(mailSafe, u.uid) + "@sigil.test", b64("userPassword", u.pw)}
		for _, g := range u.groups {
			lines = append(lines, "memberOf: "+GroupDN(g))
			members[g] = append(members[g], UserDN(u.uid))
		}
		entry(lines...)
	}
	for _, g := range []string{"ops", "dev", "all"} {
		lines := []string{"dn: " + GroupDN(g), "objectClass: groupOfNames", "cn: " + g}
		for _, m := range members[g] {
			lines = append(lines, b64("member", m))
		}
		entry(lines...)
	}
	return b.String()
}

func mailSafe(r rune) rune {
	if r >= 'a' && r <= 'z' {
		return r
	}
	return 'x'
}

// escapeDNValue escapes an RDN attribute value (RFC 4514 section 2.4).
func escapeDNValue(v string) string {
	var b strings.Builder
	for i, r := range v {
		switch {
		case strings.ContainsRune(`,+"\<>;=`, r),
			(i == 0 && (r == ' ' || r == '#')),
			(i == len(v)-1 && r == ' '):
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// writeTLS makes a CA for this server and a server certificate for
// 127.0.0.1 and localhost.
func (s *Server) writeTLS() error {
	caKey, caCert, caPEM, err := NewCA("sigil slapd test CA")
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("slapd: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("slapd: server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("slapd: %w", err)
	}
	s.caPEM = caPEM
	files := map[string][]byte{
		"ca.pem":     s.caPEM,
		"server.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"server.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(s.dir, name), b, 0o600); err != nil {
			return fmt.Errorf("slapd: %w", err)
		}
	}
	return nil
}

// NewCA makes a self-signed P-256 CA certificate. Tests use a second one
// as the wrong CA to pin.
func NewCA(name string) (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("slapd: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("slapd: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("slapd: %w", err)
	}
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("slapd: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func dialOK(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// lockedBuffer collects slapd's output; exec copies into it from its own
// goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
