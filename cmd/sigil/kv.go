package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"gopkg.in/yaml.v3"

	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// kvMaxInput bounds one value read from a file or stdin (the server's
// configurable ceiling; the mount's own limit is usually lower).
const kvMaxInput = kv.MaxMaxValueBytes

// kvSplit splits MOUNT/PATH. The mount is the first segment unless
// --mount names a longer one, as `vault kv` resolves it.
func kvSplit(mountFlag, arg string) (string, string, error) {
	if mountFlag != "" {
		p, ok := strings.CutPrefix(arg, mountFlag+"/")
		if !ok {
			return "", "", usagef("%q is not under --mount %s", arg, mountFlag)
		}
		return mountFlag, p, nil
	}
	m, p, ok := strings.Cut(arg, "/")
	if !ok || m == "" || p == "" {
		return "", "", usagef("%q: want MOUNT/PATH (for example kv/apps/web)", arg)
	}
	return m, p, nil
}

// kvFields parses NAME=VALUE arguments: VALUE @FILE reads a file and -
// reads stdin (once), both byte for byte.
func kvFields(env *cliEnv, args []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(args))
	stdinUsed := false
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usagef("%q: want NAME=VALUE, NAME=@FILE or NAME=- (stdin)", a)
		}
		if _, dup := out[k]; dup {
			return nil, usagef("field %q given twice", k)
		}
		var b []byte
		var err error
		switch {
		case v == "-":
			if stdinUsed {
				return nil, usagef("only one field can be read from stdin")
			}
			stdinUsed = true
			b, err = readBounded(env.stdin, "stdin")
		case strings.HasPrefix(v, "@"):
			var f *os.File
			if f, err = os.Open(v[1:]); err == nil {
				b, err = readBounded(f, v[1:])
				f.Close()
			}
		default:
			b = []byte(v)
		}
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", k, err)
		}
		out[k] = b
	}
	return out, nil
}

func readBounded(r io.Reader, name string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, kvMaxInput+1))
	if err != nil {
		return nil, err
	}
	if len(b) > kvMaxInput {
		return nil, fmt.Errorf("%s is larger than %d bytes, the most a kv secret can hold", name, kvMaxInput)
	}
	return b, nil
}

// kvCall parses flags and MOUNT/PATH plus minArgs..maxArgs (-1: any) more
// arguments and runs fn on a connection.
func kvCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, mount *string, args []string, minArgs, maxArgs int,
	fn func(ctx context.Context, c sigilv1.KVServiceClient, mount, path string, rest []string) error) error {
	max := maxArgs
	if max >= 0 {
		max++
	}
	return call(ctx, fs, cf, args, 1+minArgs, max, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		m, p, err := kvSplit(*mount, fs.Arg(0))
		if err != nil {
			return err
		}
		return fn(ctx, sigilv1.NewKVServiceClient(conn), m, p, fs.Args()[1:])
	})
}

func kvFlags(env *cliEnv, name, usage string) (*flag.FlagSet, *clientFlags, *string) {
	cf := &clientFlags{}
	fs := newFlagSet(env, "kv "+name, usage)
	cf.register(fs, env)
	mount := fs.String("mount", "", "the mount, when it has more than one segment (default: the first segment of MOUNT/PATH)")
	return fs, cf, mount
}

// casFlag is an optional --cas N.
type casFlag struct{ v *int64 }

func (c *casFlag) String() string {
	if c.v == nil {
		return ""
	}
	return strconv.FormatInt(*c.v, 10)
}

func (c *casFlag) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return errors.New("want a version number (0: the secret must not exist yet)")
	}
	c.v = &n
	return nil
}

func printKVVersion(cf *clientFlags, path string, v *sigilv1.KVVersion) error {
	view := map[string]any{"path": path, "version": v.GetVersion(), "created_at": time.Unix(v.GetCreatedAtUnix(), 0).UTC()}
	return cf.output(view, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "%s: version %d\n", path, v.GetVersion())
		return err
	})
}

func runKVWrite(patch bool) func(context.Context, *cliEnv, []string) error {
	name, usage := "put", "sigil kv put MOUNT/PATH NAME=VALUE|NAME=@FILE|NAME=- ... [--cas N]"
	if patch {
		name, usage = "patch", "sigil kv patch MOUNT/PATH [NAME=VALUE|NAME=@FILE|NAME=- ...] [--remove a,b] [--cas N]"
	}
	return func(ctx context.Context, env *cliEnv, args []string) error {
		fs, cf, mount := kvFlags(env, name, usage)
		var c casFlag
		fs.Var(&c, "cas", "write only if the current version is N (0: only if the secret does not exist)")
		remove := new(string)
		if patch {
			remove = fs.String("remove", "", "comma-separated fields to remove")
		}
		minFields := 1
		if patch {
			minFields = 0
		}
		return kvCall(ctx, fs, cf, mount, args, minFields, -1, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, rest []string) error {
			data, err := kvFields(env, rest)
			if err != nil {
				return err
			}
			req := &sigilv1.KVWriteRequest{Mount: m, Path: p, Data: data, Cas: c.v}
			var v *sigilv1.KVVersion
			if patch {
				if *remove != "" {
					req.Remove = strings.Split(*remove, ",")
				}
				if len(data) == 0 && len(req.Remove) == 0 {
					return usagef("kv patch: give fields to set or --remove")
				}
				v, err = kc.Patch(ctx, req)
			} else {
				v, err = kc.Put(ctx, req)
			}
			if err != nil {
				return err
			}
			return printKVVersion(cf, m+"/"+p, v)
		})
	}
}

// recipientKey reads an X25519 public key in PEM (openssl genpkey
// -algorithm X25519, then openssl pkey -pubout).
func recipientKey(file string) (*sigilv1.Recipient, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", file)
	}
	if block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: a %s, not a PUBLIC KEY: give the recipient's public key (openssl pkey -in KEY.pem -pubout)", file, block.Type)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	pub, ok := k.(*ecdh.PublicKey)
	if !ok || pub.Curve() != ecdh.X25519() {
		return nil, fmt.Errorf("%s: the public key is %s, not X25519 (make one with openssl genpkey -algorithm X25519, then openssl pkey -pubout)", file, keyKind(k))
	}
	r := envelope.Recipient{KEM: envelope.KEMX25519HKDFSHA256, PublicKey: pub.Bytes()}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}, nil
}

// keyKind names a parsed public key's type for messages.
func keyKind(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *ecdh.PublicKey:
		return fmt.Sprint(k.Curve())
	case *rsa.PublicKey:
		return "RSA"
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", k)
}

// recipientCert reads a Sigil-issued certificate; the server seals to its
// key after checking it issued it and has not revoked it.
func recipientCert(file string) (*sigilv1.Recipient, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE", file)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &sigilv1.Recipient{CertificateSerial: cert.SerialNumber.Text(16)}, nil
}

// sealedSecret is what a read sealed to someone else prints: the envelope
// and the id it is bound to, for `sigil envelope open`.
type sealedSecret struct {
	ID       string `json:"id"`
	Version  int64  `json:"version"`
	Envelope []byte `json:"envelope"`
}

// printKVData prints a secret's fields: one raw (--field), JSON, or text.
func printKVData(cf *clientFlags, data map[string]string, version int64) error {
	raw := make(map[string][]byte, len(data))
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return fmt.Errorf("field %s: malformed value in the envelope", k)
		}
		raw[k] = b
	}
	if cf.field != "" {
		b, ok := raw[cf.field]
		if !ok {
			names := make([]string, 0, len(raw))
			for k := range raw {
				names = append(names, k)
			}
			sort.Strings(names)
			return fmt.Errorf("the secret has no field %q (fields: %s)", cf.field, strings.Join(names, ", "))
		}
		_, err := cf.env.stdout.Write(b)
		return err
	}
	text, bin := map[string]string{}, map[string]string{}
	for k, b := range raw {
		if utf8.Valid(b) {
			text[k] = string(b)
		} else {
			bin[k] = base64.StdEncoding.EncodeToString(b)
		}
	}
	view := map[string]any{"data": text, "version": version}
	if len(bin) > 0 {
		view["data_base64"] = bin
	}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	sort.Strings(names)
	return cf.output(view, func(w io.Writer) error {
		fmt.Fprintf(w, "version  %d\n", version)
		for _, k := range names {
			if v, ok := text[k]; ok {
				fmt.Fprintf(w, "%s  %s\n", k, v)
			} else {
				fmt.Fprintf(w, "%s  (binary, %d bytes; --field %s prints it raw)\n", k, len(raw[k]), k)
			}
		}
		return nil
	})
}

func runKVGet(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "get", "sigil kv get MOUNT/PATH [--version N] [--field NAME] [--recipient-key PUB.pem | --recipient-cert CERT.pem]")
	version := fs.Int64("version", 0, "version to read (default: the current one)")
	rkey := fs.String("recipient-key", "", "seal the secret to this X25519 public key (PEM) instead of reading it here; open with sigil envelope open")
	rcert := fs.String("recipient-cert", "", "seal the secret to this Sigil-issued certificate's key instead of reading it here")
	return kvCall(ctx, fs, cf, mount, args, 0, 0, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, _ []string) error {
		if *version < 0 {
			return usagef("--version must be 1 or more")
		}
		req := &sigilv1.KVGetRequest{Mount: m, Path: p, Version: *version}
		id := "kv:" + m + "/data/" + p
		if *rkey != "" || *rcert != "" {
			if *rkey != "" && *rcert != "" {
				return usagef("give --recipient-key or --recipient-cert, not both")
			}
			var err error
			if *rkey != "" {
				req.Recipient, err = recipientKey(*rkey)
			} else {
				req.Recipient, err = recipientCert(*rcert)
			}
			if err != nil {
				return err
			}
			resp, err := kc.Get(ctx, req)
			if err != nil {
				return err
			}
			return printJSON(env.stdout, sealedSecret{ID: id, Version: resp.GetVersion().GetVersion(), Envelope: resp.GetEnvelope()})
		}
		k, err := newOneCallKey()
		if err != nil {
			return err
		}
		req.Recipient = k.Recipient
		resp, err := kc.Get(ctx, req)
		if err != nil {
			return err
		}
		data, err := k.open(resp.GetEnvelope(), id, "secret")
		if err != nil {
			return err
		}
		return printKVData(cf, data, resp.GetVersion().GetVersion())
	})
}

// privateKey reads an envelope recipient's private key: X25519 (PKCS#8)
// or ECDSA P-256 (a certificate's key).
func privateKey(file string) (hpke.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM key", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		ek, err2 := x509.ParseECPrivateKey(block.Bytes)
		if err2 != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		k = ek
	}
	switch k := k.(type) {
	case *ecdh.PrivateKey:
		if k.Curve() != ecdh.X25519() {
			return nil, fmt.Errorf("%s: want an X25519 or ECDSA P-256 key", file)
		}
		return envelope.ParsePrivateKey(envelope.KEMX25519HKDFSHA256, k.Bytes())
	case *ecdsa.PrivateKey:
		return envelope.PrivateKeyFromECDSA(k)
	}
	return nil, fmt.Errorf("%s: want an X25519 or ECDSA P-256 key", file)
}

func runEnvelopeOpen(ctx context.Context, env *cliEnv, args []string) error {
	cf := &clientFlags{env: env}
	fs := newFlagSet(env, "envelope open", "sigil envelope open --key KEY.pem [--id ID] [--field NAME] [FILE|-]")
	fs.StringVar(&cf.format, "format", "text", "output format: text or json")
	fs.StringVar(&cf.field, "field", "", "print only this field, raw")
	keyFile := fs.String("key", "", "the recipient's private key (PEM: X25519, or a certificate's ECDSA P-256 key)")
	wantID := fs.String("id", "", "the id the envelope must be bound to (default: the id in the file)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 0, 1); err != nil {
		return err
	}
	if *keyFile == "" {
		return usagef("envelope open needs --key")
	}
	var in io.Reader = env.stdin
	if a := fs.Arg(0); a != "" && a != "-" {
		f, err := os.Open(a)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	b, err := io.ReadAll(io.LimitReader(in, 2*envelope.MaxPayload))
	if err != nil {
		return err
	}
	var s sealedSecret
	if err := json.Unmarshal(b, &s); err != nil || len(s.Envelope) == 0 {
		return fmt.Errorf("input is not a sealed secret (the JSON sigil kv get --recipient-key prints)")
	}
	id := s.ID
	if *wantID != "" {
		id = *wantID
	}
	priv, err := privateKey(*keyFile)
	if err != nil {
		return err
	}
	var en envelope.Envelope
	if err := en.UnmarshalBinary(s.Envelope); err != nil {
		return fmt.Errorf("malformed envelope: %w", err)
	}
	data, err := envelope.OpenData(priv, &en, id)
	if err != nil {
		return fmt.Errorf("open the envelope (wrong key, or not bound to %s): %w", id, err)
	}
	return printKVData(cf, data, s.Version)
}

func runKVList(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "list", "sigil kv list MOUNT[/PREFIX] [--after CURSOR] [--limit N]")
	after := fs.String("after", "", "cursor from the previous page")
	limit := fs.Int("limit", 100, "keys per page (at most 1000)")
	return call(ctx, fs, cf, args, 1, 1, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		arg := strings.TrimSuffix(fs.Arg(0), "/")
		m, prefix := arg, ""
		if *mount != "" {
			m = *mount
			prefix = strings.TrimPrefix(strings.TrimPrefix(arg, *mount), "/")
		} else if i := strings.IndexByte(arg, '/'); i >= 0 {
			m, prefix = arg[:i], arg[i+1:]
		}
		if prefix != "" {
			prefix += "/"
		}
		resp, err := sigilv1.NewKVServiceClient(conn).List(ctx, &sigilv1.KVListRequest{Mount: m, Prefix: prefix, After: *after, Limit: int32(*limit)})
		if err != nil {
			return err
		}
		view := map[string]any{"keys": resp.GetKeys(), "next": resp.GetNext()}
		return cf.output(view, func(w io.Writer) error {
			for _, k := range resp.GetKeys() {
				fmt.Fprintln(w, k)
			}
			if resp.GetNext() != "" {
				fmt.Fprintf(env.stderr, "more: --after %q\n", resp.GetNext())
			}
			return nil
		})
	})
}

func int64s(vs []int) []int64 {
	out := make([]int64, len(vs))
	for i, v := range vs {
		out[i] = int64(v)
	}
	return out
}

func runKVVersions(op string) func(context.Context, *cliEnv, []string) error {
	return func(ctx context.Context, env *cliEnv, args []string) error {
		usage := "sigil kv " + op + " MOUNT/PATH --versions 1,2"
		if op == "delete" {
			usage = "sigil kv delete MOUNT/PATH [--versions 1,2] (default: the current version)"
		}
		fs, cf, mount := kvFlags(env, op, usage)
		versions := fs.String("versions", "", "comma-separated version numbers")
		return kvCall(ctx, fs, cf, mount, args, 0, 0, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, _ []string) error {
			vs, err := kv.ParseVersions(*versions)
			if err != nil {
				return usagef("--versions %q: want numbers like 1,2", *versions)
			}
			if op != "delete" && len(vs) == 0 {
				return usagef("kv %s needs --versions", op)
			}
			req := &sigilv1.KVVersionsRequest{Mount: m, Path: p, Versions: int64s(vs)}
			var resp *sigilv1.KVVersionsResponse
			switch op {
			case "delete":
				resp, err = kc.Delete(ctx, req)
			case "undelete":
				resp, err = kc.Undelete(ctx, req)
			default:
				resp, err = kc.Destroy(ctx, req)
			}
			if err != nil {
				return err
			}
			return cf.output(map[string]any{"path": m + "/" + p, "changed": resp.GetChanged()}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s: %s %d version(s)\n", m+"/"+p, op+"d", resp.GetChanged())
				return err
			})
		})
	}
}

func runKVRollback(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "rollback", "sigil kv rollback MOUNT/PATH --version N [--cas N]")
	version := fs.Int64("version", 0, "the version to restore as the new current one")
	var c casFlag
	fs.Var(&c, "cas", "write only if the current version is N")
	return kvCall(ctx, fs, cf, mount, args, 0, 0, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, _ []string) error {
		if *version < 1 {
			return usagef("kv rollback needs --version N (1 or more)")
		}
		v, err := kc.Rollback(ctx, &sigilv1.KVRollbackRequest{Mount: m, Path: p, Version: *version, Cas: c.v})
		if err != nil {
			return err
		}
		return printKVVersion(cf, m+"/"+p, v)
	})
}

func printKVMetadata(cf *clientFlags, md *sigilv1.KVMetadata) error {
	var versions []map[string]any
	for _, v := range md.GetVersions() {
		e := map[string]any{"version": v.GetVersion(), "created_at": time.Unix(v.GetCreatedAtUnix(), 0).UTC(), "destroyed": v.GetDestroyed()}
		if v.GetDeletedAtUnix() != 0 {
			e["deleted_at"] = time.Unix(v.GetDeletedAtUnix(), 0).UTC()
		}
		versions = append(versions, e)
	}
	view := map[string]any{"path": md.GetPath(), "current_version": md.GetCurrentVersion(), "oldest_version": md.GetOldestVersion(),
		"max_versions": md.GetMaxVersions(), "cas_required": md.GetCasRequired(),
		"delete_version_after": (time.Duration(md.GetDeleteVersionAfterSeconds()) * time.Second).String(),
		"custom_metadata":      md.GetCustom(), "created_at": time.Unix(md.GetCreatedAtUnix(), 0).UTC(),
		"updated_at": time.Unix(md.GetUpdatedAtUnix(), 0).UTC(), "versions": versions}
	return cf.output(view, func(w io.Writer) error {
		fmt.Fprintf(w, "current_version       %d\noldest_version        %d\nmax_versions          %d\ncas_required          %v\ndelete_version_after  %s\n",
			md.GetCurrentVersion(), md.GetOldestVersion(), md.GetMaxVersions(), md.GetCasRequired(), view["delete_version_after"])
		keys := make([]string, 0, len(md.GetCustom()))
		for k := range md.GetCustom() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "custom.%s  %s\n", k, md.GetCustom()[k])
		}
		for _, v := range md.GetVersions() {
			state := "live"
			switch {
			case v.GetDestroyed():
				state = "destroyed"
			case v.GetDeletedAtUnix() != 0:
				state = "deleted"
			}
			fmt.Fprintf(w, "version %d  %s  %s\n", v.GetVersion(), time.Unix(v.GetCreatedAtUnix(), 0).UTC().Format(time.RFC3339), state)
		}
		return nil
	})
}

func runKVMetadataGet(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "metadata get", "sigil kv metadata get MOUNT/PATH")
	return kvCall(ctx, fs, cf, mount, args, 0, 0, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, _ []string) error {
		md, err := kc.ReadMetadata(ctx, &sigilv1.KVPathRequest{Mount: m, Path: p})
		if err != nil {
			return err
		}
		return printKVMetadata(cf, md)
	})
}

func runKVMetadataPut(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "metadata put",
		"sigil kv metadata put MOUNT/PATH [max_versions=N] [cas_required=true|false] [delete_version_after=DURATION] [custom.KEY=VALUE ...] [--clear-custom]")
	clearCustom := fs.Bool("clear-custom", false, "remove all custom metadata")
	return kvCall(ctx, fs, cf, mount, args, 0, -1, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, rest []string) error {
		req := &sigilv1.KVWriteMetadataRequest{Mount: m, Path: p, ReplaceCustom: *clearCustom}
		for _, a := range rest {
			k, v, ok := strings.Cut(a, "=")
			if !ok {
				return usagef("%q: want KEY=VALUE", a)
			}
			switch {
			case k == "max_versions":
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n < 0 {
					return usagef("max_versions=%q: want a number (0: the mount's default)", v)
				}
				req.MaxVersions = &n
			case k == "cas_required":
				b, err := strconv.ParseBool(v)
				if err != nil {
					return usagef("cas_required=%q: want true or false", v)
				}
				req.CasRequired = &b
			case k == "delete_version_after":
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return usagef("delete_version_after=%q: want a duration such as 720h (0: never)", v)
				}
				s := int64(d / time.Second)
				req.DeleteVersionAfterSeconds = &s
			case strings.HasPrefix(k, "custom.") && len(k) > len("custom."):
				if req.Custom == nil {
					req.Custom = map[string]string{}
				}
				req.Custom[k[len("custom."):]] = v
				req.ReplaceCustom = true
			default:
				return usagef("unknown metadata %q (want max_versions, cas_required, delete_version_after or custom.KEY)", k)
			}
		}
		if req.ReplaceCustom && !*clearCustom && req.Custom != nil {
			// custom.KEY=VALUE adds to what is there: read it first.
			cur, err := kc.ReadMetadata(ctx, &sigilv1.KVPathRequest{Mount: m, Path: p})
			if err == nil {
				for k, v := range cur.GetCustom() {
					if _, set := req.Custom[k]; !set {
						req.Custom[k] = v
					}
				}
			}
		}
		md, err := kc.WriteMetadata(ctx, req)
		if err != nil {
			return err
		}
		return printKVMetadata(cf, md)
	})
}

func runKVMetadataDelete(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "metadata delete", "sigil kv metadata delete MOUNT/PATH  (removes every version)")
	return kvCall(ctx, fs, cf, mount, args, 0, 0, func(ctx context.Context, kc sigilv1.KVServiceClient, m, p string, _ []string) error {
		if _, err := kc.DeleteMetadata(ctx, &sigilv1.KVPathRequest{Mount: m, Path: p}); err != nil {
			return err
		}
		return cf.output(map[string]any{"path": m + "/" + p, "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "deleted %s and all its versions\n", m+"/"+p)
			return err
		})
	})
}

// kvImportMaxFile bounds an import file: many secrets, each under the
// per-secret ceiling.
const kvImportMaxFile = 64 << 20

// kvImportSecret is one secret an import will put.
type kvImportSecret struct {
	path string
	data map[string][]byte
}

// kvNode follows a YAML alias to what it names.
func kvNode(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// kvMapGet returns the value under key in a mapping node, or nil.
func kvMapGet(n *yaml.Node, key string) *yaml.Node {
	n = kvNode(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return kvNode(n.Content[i+1])
		}
	}
	return nil
}

func kvIsMap(n *yaml.Node) bool { n = kvNode(n); return n != nil && n.Kind == yaml.MappingNode }

// kvIsVaultGet reports whether n is what `vault kv get -format=json`
// prints: {"data": {"data": {...}, "metadata": {...}}, ...}.
func kvIsVaultGet(n *yaml.Node) bool {
	d := kvMapGet(n, "data")
	return kvIsMap(kvMapGet(d, "data")) && kvMapGet(d, "metadata") != nil
}

// kvParseImport reads a tree of secrets, JSON or YAML (JSON is read as
// YAML, so scalars keep the text they were written with):
//
//   - a map of path → secret, where a secret is {field: value}, Vault's
//     `kv get -format=json` output ({"data": {"data": {...}}}), its inner
//     {"data": {...}, "metadata": {...}}, or `sigil kv get --format json`
//     output ({"data": {...}, "data_base64": {...}});
//   - with single set, the whole file is that one secret (any of the
//     secret shapes above).
//
// Everything is checked before anything is written: each error names the
// path (and field) at fault.
func kvParseImport(b []byte, single string) ([]kvImportSecret, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty: want a map of path to {field: value}")
		}
		return nil, fmt.Errorf("not JSON or YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("the file holds more than one YAML document: import one tree at a time")
	}
	root := kvNode(&doc)
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = kvNode(root.Content[0])
	}
	if root.Kind != yaml.MappingNode {
		return nil, errors.New("the file is not a map: want a map of path to {field: value}, or one secret with --path")
	}
	var out []kvImportSecret
	if single != "" {
		data, err := kvImportFields(single, root)
		if err != nil {
			return nil, err
		}
		out = append(out, kvImportSecret{path: single, data: data})
	} else {
		if kvIsVaultGet(root) {
			return nil, errors.New("the file is one secret as `vault kv get -format=json` prints it (it carries no path): give --path PATH")
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(root.Content); i += 2 {
			k := root.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a path must be a string", k.Line)
			}
			p := strings.TrimPrefix(k.Value, "/")
			if seen[p] {
				return nil, fmt.Errorf("%s: the path is given twice", p)
			}
			seen[p] = true
			data, err := kvImportFields(p, root.Content[i+1])
			if err != nil {
				return nil, err
			}
			out = append(out, kvImportSecret{path: p, data: data})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the file holds no secrets")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out, nil
}

// kvImportFields reads one secret's fields and checks them against the
// engine's limits (the per-secret size against the configurable ceiling:
// a mount set lower refuses at the server).
func kvImportFields(path string, n *yaml.Node) (map[string][]byte, error) {
	if err := kv.CheckPath(path); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	n = kvNode(n)
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s (line %d): want a map of field to value", path, n.Line)
	}
	fields, b64 := n, (*yaml.Node)(nil)
	if d := kvMapGet(n, "data"); kvIsMap(d) {
		// A wrapper: Vault's whole output, its inner data, or sigil's.
		if dd := kvMapGet(d, "data"); kvIsMap(dd) {
			fields = dd
		} else {
			fields, b64 = d, kvMapGet(n, "data_base64")
		}
	}
	data := map[string][]byte{}
	total := 0
	add := func(m *yaml.Node, base64Values bool) error {
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], kvNode(m.Content[i+1])
			name := k.Value
			if k.Kind != yaml.ScalarNode || name == "" || len(name) > kv.MaxFieldName || strings.ContainsAny(name, "=\x00") {
				return fmt.Errorf("%s (line %d): field name %q: want 1 to %d bytes, without '=' or NUL", path, k.Line, name, kv.MaxFieldName)
			}
			if _, dup := data[name]; dup {
				return fmt.Errorf("%s: field %s is given twice", path, name)
			}
			if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
				return fmt.Errorf("%s: field %s (line %d): want a string, number or boolean, not a nested map, list or null (store nested JSON as a string)", path, name, v.Line)
			}
			b := []byte(v.Value)
			if base64Values || v.Tag == "!!binary" {
				var err error
				if b, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(v.Value), "")); err != nil {
					return fmt.Errorf("%s: field %s: not valid base64: %w", path, name, err)
				}
			}
			data[name] = b
			total += len(name) + len(b)
		}
		return nil
	}
	if err := add(fields, false); err != nil {
		return nil, err
	}
	if b64 != nil {
		if !kvIsMap(b64) {
			return nil, fmt.Errorf("%s: data_base64 must be a map of field to base64 value", path)
		}
		if err := add(b64, true); err != nil {
			return nil, err
		}
	}
	switch {
	case len(data) == 0:
		return nil, fmt.Errorf("%s: the secret has no fields", path)
	case len(data) > kv.MaxFields:
		return nil, fmt.Errorf("%s: %d fields, at most %d", path, len(data), kv.MaxFields)
	case total > kvMaxInput:
		return nil, fmt.Errorf("%s: the secret is %d bytes, larger than %d, the most a kv secret can hold", path, total, kvMaxInput)
	}
	return data, nil
}

// runKVImport puts a tree of secrets under a mount: everything is parsed
// and checked first, so bad input writes nothing.
func runKVImport(ctx context.Context, env *cliEnv, args []string) error {
	fs, cf, mount := kvFlags(env, "import", "sigil kv import --mount MOUNT [--path PATH] FILE|-  (JSON or YAML: a map of path to {field: value}, or with --path one secret, such as `vault kv get -format=json` prints)")
	single := fs.String("path", "", "the file is one secret (for example `vault kv get -format=json` output): put it at PATH")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 1, 1); err != nil {
		return err
	}
	if *mount == "" {
		return usagef("kv import: --mount MOUNT is required (the secrets' paths are under it)")
	}
	name := fs.Arg(0)
	var b []byte
	var err error
	if name == "-" {
		b, err = readImportFile(env.stdin, "stdin")
	} else {
		var f *os.File
		if f, err = os.Open(name); err == nil {
			b, err = readImportFile(f, name)
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("kv import: %w", err)
	}
	secrets, err := kvParseImport(b, *single)
	if err != nil {
		return fmt.Errorf("kv import %s: nothing written: %w", name, err)
	}
	return withConn(ctx, cf, 10*time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		kc := sigilv1.NewKVServiceClient(conn)
		fields := 0
		views := make([]map[string]any, 0, len(secrets))
		for i, s := range secrets {
			v, err := kc.Put(ctx, &sigilv1.KVWriteRequest{Mount: *mount, Path: s.path, Data: s.data})
			if err != nil {
				// Puts are new versions: what was imported stays, and a rerun
				// after the fix writes the rest (and new versions of the rest).
				// The CLI prints an RPC error as the server's message alone, so
				// the progress goes to stderr first.
				fmt.Fprintf(env.stderr, "kv import: %s/%s was refused: %d of %d secrets were imported before it, the rest were not written\n",
					*mount, s.path, i, len(secrets))
				return fmt.Errorf("kv import: %s/%s: %w", *mount, s.path, err)
			}
			fields += len(s.data)
			views = append(views, map[string]any{"path": *mount + "/" + s.path, "version": v.GetVersion()})
		}
		view := map[string]any{"mount": *mount, "secrets": len(secrets), "fields": fields, "written": views}
		return cf.output(view, func(w io.Writer) error {
			for _, v := range views {
				fmt.Fprintf(w, "%s: version %d\n", v["path"], v["version"])
			}
			_, err := fmt.Fprintf(w, "imported %d secrets (%d fields) into %s\n", len(secrets), fields, *mount)
			return err
		})
	})
}

func readImportFile(r io.Reader, name string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, kvImportMaxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > kvImportMaxFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: split the import", name, kvImportMaxFile)
	}
	return b, nil
}
