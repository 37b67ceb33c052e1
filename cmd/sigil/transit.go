package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/engines/transit"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// splitMountKey splits MOUNT/KEY at its last slash.
func splitMountKey(arg string) (string, string, error) {
	i := strings.LastIndexByte(arg, '/')
	if i <= 0 || i == len(arg)-1 {
		return "", "", usagef("%q: want MOUNT/KEY", arg)
	}
	return arg[:i], arg[i+1:], nil
}

// transitInput is the data argument, or stdin when it is absent or "-",
// bounded to the server's limit so an oversized input fails here with the
// same message.
func transitInput(env *cliEnv, args []string) ([]byte, error) {
	if len(args) > 0 && args[0] != "-" {
		return []byte(args[0]), nil
	}
	b, err := io.ReadAll(io.LimitReader(env.stdin, transit.MaxInput+1))
	if err != nil {
		return nil, err
	}
	if len(b) > transit.MaxInput {
		return nil, fmt.Errorf("input exceeds %d bytes (1 MiB), transit's limit per item", transit.MaxInput)
	}
	return b, nil
}

// transitCall parses MOUNT/KEY plus between minArgs and maxArgs more
// arguments and runs fn on a connection.
func transitCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, minArgs, maxArgs int,
	fn func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, rest []string) error) error {
	return call(ctx, fs, cf, args, 1+minArgs, 1+maxArgs, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		mount, name, err := splitMountKey(fs.Arg(0))
		if err != nil {
			return err
		}
		return fn(ctx, sigilv1.NewTransitServiceClient(conn), mount, name, fs.Args()[1:])
	})
}

func printTransitKey(cf *clientFlags, k *sigilv1.TransitKeyInfo) error {
	var versions []map[string]any
	for _, v := range k.GetVersions() {
		m := map[string]any{"version": v.GetVersion(), "created_at": time.Unix(v.GetCreatedAtUnix(), 0).UTC()}
		if v.GetPublicKeyPem() != "" {
			m["public_key"] = v.GetPublicKeyPem()
		}
		versions = append(versions, m)
	}
	view := map[string]any{"name": k.GetName(), "type": k.GetType(), "managed": k.GetManaged(), "latest_version": k.GetLatestVersion(),
		"min_decryption_version": k.GetMinDecryptionVersion(), "deletion_allowed": k.GetDeletionAllowed(), "versions": versions}
	return cf.output(view, func(w io.Writer) error {
		fmt.Fprintf(w, "name                    %s\ntype                    %s\nlatest_version          %d\nmin_decryption_version  %d\ndeletion_allowed        %v\n",
			k.GetName(), k.GetType(), k.GetLatestVersion(), k.GetMinDecryptionVersion(), k.GetDeletionAllowed())
		for _, v := range k.GetVersions() {
			fmt.Fprintf(w, "version %d               created %s\n", v.GetVersion(), time.Unix(v.GetCreatedAtUnix(), 0).UTC().Format(time.RFC3339))
			if v.GetPublicKeyPem() != "" {
				fmt.Fprint(w, v.GetPublicKeyPem())
			}
		}
		return nil
	})
}

// transitKeyCommand is a key command answered with the key's description:
// flags adds its own flags and returns how they fill the request.
func transitKeyCommand(name, usage string, flags func(fs *flag.FlagSet) func(*sigilv1.TransitKeyRequest),
	rpc func(context.Context, sigilv1.TransitServiceClient, *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error)) func(context.Context, *cliEnv, []string) error {
	return func(ctx context.Context, env *cliEnv, args []string) error {
		var cf clientFlags
		fs := newFlagSet(env, "transit "+name, usage)
		cf.register(fs, env)
		fill := func(*sigilv1.TransitKeyRequest) {}
		if flags != nil {
			fill = flags(fs)
		}
		return transitCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, key string, _ []string) error {
			req := &sigilv1.TransitKeyRequest{Mount: mount, Name: key}
			fill(req)
			k, err := rpc(ctx, c, req)
			if err != nil {
				return err
			}
			return printTransitKey(&cf, k)
		})
	}
}

func runTransitCreate(ctx context.Context, env *cliEnv, args []string) error {
	return transitKeyCommand("create", "sigil transit create MOUNT/KEY [--type "+strings.Join(transit.KeyTypes, "|")+"] [--managed]",
		func(fs *flag.FlagSet) func(*sigilv1.TransitKeyRequest) {
			typ := fs.String("type", transit.AES256GCM, "key type")
			managed := fs.Bool("managed", false, "generate and use the key inside the HSM (aes256-gcm, needs hsm.uri)")
			return func(r *sigilv1.TransitKeyRequest) { r.Type, r.Managed = *typ, *managed }
		},
		func(ctx context.Context, c sigilv1.TransitServiceClient, r *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
			return c.CreateKey(ctx, r)
		})(ctx, env, args)
}

func runTransitRotate(ctx context.Context, env *cliEnv, args []string) error {
	return transitKeyCommand("rotate", "sigil transit rotate MOUNT/KEY", nil,
		func(ctx context.Context, c sigilv1.TransitServiceClient, r *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
			return c.RotateKey(ctx, r)
		})(ctx, env, args)
}

func runTransitRead(ctx context.Context, env *cliEnv, args []string) error {
	return transitKeyCommand("read", "sigil transit read MOUNT/KEY", nil,
		func(ctx context.Context, c sigilv1.TransitServiceClient, r *sigilv1.TransitKeyRequest) (*sigilv1.TransitKeyInfo, error) {
			return c.ReadKey(ctx, r)
		})(ctx, env, args)
}

func runTransitConfig(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit config", "sigil transit config MOUNT/KEY [--min-decryption-version N] [--deletion-allowed true|false]")
	cf.register(fs, env)
	minVer := fs.Int("min-decryption-version", 0, "oldest version that may still decrypt or verify")
	del := fs.String("deletion-allowed", "", "true or false")
	return transitCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, _ []string) error {
		req := &sigilv1.ConfigureTransitKeyRequest{Mount: mount, Name: name, MinDecryptionVersion: int32(*minVer)}
		if *del != "" {
			b, err := strconv.ParseBool(*del)
			if err != nil {
				return usagef("--deletion-allowed %q: want true or false", *del)
			}
			req.DeletionAllowed = &b
		}
		k, err := c.ConfigureKey(ctx, req)
		if err != nil {
			return err
		}
		return printTransitKey(&cf, k)
	})
}

func runTransitDelete(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit delete", "sigil transit delete MOUNT/KEY  (the key must allow deletion)")
	cf.register(fs, env)
	return transitCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, _ []string) error {
		if _, err := c.DeleteKey(ctx, &sigilv1.TransitKeyRequest{Mount: mount, Name: name}); err != nil {
			return err
		}
		return cf.output(map[string]any{"key": mount + "/" + name, "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "deleted %s/%s\n", mount, name)
			return err
		})
	})
}

func runTransitList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit list", "sigil transit list MOUNT")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 1, 1, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewTransitServiceClient(conn).ListKeys(ctx, &sigilv1.ListTransitKeysRequest{Mount: fs.Arg(0)})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"keys": resp.GetNames()}, func(w io.Writer) error {
			for _, n := range resp.GetNames() {
				fmt.Fprintln(w, n)
			}
			return nil
		})
	})
}

// batchResult returns the single result of a one-item batch.
func batchResult(resp *sigilv1.TransitBatchResponse) (*sigilv1.TransitResult, error) {
	if len(resp.GetResults()) != 1 {
		return nil, errors.New("server answered a different number of items")
	}
	r := resp.GetResults()[0]
	if r.GetError() != "" {
		return nil, errors.New(r.GetError())
	}
	return r, nil
}

func runTransitEncrypt(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit encrypt", "sigil transit encrypt MOUNT/KEY [PLAINTEXT|-] [--aad S]  (no PLAINTEXT: stdin)")
	cf.register(fs, env)
	aad := fs.String("aad", "", "associated data (must be given again to decrypt)")
	return transitCall(ctx, fs, &cf, args, 0, 1, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, rest []string) error {
		pt, err := transitInput(env, rest)
		if err != nil {
			return err
		}
		resp, err := c.Encrypt(ctx, &sigilv1.TransitBatchRequest{Mount: mount, Name: name,
			Items: []*sigilv1.TransitItem{{Plaintext: pt, AssociatedData: []byte(*aad)}}})
		clear(pt)
		if err != nil {
			return err
		}
		r, err := batchResult(resp)
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"ciphertext": r.GetCiphertext()}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, r.GetCiphertext())
			return err
		})
	})
}

func runTransitDecrypt(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit decrypt", "sigil transit decrypt MOUNT/KEY CIPHERTEXT [--aad S]  (prints the raw plaintext)")
	cf.register(fs, env)
	aad := fs.String("aad", "", "associated data given at encryption")
	return transitCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, rest []string) error {
		k, err := newOneCallKey()
		if err != nil {
			return err
		}
		resp, err := c.Decrypt(ctx, &sigilv1.TransitBatchRequest{Mount: mount, Name: name, Recipient: k.Recipient,
			Items: []*sigilv1.TransitItem{{Ciphertext: strings.TrimSpace(rest[0]), AssociatedData: []byte(*aad)}}})
		if err != nil {
			return err
		}
		if _, err := batchResult(resp); err != nil {
			return err
		}
		data, err := k.open(resp.GetEnvelope(), "transit:"+mount+"/"+name, "plaintext")
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"plaintext": data["0"]}, func(w io.Writer) error {
			pt, err := base64.StdEncoding.DecodeString(data["0"])
			if err != nil {
				return fmt.Errorf("server sent a malformed plaintext: %w", err)
			}
			_, err = w.Write(pt)
			return err
		})
	})
}

func runTransitRewrap(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit rewrap", "sigil transit rewrap MOUNT/KEY CIPHERTEXT [--aad S]")
	cf.register(fs, env)
	aad := fs.String("aad", "", "associated data given at encryption")
	return transitCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, rest []string) error {
		resp, err := c.Rewrap(ctx, &sigilv1.TransitBatchRequest{Mount: mount, Name: name,
			Items: []*sigilv1.TransitItem{{Ciphertext: strings.TrimSpace(rest[0]), AssociatedData: []byte(*aad)}}})
		if err != nil {
			return err
		}
		r, err := batchResult(resp)
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"ciphertext": r.GetCiphertext()}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, r.GetCiphertext())
			return err
		})
	})
}

func runTransitDataKey(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "transit datakey", "sigil transit datakey MOUNT/KEY [--bits 256] [--wrapped-only] [--aad S]")
	cf.register(fs, env)
	bits := fs.Int("bits", 256, "data key size: 128, 256 or 512")
	wrappedOnly := fs.Bool("wrapped-only", false, "return only the encrypted copy")
	aad := fs.String("aad", "", "associated data for the encrypted copy")
	return transitCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, _ []string) error {
		req := &sigilv1.DataKeyRequest{Mount: mount, Name: name, Bits: int32(*bits), WrappedOnly: *wrappedOnly, AssociatedData: []byte(*aad)}
		var k *oneCallKey
		if !*wrappedOnly {
			var err error
			if k, err = newOneCallKey(); err != nil {
				return err
			}
			req.Recipient = k.Recipient
		}
		resp, err := c.DataKey(ctx, req)
		if err != nil {
			return err
		}
		out := map[string]any{"ciphertext": resp.GetCiphertext()}
		if k != nil {
			data, err := k.open(resp.GetEnvelope(), "transit:"+mount+"/"+name, "data key")
			if err != nil {
				return err
			}
			out["plaintext"] = data["plaintext"]
		}
		return cf.output(out, func(w io.Writer) error {
			fmt.Fprintf(w, "ciphertext  %s\n", resp.GetCiphertext())
			if p, ok := out["plaintext"]; ok {
				fmt.Fprintf(w, "plaintext   %s\n", p)
			}
			return nil
		})
	})
}

// runTransitSignLike is sign and hmac: INPUT (or stdin) → sigil:vN:….
func runTransitSignLike(hmacOp bool) func(context.Context, *cliEnv, []string) error {
	op := "sign"
	if hmacOp {
		op = "hmac"
	}
	return func(ctx context.Context, env *cliEnv, args []string) error {
		var cf clientFlags
		fs := newFlagSet(env, "transit "+op, "sigil transit "+op+" MOUNT/KEY [INPUT|-]  (no INPUT: stdin)")
		cf.register(fs, env)
		prehashed := fs.Bool("prehashed", false, "INPUT is a SHA-256 digest (sign with ECDSA or RSA)")
		pkcs1 := fs.Bool("pkcs1v15", false, "RSA: PKCS #1 v1.5 instead of PSS")
		return transitCall(ctx, fs, &cf, args, 0, 1, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, rest []string) error {
			in, err := transitInput(env, rest)
			if err != nil {
				return err
			}
			req := &sigilv1.TransitSignRequest{Mount: mount, Name: name, Input: in, Prehashed: *prehashed, Pkcs1V15: *pkcs1}
			var resp *sigilv1.TransitSignResponse
			if hmacOp {
				resp, err = c.HMAC(ctx, req)
			} else {
				resp, err = c.Sign(ctx, req)
			}
			if err != nil {
				return err
			}
			return cf.output(map[string]any{op: resp.GetSignature()}, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, resp.GetSignature())
				return err
			})
		})
	}
}

// runTransitVerifyLike is verify and verify-hmac; it exits 1 when invalid.
func runTransitVerifyLike(hmacOp bool) func(context.Context, *cliEnv, []string) error {
	op := "verify"
	if hmacOp {
		op = "verify-hmac"
	}
	return func(ctx context.Context, env *cliEnv, args []string) error {
		var cf clientFlags
		fs := newFlagSet(env, "transit "+op, "sigil transit "+op+" MOUNT/KEY SIGNATURE [INPUT|-]  (no INPUT: stdin; exit 1 if invalid)")
		cf.register(fs, env)
		prehashed := fs.Bool("prehashed", false, "INPUT is a SHA-256 digest")
		pkcs1 := fs.Bool("pkcs1v15", false, "RSA: PKCS #1 v1.5 instead of PSS")
		return transitCall(ctx, fs, &cf, args, 1, 2, func(ctx context.Context, c sigilv1.TransitServiceClient, mount, name string, rest []string) error {
			in, err := transitInput(env, rest[1:])
			if err != nil {
				return err
			}
			req := &sigilv1.TransitVerifyRequest{Mount: mount, Name: name, Input: in, Signature: strings.TrimSpace(rest[0]),
				Prehashed: *prehashed, Pkcs1V15: *pkcs1}
			var resp *sigilv1.TransitVerifyResponse
			if hmacOp {
				resp, err = c.VerifyHMAC(ctx, req)
			} else {
				resp, err = c.Verify(ctx, req)
			}
			if err != nil {
				return err
			}
			if err := cf.output(map[string]any{"valid": resp.GetValid()}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "valid  %v\n", resp.GetValid())
				return err
			}); err != nil {
				return err
			}
			if !resp.GetValid() {
				return errors.New(op + ": not valid")
			}
			return nil
		})
	}
}
