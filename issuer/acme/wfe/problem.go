package wfe

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
)

// problem is an error of the front end itself (JWS, nonce, content type,
// method): the RA never sees these requests.
type problem struct {
	ra.Problem
}

func (p *problem) Error() string { return p.Type + ": " + p.Detail }

func prob(status int, typ, format string, args ...any) *problem {
	return &problem{ra.Problem{Type: ra.ErrorNS + typ, Detail: fmt.Sprintf(format, args...), Status: status}}
}

func malformed(format string, args ...any) *problem {
	return prob(http.StatusBadRequest, "malformed", format, args...)
}

func unauthorized(format string, args ...any) *problem {
	return prob(http.StatusForbidden, "unauthorized", format, args...)
}

func notFound(format string, args ...any) *problem {
	return prob(http.StatusNotFound, "malformed", format, args...)
}

// rateLimited is a per-IP limit's refusal; wait is from the limiter.
type rateLimited struct {
	problem
	wait time.Duration
}

// defaultRetryAfter is the Retry-After of a rateLimited answer whose
// limiter gave no wait.
const defaultRetryAfter = time.Second

// writeProblem sends err as a problem document: a front-end problem as
// is, anything else through ra.ProblemOf, the one mapping of domain
// errors. Internal errors are logged with their cause, never sent.
func (f *WFE) writeProblem(rc *reqCtx, err error) {
	var p *ra.Problem
	var retry time.Duration
	location := ""
	var fp *problem
	var rl *rateLimited
	var re *ra.Error
	switch {
	case errors.As(err, &rl):
		p, retry = &rl.Problem, max(rl.wait, defaultRetryAfter)
	case errors.As(err, &fp):
		p = &fp.Problem
	default:
		errors.As(err, &re)
		p = ra.ProblemOf(err)
		if re != nil {
			retry = re.RetryAfter
			if re.Account != "" {
				location = rc.url("acct", re.Account)
			}
		}
		if re == nil || re.Kind == ra.KindInternal || re.Kind == ra.KindUnavailable || re.Unwrap() != nil {
			f.logger.ErrorContext(rc.r.Context(), "acme: request failed", "path", rc.r.URL.Path,
				"type", p.Type, "detail", p.Detail, "error", err)
		}
	}
	f.headers(rc)
	if location != "" {
		rc.w.Header().Set("Location", location)
	}
	if retry > 0 || p.Type == ra.ErrorNS+"rateLimited" {
		secs := int64(math.Ceil(max(retry, defaultRetryAfter).Seconds()))
		rc.w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	body, _ := json.Marshal(p)
	rc.w.Header().Set("Content-Type", "application/problem+json")
	rc.w.WriteHeader(p.Status)
	_, _ = rc.w.Write(body)
}

// Unavailable answers every request with a serverInternal problem (503)
// saying why: the front end while no ACME server runs (sealed, or ACME
// disabled).
func Unavailable(detail string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(ra.Problem{Type: ra.ErrorNS + "serverInternal", Detail: detail, Status: http.StatusServiceUnavailable})
	})
}
