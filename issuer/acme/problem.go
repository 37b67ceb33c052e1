package acme

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

const errNS = "urn:ietf:params:acme:error:"

// Problem is an RFC 7807 problem document with an ACME error type.
type Problem struct {
	Type        string      `json:"type"`
	Detail      string      `json:"detail,omitempty"`
	Status      int         `json:"status,omitempty"`
	Identifier  *Identifier `json:"identifier,omitempty"`
	Subproblems []*Problem  `json:"subproblems,omitempty"`
	Algorithms  []string    `json:"algorithms,omitempty"` // badSignatureAlgorithm
	location    string      // Location header (conflicts)
	cause       error       // logged, never sent
	retryAfter  time.Duration
}

func (p *Problem) Error() string { return p.Type + ": " + p.Detail }

func (p *Problem) Unwrap() error { return p.cause }

func prob(status int, typ, format string, args ...any) *Problem {
	return &Problem{Type: errNS + typ, Detail: fmt.Sprintf(format, args...), Status: status}
}

func malformed(format string, args ...any) *Problem {
	return prob(http.StatusBadRequest, "malformed", format, args...)
}

func unauthorized(format string, args ...any) *Problem {
	return prob(http.StatusForbidden, "unauthorized", format, args...)
}

func notFound(format string, args ...any) *Problem {
	return prob(http.StatusNotFound, "malformed", format, args...)
}

// internal hides err from the client (it is logged).
func internal(err error, format string, args ...any) *Problem {
	p := prob(http.StatusInternalServerError, "serverInternal", format, args...)
	p.cause = err
	return p
}

// asProblem turns any error into a problem document.
func asProblem(err error) *Problem {
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	return internal(err, "internal error")
}
