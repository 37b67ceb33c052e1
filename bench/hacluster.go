package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// HAOptions start N production-mode `sigil server` nodes on one
// PostgreSQL database, unsealed the way an operator does it (and as
// e2e/ha_test.go does): the first node is initialised with one Shamir
// share, creates the CA, then every other node is unsealed with the share.
type HAOptions struct {
	Bin   string // the sigil binary
	Dir   string // scratch directory (listener TLS, node data)
	DSN   string // storage: a PostgreSQL URL shared by every node
	Nodes int    // at least 1
	// Log receives every node's stderr; nil discards it.
	Log io.Writer
}

// HANode is one running node.
type HANode struct {
	PID       int
	Addr      string // gRPC host:port
	HTTPSAddr string
	cmd       *exec.Cmd
	done      chan error
}

// HACluster is the running nodes. Conn.Addr lists every node's gRPC
// address, comma-separated: dialPool spreads connections across them.
type HACluster struct {
	Conn  SigilConn
	Nodes []*HANode
	http  *http.Client
}

// StartHACluster starts o.Nodes nodes and waits until each is unsealed
// and ready. On an error the nodes started are stopped.
func StartHACluster(ctx context.Context, o HAOptions) (_ *HACluster, err error) {
	if o.Nodes < 1 {
		return nil, fmt.Errorf("ha cluster: %d nodes: need at least 1", o.Nodes)
	}
	bin, err := filepath.Abs(o.Bin)
	if err != nil {
		return nil, fmt.Errorf("sigil binary: %w", err)
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("sigil binary (build it with `make build`): %w", err)
	}
	o.Bin = bin
	if o.Log == nil {
		o.Log = io.Discard
	}
	c := &HACluster{}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	crt, key, err := writeListenerTLS(o.Dir, c)
	if err != nil {
		return nil, err
	}
	var share string // the one unseal share; not kept past start-up
	defer func() { share = "" }()
	for i := range o.Nodes {
		n, err := startHANode(o, filepath.Join(o.Dir, fmt.Sprintf("node%d", i)), crt, key)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
		if err := c.wait(ctx, n, "/healthz"); err != nil {
			return nil, err
		}
		if i == 0 {
			out, err := c.cli(ctx, o.Bin, n, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
			if err != nil {
				return nil, err
			}
			var ir struct {
				Shares    []string `json:"shares"`
				RootToken string   `json:"root_token"`
			}
			if err := json.Unmarshal([]byte(out), &ir); err != nil || len(ir.Shares) != 1 || ir.RootToken == "" {
				return nil, fmt.Errorf("ha cluster: operator init printed no share and token (%v)", err)
			}
			share, c.Conn.Token = ir.Shares[0], ir.RootToken
		}
		if _, err := c.cli(ctx, o.Bin, n, "operator", "unseal", share); err != nil {
			return nil, err
		}
		if i == 0 {
			if _, err := c.cli(ctx, o.Bin, n, "ca", "init", "--common-name", "Sigil HA Bench CA"); err != nil {
				return nil, err
			}
		}
		if err := c.wait(ctx, n, "/readyz"); err != nil {
			return nil, err
		}
	}
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	c.Conn.Addr = strings.Join(addrs, ",")
	return c, nil
}

// startHANode starts one production-mode node on free loopback ports.
func startHANode(o HAOptions, data, crt, key string) (*HANode, error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("node data directory: %w", err)
	}
	addrs := make([]string, 3)
	for i := range addrs {
		var err error
		if addrs[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(o.Bin, "server", "--data", data, "--https-addr", addrs[0], "--grpc-addr", addrs[1], "--http-addr", addrs[2],
		"--tls-cert", crt, "--tls-key", key, "--storage", o.DSN)
	cmd.Stdout, cmd.Stderr = io.Discard, o.Log
	// Its own process group, so Ctrl-C reaches the harness first; ended
	// if the harness dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sigil node: %w", err)
	}
	n := &HANode{PID: cmd.Process.Pid, Addr: addrs[1], HTTPSAddr: addrs[0], cmd: cmd, done: make(chan error, 1)}
	go func() { n.done <- cmd.Wait() }()
	return n, nil
}

// wait polls https://node/path until it answers 200.
func (c *HACluster) wait(ctx context.Context, n *HANode, path string) error {
	deadline := time.Now().Add(60 * time.Second)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case err := <-n.done:
			n.done <- err
			return fmt.Errorf("sigil node %s exited before %s answered: %v", n.Addr, path, err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := c.http.Get("https://" + n.HTTPSAddr + path)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("sigil node %s: %s not ready within 60s: %s", n.Addr, path, last)
}

// cli runs the sigil CLI against one node and returns its stdout.
func (c *HACluster) cli(ctx context.Context, bin string, n *HANode, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, args...)
	env := []string{"SIGIL_ADDR=" + n.Addr, "SIGIL_CACERT=" + c.Conn.CACert}
	if c.Conn.Token != "" {
		env = append(env, "SIGIL_TOKEN="+c.Conn.Token)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGIL_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		// args[1] may be the share: name only the command.
		return "", fmt.Errorf("sigil %s %s on %s: %w: %s", args[0], args[1], n.Addr, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// PIDs are the nodes' process ids, in node order.
func (c *HACluster) PIDs() []int {
	p := make([]int, len(c.Nodes))
	for i, n := range c.Nodes {
		p[i] = n.PID
	}
	return p
}

// Stop ends every node (SIGTERM, then SIGKILL after 15 s) and waits.
func (c *HACluster) Stop() error {
	var errs []error
	for _, n := range c.Nodes {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, n := range c.Nodes {
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
			errs = append(errs, fmt.Errorf("sigil node %s did not stop within 15s: killed", n.Addr))
		}
	}
	c.Nodes = nil
	return errors.Join(errs...)
}

// writeListenerTLS writes a throwaway CA and a 127.0.0.1/localhost
// serving certificate for the nodes' listeners, sets c.Conn.CACert and
// c.http to trust it, and returns the certificate and key paths.
func writeListenerTLS(dir string, c *HACluster) (crt, key string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("ha cluster directory: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("listener CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sigil-bench listener CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", fmt.Errorf("listener CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", fmt.Errorf("listener CA: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("listener key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		return "", "", fmt.Errorf("listener certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", "", fmt.Errorf("listener key: %w", err)
	}
	caPath := filepath.Join(dir, "listener-ca.pem")
	crt, key = filepath.Join(dir, "listener.pem"), filepath.Join(dir, "listener.key")
	for path, b := range map[string]*pem.Block{caPath: {Type: "CERTIFICATE", Bytes: caDER}, crt: {Type: "CERTIFICATE", Bytes: der}, key: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
			return "", "", fmt.Errorf("listener TLS: %w", err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	c.Conn.CACert = caPath
	c.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	return crt, key, nil
}
