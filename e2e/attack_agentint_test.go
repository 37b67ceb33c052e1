package e2e

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/registration"
)

// TestAttackAgentintJWTSVIDSealed: a JWT-SVID is a bearer credential, so
// MintJWTSVID never returns it in the clear (anyone who reads a response,
// a log of it or a proxy's capture could replay it). The server refuses a
// request that names no recipient, and otherwise returns the token only
// sealed to the recipient and bound to the entry; node scoping is
// unchanged.
func TestAttackAgentintJWTSVIDSealed(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	const nodeA, nodeB = "spiffe://sigil.test/node/a", "spiffe://sigil.test/node/b"
	const appA, appB = "spiffe://sigil.test/ns/a-app", "spiffe://sigil.test/ns/b-app"
	entryA := agentEntry(t, d, nodeA, appA, "--selector", "unix:uid:0")
	entryB := agentEntry(t, d, nodeB, appB, "--selector", "unix:uid:0")
	a := sigilv1.NewAgentServiceClient(agentAttackNodeConn(t, d, nodeA))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	priv, rec, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	recipient := &sigilv1.Recipient{Kem: uint32(rec.KEM), PublicKey: rec.PublicKey}

	// The old server answered this with the token in the clear.
	resp, err := a.MintJWTSVID(ctx, &sigilv1.MintJWTSVIDRequest{EntryId: entryA, Audience: []string{"db"}})
	if status.Code(err) != codes.InvalidArgument || resp != nil {
		t.Fatalf("no recipient: %v (response %v), want InvalidArgument and no response", err, resp)
	}

	resp, err = a.MintJWTSVID(ctx, &sigilv1.MintJWTSVIDRequest{EntryId: entryA, Audience: []string{"db"}, Recipient: recipient})
	if err != nil {
		t.Fatalf("node A's own entry, sealed: %v", err)
	}
	var en envelope.Envelope
	if err := en.UnmarshalBinary(resp.GetEnvelope()); err != nil {
		t.Fatalf("envelope: %v", err)
	}
	if _, err := envelope.OpenData(priv, &en, registration.JWTSVIDBinding(entryB)); err == nil {
		t.Error("the envelope opened under another entry's binding")
	}
	data, err := envelope.OpenData(priv, &en, registration.JWTSVIDBinding(entryA))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if tok := data["token"]; strings.Count(tok, ".") != 2 || resp.GetExpiresAtUnix() <= time.Now().Unix() {
		t.Fatalf("sealed token %d bytes, expiry %d: want a JWT that has not expired", len(tok), resp.GetExpiresAtUnix())
	}
	// Nothing of the JWT-SVID is in the clear anywhere in the response.
	if wire, err := proto.Marshal(resp); err != nil || bytes.Contains(wire, []byte(data["token"])) || bytes.Contains(wire, []byte(strings.SplitN(data["token"], ".", 2)[0])) {
		t.Fatalf("the JWT-SVID (or its header) is in the clear in the response (marshal err %v)", err)
	}
	// Another key cannot open it.
	other, _, _ := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if _, err := envelope.OpenData(other, &en, registration.JWTSVIDBinding(entryA)); err == nil {
		t.Error("a key other than the recipient's opened the JWT-SVID")
	}

	// Node scoping comes before anything is signed.
	if _, err := a.MintJWTSVID(ctx, &sigilv1.MintJWTSVIDRequest{EntryId: entryB, Audience: []string{"db"}, Recipient: recipient}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node B's entry: %v, want PermissionDenied", err)
	}
}
