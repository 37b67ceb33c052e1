package ra

import (
	"errors"
	"testing"

	"github.com/sigil-ca/sigil/ca"
)

// TestSignErrorKinds: the CA's refusals reach the client as the matching
// ACME problem, not a generic 500.
func TestSignErrorKinds(t *testing.T) {
	for _, tc := range []struct {
		kind   ca.Kind
		typ    string
		status int
		retry  bool
	}{
		{ca.KindIssuerUnusable, "serverInternal", 503, true},
		{ca.KindForbidden, "unauthorized", 403, false},
		{ca.KindUnauthorized, "unauthorized", 403, false},
		{ca.KindPolicyViolation, "badCSR", 400, false},
		{ca.KindInternal, "serverInternal", 500, false},
	} {
		e := signError(&ca.Error{Kind: tc.kind, Op: "sign", Msg: "refused", Err: errors.New("cause")})
		p := e.Problem()
		if p.Type != ErrorNS+tc.typ || p.Status != tc.status || (e.RetryAfter > 0) != tc.retry {
			t.Errorf("%s: got %s %d retry %v, want %s %d retry %v", tc.kind, p.Type, p.Status, e.RetryAfter, tc.typ, tc.status, tc.retry)
		}
	}
}
