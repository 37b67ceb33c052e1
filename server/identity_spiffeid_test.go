package server

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestValidSPIFFEID: join tokens accept exactly the IDs the SPIFFE rules
// (and so the CA at Enroll) accept; anything else is InvalidArgument.
func TestValidSPIFFEID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"spiffe://example.org/workload", true},
		{"spiffe://example.org/ns/prod/sa/web", true},
		{"", false},
		{"https://example.org/workload", false},
		{"spiffe:///workload", false},
		{"spiffe://example.org/workload?x=1", false},
		{"spiffe://example.org/workload#f", false},
		{"spiffe://user@example.org/workload", false},
		{"spiffe://Example.org/workload", false}, // url.Parse took it; Enroll would not
		{"spiffe://example.org/a/../b", false},
		{"spiffe://example.org/workload/", false},
	} {
		err := validSPIFFEID(tc.id)
		if tc.ok != (err == nil) {
			t.Errorf("validSPIFFEID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Errorf("validSPIFFEID(%q): code %v, want InvalidArgument", tc.id, status.Code(err))
		}
	}
}
