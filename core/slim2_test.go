package core

import (
	"errors"
	"testing"
)

// TestBearerToken: the authorization header's parsing, moved from the
// transport's gate.
func TestBearerToken(t *testing.T) {
	tests := []struct {
		name   string
		header []string
		want   string
		err    error
	}{
		{"none", nil, "", nil},
		{"token", []string{"Bearer sgl_abc"}, "sgl_abc", nil},
		{"spaces trimmed", []string{"Bearer  sgl_abc "}, "sgl_abc", nil},
		{"first value counts", []string{"Bearer one", "Bearer two"}, "one", nil},
		{"other scheme", []string{"Basic dXNlcg=="}, "", ErrBadAuthHeader},
		{"lower-case scheme", []string{"bearer sgl_abc"}, "", ErrBadAuthHeader},
		{"empty token", []string{"Bearer   "}, "", ErrBadAuthHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BearerToken(tt.header)
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Fatalf("BearerToken(%q) = %q, %v; want %q, %v", tt.header, got, err, tt.want, tt.err)
			}
		})
	}
}

// TestInitRecipient: only a kem and public key name the root token's
// recipient at init; a certificate serial or an out-of-range kem names
// none (and Init then refuses).
func TestInitRecipient(t *testing.T) {
	key := []byte{1, 2, 3}
	tests := []struct {
		name string
		ref  *RecipientRef
		ok   bool
	}{
		{"nil", nil, false},
		{"kem and key", &RecipientRef{KEM: 0x20, PublicKey: key}, true},
		{"certificate serial", &RecipientRef{CertificateSerial: "01", KEM: 0x20, PublicKey: key}, false},
		{"kem beyond 16 bits", &RecipientRef{KEM: 0x10000, PublicKey: key}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := InitRecipient(tt.ref)
			if (r != nil) != tt.ok {
				t.Fatalf("InitRecipient(%+v) = %+v, want ok=%v", tt.ref, r, tt.ok)
			}
			if r != nil && (r.KEM != uint16(tt.ref.KEM) || string(r.PublicKey) != string(key)) {
				t.Fatalf("InitRecipient(%+v) = %+v", tt.ref, r)
			}
		})
	}
}
