package e2e

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func TestTransitEngine(t *testing.T) {
	d := startDev(t, t.TempDir())
	ok := func(args ...string) string {
		t.Helper()
		out, stderr, code := d.cli(t, args...)
		if code != 0 {
			t.Fatalf("%v: code %d: %s", args, code, stderr)
		}
		return strings.TrimSpace(out)
	}
	okIn := func(stdin string, args ...string) string {
		t.Helper()
		out, stderr, code := d.cliStdin(t, stdin, args...)
		if code != 0 {
			t.Fatalf("%v: code %d: %s", args, code, stderr)
		}
		return strings.TrimSpace(out)
	}
	fails := func(want string, args ...string) {
		t.Helper()
		_, stderr, code := d.cli(t, args...)
		if code == 0 || !strings.Contains(stderr, want) {
			t.Fatalf("%v: code %d, stderr %q; want a failure mentioning %q", args, code, stderr, want)
		}
	}
	ok("engine", "enable", "transit", "--mount", "transit")
	ok("transit", "create", "transit/orders")

	// encrypt (plaintext from stdin) → rotate → decrypt old → rewrap → decrypt
	ct1 := okIn("card 4111-1111", "transit", "encrypt", "transit/orders", "--aad", "order-7")
	if !strings.HasPrefix(ct1, "sigil:v1:") {
		t.Fatalf("ciphertext %q", ct1)
	}
	ok("transit", "rotate", "transit/orders")
	if pt := ok("transit", "decrypt", "transit/orders", ct1, "--aad", "order-7"); pt != "card 4111-1111" {
		t.Fatalf("old ciphertext decrypts to %q", pt)
	}
	ct2 := ok("transit", "rewrap", "transit/orders", ct1, "--aad", "order-7")
	if !strings.HasPrefix(ct2, "sigil:v2:") {
		t.Fatalf("rewrapped %q", ct2)
	}
	if pt := ok("transit", "decrypt", "transit/orders", ct2, "--aad", "order-7"); pt != "card 4111-1111" {
		t.Fatalf("rewrapped ciphertext decrypts to %q", pt)
	}

	// Tampering and the wrong associated data are rejected.
	b := []byte(ct2)
	b[len(b)-4] ^= 1
	fails("does not decrypt", "transit", "decrypt", "transit/orders", string(b), "--aad", "order-7")
	fails("does not decrypt", "transit", "decrypt", "transit/orders", ct2, "--aad", "order-8")

	// Raising the minimum decryption version retires v1 ciphertexts.
	ok("transit", "config", "transit/orders", "--min-decryption-version", "2")
	fails("minimum decryption version", "transit", "decrypt", "transit/orders", ct1, "--aad", "order-7")
	if pt := ok("transit", "decrypt", "transit/orders", ct2, "--aad", "order-7"); pt != "card 4111-1111" {
		t.Fatal("v2 ciphertext stopped decrypting")
	}

	// A data key: the plaintext arrives sealed to this CLI call's key, and
	// its wrapped copy decrypts to the same bytes.
	var dk struct{ Ciphertext, Plaintext string }
	if err := json.Unmarshal([]byte(ok("transit", "datakey", "transit/orders", "--format", "json")), &dk); err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(dk.Plaintext)
	if err != nil || len(raw) != 32 {
		t.Fatalf("data key plaintext %q", dk.Plaintext)
	}
	var dec struct{ Plaintext string }
	if err := json.Unmarshal([]byte(ok("transit", "decrypt", "transit/orders", dk.Ciphertext, "--format", "json")), &dec); err != nil {
		t.Fatal(err)
	}
	if dec.Plaintext != dk.Plaintext {
		t.Fatal("wrapped data key decrypts to another key")
	}

	// Signatures and HMACs round trip; a changed message does not verify.
	ok("transit", "create", "transit/release", "--type", "ed25519")
	sig := okIn("v1.2.3", "transit", "sign", "transit/release")
	okIn("v1.2.3", "transit", "verify", "transit/release", sig)
	if _, _, code := d.cliStdin(t, "v1.2.4", "transit", "verify", "transit/release", sig); code == 0 {
		t.Fatal("signature verified another message")
	}
	var key struct {
		Versions []struct {
			PublicKey string `json:"public_key"`
		} `json:"versions"`
	}
	if err := json.Unmarshal([]byte(ok("transit", "read", "transit/release", "--format", "json")), &key); err != nil || len(key.Versions) != 1 ||
		!strings.Contains(key.Versions[0].PublicKey, "PUBLIC KEY") {
		t.Fatalf("read: %+v %v", key, err)
	}
	ok("transit", "create", "transit/mac", "--type", "hmac")
	tag := ok("transit", "hmac", "transit/mac", "payload")
	ok("transit", "verify-hmac", "transit/mac", tag, "payload")
	if _, _, code := d.cli(t, "transit", "verify-hmac", "transit/mac", tag, "payloaX"); code == 0 {
		t.Fatal("HMAC verified another message")
	}

	// Over the 1 MiB limit: a clear error, before anything is sent.
	_, stderr, code := d.cliStdin(t, strings.Repeat("x", 1<<20+1), "transit", "encrypt", "transit/orders")
	if code == 0 || !strings.Contains(stderr, "1 MiB") {
		t.Fatalf("oversized plaintext: code %d, %q", code, stderr)
	}
	// Deletion needs deletion_allowed.
	fails("does not allow deletion", "transit", "delete", "transit/mac")
	ok("transit", "config", "transit/mac", "--deletion-allowed", "true")
	ok("transit", "delete", "transit/mac")
	if list := ok("transit", "list", "transit"); list != "orders\nrelease" {
		t.Fatalf("keys after delete: %q", list)
	}
}
