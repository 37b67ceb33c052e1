package validation

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
)

// validateHTTP01 fetches http://NAME:PORT/.well-known/acme-challenge/TOKEN
// (RFC 8555 §8.3). Redirects are followed at most 10 times, only to http on
// HTTP01Port or https on HTTPSPort, and every hop dials through the address
// policy; https certificates are not verified (the RFC's rule: the
// challenge, not the certificate, proves control).
func (v *VA) validateHTTP01(ctx context.Context, req Request) error {
	host := req.Value
	if req.IdentifierType == IdentifierIP {
		host = net.ParseIP(req.Value).String()
	}
	u := &url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(v.cfg.HTTP01Port)),
		Path: "/.well-known/acme-challenge/" + req.Token}
	if v.cfg.HTTP01Port == 80 {
		u.Host = hostForURL(host)
	}
	allowedPort := func(scheme, port string) bool {
		switch scheme {
		case "http":
			return port == "" && v.cfg.HTTP01Port == 80 || port == strconv.Itoa(v.cfg.HTTP01Port)
		case "https":
			return port == "" && v.cfg.HTTPSPort == 443 || port == strconv.Itoa(v.cfg.HTTPSPort)
		}
		return false
	}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		h, p, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := strconv.Atoi(p)
		if err != nil || (port != v.cfg.HTTP01Port && port != v.cfg.HTTPSPort) {
			return nil, fmt.Errorf("port %s not allowed", p)
		}
		return v.dialAny(ctx, h, port)
	}
	tr := &http.Transport{
		DialContext:            dial,
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, //nolint:gosec // RFC 8555 §8.3
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 16 << 10,
		ForceAttemptHTTP2:      false,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("more than %d redirects", maxRedirects)
			}
			if !allowedPort(r.URL.Scheme, r.URL.Port()) {
				return fmt.Errorf("redirect to %s://%s not allowed (scheme http or https on the validation ports only)",
					r.URL.Scheme, r.URL.Host)
			}
			if r.URL.User != nil {
				return errors.New("redirect with userinfo not allowed")
			}
			return nil
		},
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fail("malformed", err, "building request")
	}
	hreq.Header.Set("User-Agent", v.cfg.UserAgent)
	hreq.Header.Set("Accept", "*/*")
	resp, err := client.Do(hreq)
	if err != nil {
		var ve *Error
		if errors.As(err, &ve) {
			return ve
		}
		return fail("connection", err, "fetching %s", u)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail("unauthorized", nil, "fetching %s: status %d, want 200", resp.Request.URL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, v.cfg.MaxBody+1))
	if err != nil {
		return fail("connection", err, "reading %s", resp.Request.URL)
	}
	if int64(len(body)) > v.cfg.MaxBody {
		return fail("unauthorized", nil, "response from %s longer than %d bytes", resp.Request.URL, v.cfg.MaxBody)
	}
	// Only the length of what came back is reported: the body may be
	// whatever a redirect reached, and the client must not learn it.
	got := bytes.TrimRight(body, " \t\r\n")
	if len(got) != len(req.KeyAuthorization) || subtle.ConstantTimeCompare(got, []byte(req.KeyAuthorization)) != 1 {
		return fail("incorrectResponse", nil, "the key authorization from %s does not match (%d bytes received)",
			resp.Request.URL, len(body))
	}
	return nil
}

func hostForURL(h string) string {
	if ip := net.ParseIP(h); ip != nil && ip.To4() == nil {
		return "[" + h + "]"
	}
	return h
}
