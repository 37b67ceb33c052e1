package core_test

import (
	"testing"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
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
		// Trust domains go-spiffe takes but that have empty labels: in a
		// policy path (sys/agent/entries/...) they would be dot segments.
		{"spiffe://.", false},
		{"spiffe://../x", false},
		{"spiffe://./x", false},
		{"spiffe://a..b/x", false},
		{"spiffe://.example.org/x", false},
		{"spiffe://example.org./x", false},
		{"spiffe://example-1.org_2/x", true},
	} {
		err := core.ValidSPIFFEID(tc.id)
		if tc.ok != (err == nil) {
			t.Errorf("ValidSPIFFEID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if e, ok := errs.As(err); err != nil && (!ok || e.Kind != errs.InvalidArgument) {
			t.Errorf("ValidSPIFFEID(%q): %v, want InvalidArgument", tc.id, err)
		}
	}
}
