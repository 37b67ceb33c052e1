package wfe

import (
	"encoding/json"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
)

// The JSON objects of RFC 8555 §7.1, as the WFE renders them.

type directoryJSON struct {
	NewNonce    string        `json:"newNonce"`
	NewAccount  string        `json:"newAccount"`
	NewOrder    string        `json:"newOrder"`
	RevokeCert  string        `json:"revokeCert"`
	KeyChange   string        `json:"keyChange"`
	RenewalInfo string        `json:"renewalInfo"`
	Meta        directoryMeta `json:"meta"`
}

type directoryMeta struct {
	TermsOfService          string            `json:"termsOfService,omitempty"`
	Website                 string            `json:"website,omitempty"`
	CAAIdentities           []string          `json:"caaIdentities,omitempty"`
	ExternalAccountRequired bool              `json:"externalAccountRequired"`
	Profiles                map[string]string `json:"profiles"`
}

type eabJSON struct {
	KID string `json:"kid"`
}

type accountJSON struct {
	Status                 string          `json:"status"`
	Contact                []string        `json:"contact,omitempty"`
	TermsOfServiceAgreed   bool            `json:"termsOfServiceAgreed,omitempty"`
	Orders                 string          `json:"orders"`
	Key                    json.RawMessage `json:"key"`
	ExternalAccountBinding *eabJSON        `json:"externalAccountBinding,omitempty"`
}

type ordersJSON struct {
	Orders []string `json:"orders"`
}

type orderJSON struct {
	Status         string          `json:"status"`
	Expires        string          `json:"expires"`
	Identifiers    []ra.Identifier `json:"identifiers"`
	Authorizations []string        `json:"authorizations"`
	Finalize       string          `json:"finalize"`
	Profile        string          `json:"profile"`
	Replaces       string          `json:"replaces,omitempty"`
	Certificate    string          `json:"certificate,omitempty"`
	Error          *ra.Problem     `json:"error,omitempty"`
}

type challengeJSON struct {
	Type      string      `json:"type"`
	URL       string      `json:"url"`
	Token     string      `json:"token"`
	Status    string      `json:"status"`
	Validated string      `json:"validated,omitempty"`
	Error     *ra.Problem `json:"error,omitempty"`
}

type authzJSON struct {
	Identifier ra.Identifier   `json:"identifier"`
	Status     string          `json:"status"`
	Expires    string          `json:"expires"`
	Challenges []challengeJSON `json:"challenges"`
	Wildcard   bool            `json:"wildcard,omitempty"`
}

type renewalInfoJSON struct {
	SuggestedWindow struct {
		Start string `json:"start"`
		End   string `json:"end"`
	} `json:"suggestedWindow"`
}

func accountView(rc *reqCtx, a *ra.Account) *accountJSON {
	v := &accountJSON{Status: a.Status, Contact: a.Contact, TermsOfServiceAgreed: a.TermsAgreed,
		Orders: rc.url("orders", a.ID), Key: a.Key}
	if a.EABKeyID != "" {
		v.ExternalAccountBinding = &eabJSON{KID: a.EABKeyID}
	}
	return v
}

func orderView(rc *reqCtx, o *ra.Order) *orderJSON {
	v := &orderJSON{Status: o.Status, Expires: o.Expires.Format(time.RFC3339), Identifiers: o.Identifiers,
		Authorizations: make([]string, len(o.AuthzIDs)), Finalize: rc.url("order", o.ID, "finalize"),
		Profile: o.Profile, Replaces: o.Replaces, Error: o.Error}
	for i, id := range o.AuthzIDs {
		v.Authorizations[i] = rc.url("authz", id)
	}
	if o.CertSerial != "" {
		v.Certificate = rc.url("cert", o.CertSerial)
	}
	return v
}

func challengeView(rc *reqCtx, az *ra.Authorization, c *ra.Challenge) challengeJSON {
	v := challengeJSON{Type: c.Type, URL: rc.url("chall", az.ID, c.Type), Token: c.Token, Status: c.Status, Error: c.Error}
	if c.Validated != nil {
		v.Validated = c.Validated.Format(time.RFC3339)
	}
	return v
}

func authzView(rc *reqCtx, az *ra.Authorization) *authzJSON {
	v := &authzJSON{Identifier: az.Identifier, Status: az.Status, Expires: az.Expires.Format(time.RFC3339),
		Challenges: make([]challengeJSON, 0, len(az.Challenges)), Wildcard: az.Wildcard}
	for _, c := range az.Challenges {
		v.Challenges = append(v.Challenges, challengeView(rc, az, c))
	}
	return v
}
