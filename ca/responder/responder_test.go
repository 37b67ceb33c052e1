package responder

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestCacheHeaders: RFC 5019 caching headers from the document's validity
// window, and 304 only for a GET or HEAD whose If-None-Match names the tag.
func TestCacheHeaders(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	this, next := now.Add(-time.Hour), now.Add(90*time.Second)
	tests := []struct {
		name, method, inm string
		next              time.Time
		notModified       bool
		maxAge            string
	}{
		{"fresh GET", http.MethodGet, "", next, false, "90"},
		{"matching tag", http.MethodGet, `"abc"`, next, true, "90"},
		{"weak match", http.MethodGet, `W/"abc"`, next, true, "90"},
		{"one of a list", http.MethodHead, `"x", "abc"`, next, true, "90"},
		{"star", http.MethodGet, `*`, next, true, "90"},
		{"other tag", http.MethodGet, `"abd"`, next, false, "90"},
		{"POST never 304", http.MethodPost, `"abc"`, next, false, "90"},
		{"past nextUpdate", http.MethodGet, "", now.Add(-time.Second), false, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "/ocsp", nil)
			if tt.inm != "" {
				r.Header.Set("If-None-Match", tt.inm)
			}
			w := httptest.NewRecorder()
			if got := cacheHeaders(w, r, this, tt.next, `"abc"`, now); got != tt.notModified {
				t.Fatalf("notModified = %v, want %v", got, tt.notModified)
			}
			if tt.notModified && w.Code != http.StatusNotModified {
				t.Fatalf("status %d, want 304", w.Code)
			}
			want := "public, max-age=" + tt.maxAge + ", no-transform, must-revalidate"
			if cc := w.Header().Get("Cache-Control"); cc != want {
				t.Fatalf("Cache-Control %q, want %q", cc, want)
			}
			if w.Header().Get("ETag") != `"abc"` || w.Header().Get("Expires") != tt.next.UTC().Format(http.TimeFormat) {
				t.Fatalf("headers %v", w.Header())
			}
		})
	}
}
