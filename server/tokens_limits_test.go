package server

import (
	"testing"

	"github.com/sigil-ca/sigil/auth"
)

// TestTokenOfLease: every lease id under the auth mount is recognised as an
// API token's, so none slips through to the leases/ grants.
func TestTokenOfLease(t *testing.T) {
	tests := []struct {
		id     string
		token  string
		isAuth bool
	}{
		{"auth/token/abc", "abc", true},
		{"auth", "", true},
		{"auth/token/", "", true},
		{"auth/token/a/b", "", true},
		{"auth/other/x", "", true},
		{"authx/token/abc", "", false},
		{"db/ro/abc", "", false},
		{"svc/auth/token", "", false},
	}
	for _, tt := range tests {
		tok, isAuth := auth.TokenOfLease(tt.id)
		if tok != tt.token || isAuth != tt.isAuth {
			t.Errorf("auth.TokenOfLease(%q) = %q, %v; want %q, %v", tt.id, tok, isAuth, tt.token, tt.isAuth)
		}
	}
}
