package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/template"
	"time"
	"unicode"
)

// ErrTooLarge is a rendered output over MaxOutput.
var ErrTooLarge = fmt.Errorf("rendered output is larger than %d bytes", MaxOutput)

// secretKind is what a template function fetches.
type secretKind int

const (
	kindCreds secretKind = iota
	kindKV
	kindCert
)

func (k secretKind) String() string {
	return [...]string{"creds", "kv", "cert"}[k]
}

// secretRef names one secret: creds MOUNT/ROLE, kv MOUNT/PATH, cert
// PROFILE NAME. It is the cache key, so a secret referenced several times
// is fetched once.
type secretRef struct {
	kind secretKind
	a, b string
}

func (r secretRef) String() string {
	switch r.kind {
	case kindCreds:
		return "creds " + r.a + "/" + r.b
	case kindKV:
		return "kv " + r.a + "/" + r.b
	}
	return "cert " + r.a + " " + r.b
}

// lookup returns a secret's template data, fetching it when the renderer
// does not hold it yet.
type lookup func(ctx context.Context, ref secretRef) (map[string]string, error)

// funcNames declares the template functions at parse time; the real ones
// are bound to each render.
var funcNames = template.FuncMap{
	"creds": func(string) (map[string]string, error) { return nil, errors.New("unbound") },
	"kv":    func(string, string) (string, error) { return "", errors.New("unbound") },
	"cert":  func(string, string) (map[string]string, error) { return nil, errors.New("unbound") },
}

// parseTemplate parses template text. Only text/template's built-ins and
// creds, kv and cert exist: no function reads a file or the environment.
func parseTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(funcNames).Parse(text)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// renderTemplate executes t, fetching the secrets it names through get,
// and returns the output and the secrets it used. Output is bounded by
// MaxOutput and distinct secrets by MaxSecretsPerTemplate.
func renderTemplate(ctx context.Context, t *template.Template, get lookup) ([]byte, []secretRef, error) {
	used := map[secretRef]bool{}
	fetch := func(ref secretRef) (map[string]string, error) {
		if !used[ref] && len(used) >= MaxSecretsPerTemplate {
			return nil, fmt.Errorf("template references more than %d secrets", MaxSecretsPerTemplate)
		}
		used[ref] = true
		return get(ctx, ref)
	}
	c, err := t.Clone()
	if err != nil {
		return nil, nil, err
	}
	c.Funcs(template.FuncMap{
		"creds": func(path string) (map[string]string, error) {
			mount, role, err := splitLast(path, "creds", "MOUNT/ROLE")
			if err != nil {
				return nil, err
			}
			return fetch(secretRef{kindCreds, mount, role})
		},
		"kv": func(path, field string) (string, error) {
			mount, p, err := splitFirst(path)
			if err != nil {
				return "", err
			}
			ref := secretRef{kindKV, mount, p}
			data, err := fetch(ref)
			if err != nil {
				return "", err
			}
			v, ok := data[field]
			if !ok {
				return "", fmt.Errorf("%s has no field %q (fields: %s)", ref, field, strings.Join(fieldNames(data), ", "))
			}
			return v, nil
		},
		"cert": func(profile, name string) (map[string]string, error) {
			if err := checkName(profile, "cert profile"); err != nil {
				return nil, err
			}
			if name == "" || len(name) > 1024 || strings.ContainsFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || r == ' ' }) {
				return nil, fmt.Errorf("cert name %q: want a DNS name, an IP address or a spiffe:// ID", name)
			}
			return fetch(secretRef{kindCert, profile, name})
		},
	})
	var out limitedBuffer
	if err := c.Execute(&out, nil); err != nil {
		refs := sortedRefs(used)
		return nil, refs, err
	}
	return out.b.Bytes(), sortedRefs(used), nil
}

func sortedRefs(m map[secretRef]bool) []secretRef {
	out := make([]secretRef, 0, len(m))
	for r := range m {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func fieldNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// limitedBuffer fails a write that would take it past MaxOutput, which
// stops template execution.
type limitedBuffer struct{ b bytes.Buffer }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.b.Len()+len(p) > MaxOutput {
		return 0, ErrTooLarge
	}
	return l.b.Write(p)
}

// checkName refuses a path segment list that is empty, has empty, "." or
// ".." segments, or unprintable characters; the server checks
// authorisation, this only keeps nonsense from being sent.
func checkName(s, what string) error {
	if s == "" || len(s) > 512 {
		return fmt.Errorf("%s %q: empty or too long", what, s)
	}
	for _, seg := range strings.Split(s, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%s %q: empty, . or .. path segment", what, s)
		}
	}
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == ' ' }) {
		return fmt.Errorf("%s %q: contains spaces or unprintable characters", what, s)
	}
	return nil
}

// splitLast splits MOUNT/ROLE at its last slash (mounts may nest).
func splitLast(p, fn, want string) (string, string, error) {
	if err := checkName(p, fn); err != nil {
		return "", "", err
	}
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		return "", "", fmt.Errorf("%s %q: want %s", fn, p, want)
	}
	return p[:i], p[i+1:], nil
}

// splitFirst splits MOUNT/PATH at its first slash, as `sigil kv get` does.
func splitFirst(p string) (string, string, error) {
	if err := checkName(p, "kv"); err != nil {
		return "", "", err
	}
	m, rest, ok := strings.Cut(p, "/")
	if !ok {
		return "", "", fmt.Errorf("kv %q: want MOUNT/PATH", p)
	}
	return m, rest, nil
}

// certData is what {{ with cert }} exposes.
func certData(c *Cert) map[string]string {
	return map[string]string{"cert": c.CertPEM, "key": c.KeyPEM, "chain": c.ChainPEM, "serial": c.Serial,
		"not_after": c.NotAfter.UTC().Format(time.RFC3339)}
}

// kvData is what kv exposes: the stored bytes as a string.
func kvData(s *KVSecret) map[string]string {
	out := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out
}
