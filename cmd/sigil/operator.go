package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/seal"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runOperatorInit(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator init", "sigil operator init [--shares N] [--threshold K] [--share-recipients FILE...]")
	cf.register(fs, env)
	shares := fs.Int("shares", 5, "number of unseal shares")
	threshold := fs.Int("threshold", 3, "shares needed to unseal")
	var recipients stringList
	fs.Var(&recipients, "share-recipients", "X25519 public key files (PEM), one per share in order: --share-recipients a.pub b.pub c.pub (make one with: openssl genpkey -algorithm X25519 -out a.key && openssl pkey -in a.key -pubout -out a.pub)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// Remaining arguments are more recipient files, so a shell glob works:
	// --share-recipients a.pem b.pem c.pem.
	recipients = append(recipients, fs.Args()...)
	if *threshold < 1 || *shares < *threshold {
		return usagef("need 1 <= --threshold (%d) <= --shares (%d)", *threshold, *shares)
	}
	if len(recipients) > 0 && len(recipients) != *shares {
		return usagef("--share-recipients names %d keys for %d shares", len(recipients), *shares)
	}
	var keys [][]byte
	for _, r := range recipients {
		// recipientKey names the file and what is wrong with it (not a
		// public key, not X25519, a low-order point) before the server is
		// asked anything.
		if _, err := recipientKey(r); err != nil {
			return fmt.Errorf("--share-recipients %w", err)
		}
		b, err := os.ReadFile(r)
		if err != nil {
			return err
		}
		keys = append(keys, b)
	}
	return withConn(ctx, &cf, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		k, err := newOneCallKey()
		if err != nil {
			return err
		}
		resp, err := sigilv1.NewSysServiceClient(conn).Init(ctx, &sigilv1.InitRequest{Shares: int32(*shares), Threshold: int32(*threshold),
			ShareRecipients: keys, Recipient: k.Recipient})
		if err != nil {
			return err
		}
		data, err := k.open(resp.GetEnvelope(), "init", "root token and shares")
		if err != nil {
			return err
		}
		shareList := resp.GetShares()
		if len(shareList) == 0 {
			for i := 1; i <= *shares; i++ {
				shareList = append(shareList, data[fmt.Sprintf("share_%d", i)])
			}
		}
		if cf.format == "json" || cf.field != "" {
			return cf.output(map[string]any{"shares": shareList, "threshold": *threshold,
				"root_token": data["root_token"], "auto_unseal": resp.GetAutoUnseal()}, nil)
		}
		kind, summary := "Unseal", fmt.Sprintf("initialised sigil: %d unseal shares (%d needed to unseal) and a root token; the server is unsealed now", *shares, *threshold)
		if resp.GetAutoUnseal() {
			kind, summary = "Recovery", fmt.Sprintf("initialised sigil: %d recovery shares (%d needed) and a root token; the HSM unseals the server", *shares, *threshold)
		}
		if len(recipients) > 0 {
			summary += "; each share is encrypted to its --share-recipients key"
		}
		fmt.Fprintf(env.stdout, "%s\n\n", summary)
		for i, s := range shareList {
			label := ""
			if len(recipients) > 0 {
				label = " (encrypted to " + recipients[i] + ")"
			}
			fmt.Fprintf(env.stdout, "%s share %d%s: %s\n", kind, i+1, label, s)
		}
		fmt.Fprintf(env.stdout, "\nInitial root token: %s\n\n", data["root_token"])
		fmt.Fprintf(env.stdout, "The server keeps none of these shares. %d of %d are needed to unseal it after every restart.\n", *threshold, *shares)
		if resp.GetAutoUnseal() {
			fmt.Fprintln(env.stdout, "The HSM unseals the server at start; keep the recovery shares for break-glass.")
		}
		return nil
	})
}

func runOperatorUnseal(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator unseal", "sigil operator unseal [--reset] [SHARE]  (prompts when SHARE is omitted)")
	cf.register(fs, env)
	reset := fs.Bool("reset", false, "discard the shares given so far")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usagef("operator unseal takes at most one share")
	}
	share := fs.Arg(0)
	if share == "" && !*reset {
		fmt.Fprint(env.stderr, "Unseal share: ")
		line, err := bufio.NewReader(env.stdin).ReadString('\n')
		if err != nil && line == "" {
			return usagef("no share given")
		}
		share = strings.TrimSpace(line)
	}
	return withConn(ctx, &cf, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewSysServiceClient(conn).Unseal(ctx, &sigilv1.UnsealRequest{Share: share, Reset_: *reset})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"sealed": resp.GetSealed(), "progress": resp.GetProgress(), "threshold": resp.GetThreshold()}, func(w io.Writer) error {
			if resp.GetSealed() {
				_, err := fmt.Fprintf(w, "Sealed: true (%d/%d shares)\n", resp.GetProgress(), resp.GetThreshold())
				return err
			}
			_, err := fmt.Fprintln(w, "Sealed: false")
			return err
		})
	})
}

func runOperatorSeal(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator seal", "sigil operator seal")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 0, 0, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		sys := sigilv1.NewSysServiceClient(conn)
		already := false
		if _, err := sys.Seal(ctx, &sigilv1.SealRequest{}); err != nil {
			// Sealing a sealed server is done already, like `vault
			// operator seal`: the server cannot check the token while
			// sealed, so ask its status (public) before calling it failed.
			if status.Code(err) != codes.Unavailable {
				return err
			}
			st, serr := sys.Status(ctx, &sigilv1.StatusRequest{})
			if serr != nil || !st.GetSealed() {
				return err
			}
			already = true
		}
		return cf.output(map[string]any{"sealed": true, "already_sealed": already}, func(w io.Writer) error {
			line := "Sealed: true"
			if already {
				line += " (it was already sealed)"
			}
			_, err := fmt.Fprintln(w, line)
			return err
		})
	})
}

func runOperatorDecryptShare(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "operator decrypt-share", "sigil operator decrypt-share --key PRIVATE.pem ENCRYPTED-SHARE")
	keyPath := fs.String("key", "", "the operator's X25519 private key (PEM PKCS#8)")
	cf := clientFlags{env: env}
	fs.StringVar(&cf.format, "format", "text", "output format: text or json")
	fs.StringVar(&cf.field, "field", "", "print only this field of the JSON output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cf.addr = "-"
	if err := cf.validate(); err != nil {
		return err
	}
	if *keyPath == "" || fs.NArg() != 1 {
		return usagef("--key and one encrypted share are required")
	}
	key, err := os.ReadFile(*keyPath)
	if err != nil {
		return err
	}
	share, err := seal.DecryptShare(key, fs.Arg(0))
	if err != nil {
		return err
	}
	return cf.output(map[string]any{"share": share}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, share)
		return err
	})
}

func runOperatorRotate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator rotate", "sigil operator rotate  (adds a new barrier data key)")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 0, 0, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewSysServiceClient(conn).RotateKey(ctx, &sigilv1.RotateKeyRequest{})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"key_version": resp.GetKeyVersion()}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "barrier key version %d is now used for new values\n", resp.GetKeyVersion())
			return err
		})
	})
}

func runOperatorRewrap(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator rewrap", "sigil operator rewrap  (re-encrypts stored secrets under the newest barrier key)")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 0, 0, 10*time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewSysServiceClient(conn).Rewrap(ctx, &sigilv1.RewrapRequest{})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"rewrapped": resp.GetRewrapped(), "already_current": resp.GetAlreadyCurrent()}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "rewrapped %d values (%d already current)\n", resp.GetRewrapped(), resp.GetAlreadyCurrent())
			return err
		})
	})
}
