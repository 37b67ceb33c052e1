package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// pattern is a compiled glob over separator-delimited segments: each
// segment may hold "*" wildcards that stay within it, and rest means a final
// "**" that matches one or more further segments.
type pattern struct {
	segs []string
	rest bool
}

// compilePattern validates and compiles a path-style pattern.
func compilePattern(s string, sep byte) (pattern, error) {
	switch {
	case s == "":
		return pattern{}, errors.New("empty pattern")
	case len(s) > MaxPathLen:
		return pattern{}, fmt.Errorf("longer than %d bytes", MaxPathLen)
	case !utf8.ValidString(s):
		return pattern{}, errors.New("not valid UTF-8")
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return pattern{}, errors.New("contains a control character")
	}
	segs := strings.Split(s, string(sep))
	var p pattern
	for i, seg := range segs {
		switch {
		case seg == "":
			return pattern{}, fmt.Errorf("empty segment (leading, trailing or doubled %q)", sep)
		case seg == "." || seg == "..":
			return pattern{}, fmt.Errorf("segment %q is not allowed", seg)
		case seg == "**":
			if i != len(segs)-1 {
				return pattern{}, errors.New(`"**" is allowed only as the last segment`)
			}
			if i == 0 && sep == '.' {
				// "**" alone would grant every DNS name: make the author
				// say which domain.
				return pattern{}, errors.New(`"**" needs a domain after it`)
			}
			p.rest = true
		case strings.Contains(seg, "**"):
			return pattern{}, fmt.Errorf(`segment %q: "**" must be a whole segment`, seg)
		default:
			p.segs = append(p.segs, seg)
		}
	}
	return p, nil
}

// literalFirst reports whether the first segment has no wildcard (and is
// not "**"), so the pattern can only match paths starting with it.
func (p pattern) literalFirst(first string) bool {
	return len(p.segs) > 0 && p.segs[0] == first
}

// match reports whether the segments of a path match.
func (p pattern) match(segs []string) bool {
	if p.rest {
		if len(segs) <= len(p.segs) {
			return false
		}
	} else if len(segs) != len(p.segs) {
		return false
	}
	for i, ps := range p.segs {
		if !globSegment(ps, segs[i]) {
			return false
		}
	}
	return true
}

// globSegment matches one segment against a pattern in which "*" matches
// any run of bytes. It backtracks only to the last star, so it runs in
// O(len(pat)*len(s)) at worst; both are bounded by MaxPathLen.
func globSegment(pat, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(pat) && pat[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(pat) && pat[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == '*' {
		pi++
	}
	return pi == len(pat)
}

// ---- names

// compileDNSPattern compiles a DNS name pattern. Labels are compared from
// the right (the pattern and the name are reversed), so "**" in front,
// "**.example.org", means any one or more labels.
func compileDNSPattern(s string) (pattern, error) {
	s = strings.ToLower(s)
	if strings.HasPrefix(s, "**.") {
		p, err := compilePattern(reverseLabels(s[3:])+".**", '.')
		return p, err
	}
	if strings.Contains(s, "**") {
		return pattern{}, errors.New(`"**" is allowed only as the first label`)
	}
	return compilePattern(reverseLabels(s), '.')
}

func reverseLabels(s string) string {
	l := strings.Split(s, ".")
	slices.Reverse(l)
	return strings.Join(l, ".")
}

// compileURIPattern compiles "scheme://" and a slash pattern whose first
// segment is the authority (for SPIFFE, the trust domain).
func compileURIPattern(s string) (pattern, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || scheme == "" || strings.ContainsAny(scheme, "*/") {
		return pattern{}, errors.New(`want scheme://authority/path, with a literal scheme`)
	}
	if strings.ContainsAny(rest, "?#") {
		return pattern{}, errors.New("query and fragment are not allowed")
	}
	p, err := compilePattern(rest, '/')
	if err != nil {
		return pattern{}, err
	}
	// Keep the scheme as a literal first segment, so "spiffe://…" can only
	// ever match spiffe URIs.
	p.segs = append([]string{strings.ToLower(scheme) + ":"}, p.segs...)
	return p, nil
}

func compileSPIFFEPattern(s string) (pattern, error) {
	if !strings.HasPrefix(s, "spiffe://") {
		return pattern{}, errors.New("a SPIFFE ID pattern starts with spiffe://")
	}
	return compileURIPattern(s)
}

// uriSegments splits a requested URI the way compileURIPattern splits a
// pattern, refusing anything a wildcard could be tricked by.
func uriSegments(u string) ([]string, error) {
	scheme, rest, ok := strings.Cut(u, "://")
	switch {
	case !ok || scheme == "" || strings.ContainsAny(scheme, "*/"):
		return nil, errors.New("not a scheme://authority/path URI")
	case len(u) > MaxPathLen:
		return nil, fmt.Errorf("longer than %d bytes", MaxPathLen)
	case !utf8.ValidString(u) || strings.IndexFunc(u, unicode.IsControl) >= 0:
		return nil, errors.New("not valid UTF-8 or contains a control character")
	case strings.ContainsAny(rest, "?#%"):
		return nil, errors.New("query, fragment and percent-escapes are not allowed")
	}
	segs := strings.Split(rest, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return nil, errors.New("empty, '.' or '..' segment")
		}
	}
	return append([]string{strings.ToLower(scheme) + ":"}, segs...), nil
}

// dnsSegments splits a requested DNS name into reversed labels.
func dnsSegments(name string) ([]string, error) {
	name = strings.ToLower(name)
	switch {
	case len(name) > 253:
		return nil, errors.New("longer than 253 bytes")
	case strings.ContainsAny(name, "*@/:"):
		return nil, errors.New("not a DNS name")
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return nil, errors.New("IP addresses cannot be granted by policy")
	}
	l := strings.Split(name, ".")
	for _, s := range l {
		if s == "" || strings.IndexFunc(s, func(r rune) bool {
			return !(r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
		}) >= 0 {
			return nil, errors.New("not a DNS name")
		}
	}
	slices.Reverse(l)
	return l, nil
}
