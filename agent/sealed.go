package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/agent/render"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/registration"
)

// mintJWT has the server sign a JWT-SVID for entry e. A JWT-SVID is a
// bearer credential, so the server returns it sealed (HPKE) to a key made
// here for this one call; it is opened in memory and never written.
func (a *Agent) mintJWT(ctx context.Context, e *registration.Entry, audience []string) (string, time.Time, error) {
	open, rec, err := render.OneCallKey()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("agent: recipient key: %w", err)
	}
	r, err := sigilv1.NewAgentServiceClient(a.client()).MintJWTSVID(ctx, &sigilv1.MintJWTSVIDRequest{EntryId: e.ID, Audience: audience, Recipient: rec})
	if err != nil {
		return "", time.Time{}, err
	}
	data, err := open(r.GetEnvelope(), registration.JWTSVIDBinding(e.ID))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("agent: JWT-SVID for entry %s: %w", e.ID, err)
	}
	tok := data["token"]
	if tok == "" {
		return "", time.Time{}, errors.New("agent: JWT-SVID envelope holds no token")
	}
	return tok, time.Unix(r.GetExpiresAtUnix(), 0), nil
}
