package core

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/atomicfile"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/seal"
	"github.com/sigil-ca/sigil/storage"
)

// Settings holding the seal state. Neither is secret: the share config holds
// keyed tags only, and the wrapped master key opens only inside the HSM.
const (
	settingSealConfig    = "seal.shamir_config"
	settingWrappedMaster = "seal.hsm_wrapped_master"
)

// masterWrapKey names the token's AES key that wraps the master key.
const masterWrapKey = "master"

// DevUnsealFile holds the dev server's master key. Only dev mode has one:
// production servers unseal with operator shares or an HSM.
const DevUnsealFile = "dev-unseal.key"

// devRefusesInit is what operator init hears from a dev server.
const devRefusesInit = "a dev server initialises itself at start and refuses operator init"

// isDevDataDir reports a data directory a dev server made: it holds the dev
// master key file.
func (c *Core) isDevDataDir() bool {
	if c.opts.Config.DataDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(c.opts.Config.DataDir, DevUnsealFile))
	return err == nil
}

// devRootTokenFile keeps a dev server's root token across restarts.
const devRootTokenFile = "root-token"

// Start brings the core to its start-up seal state: a dev server unseals
// from its key file, an HSM server from the wrapped master key, and
// everything else waits sealed (or uninitialised) for operators. fresh
// reports a data directory that has never held data, the only case in which
// a dev server may create its key.
func (c *Core) Start(ctx context.Context, fresh bool) error {
	if c.opts.Config.Dev {
		master, err := devMasterKey(ctx, c.opts.Config.DataDir, c.opts.Store, fresh)
		if err != nil {
			return err
		}
		defer clear(master)
		return c.unsealWith(ctx, master)
	}
	raw, err := c.opts.Store.Settings().Get(ctx, settingSealConfig)
	if errors.Is(err, storage.ErrNotFound) {
		if c.isDevDataDir() {
			c.log.Warn("this data directory belongs to a dev server: start it with --dev, or give this server a new, empty data directory and run `sigil operator init`")
			return nil
		}
		c.log.Warn("sigil is not initialised: run `sigil operator init`")
		return nil
	}
	if err != nil {
		return fmt.Errorf("load seal config: %w", err)
	}
	cfg, err := seal.ParseConfig(raw)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.initialized, c.progress = true, seal.NewProgress(cfg)
	c.mu.Unlock()
	if c.opts.HSM != nil {
		wrapped, err := c.opts.Store.Settings().Get(ctx, settingWrappedMaster)
		if err == nil {
			return c.autoUnseal(ctx, wrapped)
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("load wrapped master key: %w", err)
		}
	}
	c.log.Warn("sigil is sealed: unseal it with `sigil operator unseal`", "threshold", cfg.Threshold)
	return nil
}

// autoUnseal unwraps the master key inside the HSM and unseals with it.
func (c *Core) autoUnseal(ctx context.Context, wrapped []byte) error {
	w, err := c.opts.HSM.KeyWrapper(ctx, masterWrapKey)
	if err != nil {
		return fmt.Errorf("HSM key wrapper: %w", err)
	}
	master, err := w.UnwrapMasterKey(ctx, wrapped)
	if err != nil {
		return fmt.Errorf("auto-unseal with the HSM: %w", err)
	}
	defer clear(master)
	c.log.Info("auto-unsealing with the HSM")
	return c.unsealWith(ctx, master)
}

func (c *Core) unsealWith(ctx context.Context, master []byte) error {
	u, err := c.activate(ctx, master)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.u = u
	c.mu.Unlock()
	c.log.Info("sigil unsealed")
	return nil
}

// InitRequest asks for a new production server's master key.
type InitRequest struct {
	Shares, Threshold int
	// ShareRecipients, when set, holds one PEM X25519 public key per share:
	// each share is then returned encrypted to its operator.
	ShareRecipients [][]byte
	// Recipient receives the root token and any unencrypted shares, sealed;
	// nil is refused.
	Recipient *envelope.Recipient
}

// InitRecipient is the key the root token is sealed to at init, named by
// ref's kem and public key only (before init there is no CA, so no
// certificate to name); nil when ref names none, which Init refuses.
func InitRecipient(ref *RecipientRef) *envelope.Recipient {
	if ref == nil || ref.CertificateSerial != "" || ref.KEM > 0xffff {
		return nil
	}
	return &envelope.Recipient{KEM: uint16(ref.KEM), PublicKey: ref.PublicKey}
}

// InitResult is what Init returns, once.
type InitResult struct {
	// Shares are the encrypted shares, in the order of ShareRecipients.
	Shares []string
	// AutoUnseal: an HSM wraps the master key and the shares are for
	// break-glass recovery.
	AutoUnseal bool
	// Envelope holds {"root_token", "share_1".."share_N" (unless encrypted)}
	// sealed to the recipient, bound to the id "init".
	Envelope []byte
}

// Init creates the master key of a new production server, splits it into
// shares, unseals with it and creates the root token.
func (c *Core) Init(ctx context.Context, req InitRequest) (*InitResult, error) {
	if c.opts.Config.Dev {
		return nil, precondition(devRefusesInit + ": use the root token it printed at start, or start a server without --dev on a new, empty data directory and initialise that")
	}
	if c.isDevDataDir() {
		return nil, precondition("the server's data directory belongs to a dev server (it holds " + DevUnsealFile + ") and " + devRefusesInit +
			": start the server with --dev on that directory, or give this server a new, empty data directory and run operator init again")
	}
	n, k := req.Shares, req.Threshold
	if k < 1 || n < k || n > 255 {
		return nil, invalid(fmt.Sprintf("need 1 <= threshold (%d) <= shares (%d) <= 255", k, n))
	}
	if r := len(req.ShareRecipients); r != 0 && r != n {
		return nil, invalid(fmt.Sprintf("%d share recipients for %d shares", r, n))
	}
	if req.Recipient == nil {
		return nil, invalid("recipient (kem and public_key) is required: the root token is only returned sealed")
	}
	rcpt := *req.Recipient
	if err := rcpt.Validate(); err != nil {
		return nil, invalid("recipient: " + err.Error())
	}
	c.initMu.Lock()
	defer c.initMu.Unlock()
	c.mu.RLock()
	done := c.initialized
	c.mu.RUnlock()
	if done {
		return nil, precondition("sigil is already initialised")
	}
	master := make([]byte, barrierKeySize)
	if _, err := rand.Read(master); err != nil {
		return nil, errs.Wrap(errs.Internal, "random master key", err)
	}
	defer clear(master)
	cfg, shares, err := seal.Split(master, n, k)
	if err != nil {
		return nil, invalid(err.Error())
	}
	res := &InitResult{}
	secret := map[string]string{}
	defer clear(secret)
	for i, sh := range shares {
		if len(req.ShareRecipients) == 0 {
			secret[fmt.Sprintf("share_%d", i+1)] = seal.EncodeShare(sh)
			continue
		}
		to, err := seal.ParseRecipient(req.ShareRecipients[i])
		if err == nil {
			// A low-order key parses but cannot be encrypted to.
			err = envelope.Recipient{KEM: envelope.KEMX25519HKDFSHA256, PublicKey: to.Bytes()}.Validate()
		}
		if err != nil {
			return nil, invalid(fmt.Sprintf("share recipient %d: %v", i+1, err))
		}
		enc, err := seal.EncryptShare(to, sh)
		if err != nil {
			return nil, errs.Wrap(errs.Internal, "encrypt share", err)
		}
		res.Shares = append(res.Shares, enc)
	}
	var wrapped []byte
	if c.opts.HSM != nil {
		w, err := c.opts.HSM.KeyWrapper(ctx, masterWrapKey)
		if err != nil {
			return nil, internalErr("HSM key wrapper", err)
		}
		if wrapped, err = w.WrapMasterKey(ctx, master); err != nil {
			return nil, internalErr("wrap master key in the HSM", err)
		}
		res.AutoUnseal = true
	}
	raw, err := cfg.Marshal()
	if err != nil {
		return nil, errs.Wrap(errs.Internal, "encode seal config", err)
	}
	// Unseal first: the keyring is created under the new master key before
	// the seal config marks the server initialised, so a failure here leaves
	// a server that can simply be initialised again.
	if err := c.unsealWith(ctx, master); err != nil {
		if errors.Is(err, barrier.ErrBadMasterKey) {
			// A keyring without a seal config: another master key made it.
			return nil, errs.Wrap(errs.FailedPrecondition, "",
				fmt.Errorf("the server's data directory already holds a keyring made under another master key (a dev server's data directory, or a copy of one); "+
					"it is left untouched: start the server that made it, or give this server a new, empty data directory: %w", err))
		}
		return nil, internalErr("initialise", err)
	}
	settings := c.opts.Store.Settings()
	if wrapped != nil {
		if err := settings.Put(ctx, settingWrappedMaster, wrapped); err != nil {
			return nil, internalErr("store wrapped master key", err)
		}
	}
	if err := settings.PutIfAbsent(ctx, settingSealConfig, raw); err != nil {
		return nil, internalErr("store seal config", err)
	}
	tok, err := c.Current().Tokens.EnsureRoot(ctx, "")
	if err != nil {
		return nil, internalErr("create root token", err)
	}
	secret["root_token"] = tok
	// Sealed, never wrapped: nothing to undo, and the root token is the
	// first token there is.
	d, err := c.Deliver(ctx, To{Recipient: rcpt}, Secret{BindingID: "init", Data: secret}, nil)
	if err == nil {
		res.Envelope = d.Envelope
	}
	if err != nil {
		// The recipient was validated above, so this cannot be the caller's
		// fault; the server is initialised and the root token lost: say so.
		c.log.Error("sealing the init response failed after initialising", "err", err)
		return nil, errs.Wrap(errs.Internal,
			"sealing the root token and shares failed after initialising; wipe the data directory and initialise again", err)
	}
	c.mu.Lock()
	c.initialized, c.progress = true, seal.NewProgress(cfg)
	c.mu.Unlock()
	c.log.Info("sigil initialised", "shares", n, "threshold", k, "auto_unseal", res.AutoUnseal)
	return res, nil
}

// barrierKeySize is the master key's length.
const barrierKeySize = 32

// UnsealStatus is the seal state after an unseal step.
type UnsealStatus struct {
	Sealed              bool
	Progress, Threshold int
}

// Unseal offers one encoded share (sgs1_…). Shares are collected until the
// threshold is reached; then the master key is reassembled and the graph
// built. A wrong or repeated share is refused and the progress kept.
func (c *Core) Unseal(ctx context.Context, share string) (UnsealStatus, error) {
	c.mu.RLock()
	p, u := c.progress, c.u
	c.mu.RUnlock()
	if p == nil {
		return UnsealStatus{}, precondition("sigil is not initialised: run `sigil operator init`")
	}
	if u != nil {
		return UnsealStatus{Threshold: p.Threshold()}, nil
	}
	raw, err := seal.DecodeShare(share)
	if err != nil {
		return UnsealStatus{}, invalid(err.Error())
	}
	master, err := p.Add(raw)
	switch {
	case errors.Is(err, seal.ErrWrongShare), errors.Is(err, seal.ErrDuplicateShare):
		return UnsealStatus{}, errs.Errorf(errs.InvalidArgument, "%w (progress kept: %d/%d)", err, p.Count(), p.Threshold())
	case err != nil:
		return UnsealStatus{}, internalErr("unseal", err)
	}
	if master == nil {
		return UnsealStatus{Sealed: true, Progress: p.Count(), Threshold: p.Threshold()}, nil
	}
	defer clear(master)
	c.initMu.Lock()
	defer c.initMu.Unlock()
	if c.Current() == nil {
		if err := c.unsealWith(ctx, master); err != nil {
			return UnsealStatus{}, internalErr("unseal", err)
		}
	}
	return UnsealStatus{Threshold: p.Threshold()}, nil
}

// ResetUnseal forgets the shares offered so far.
func (c *Core) ResetUnseal() (UnsealStatus, error) {
	c.mu.RLock()
	p, u := c.progress, c.u
	c.mu.RUnlock()
	if p == nil {
		return UnsealStatus{}, precondition("sigil is not initialised: run `sigil operator init`")
	}
	if u != nil {
		return UnsealStatus{Threshold: p.Threshold()}, nil
	}
	p.Reset()
	return UnsealStatus{Sealed: true, Threshold: p.Threshold()}, nil
}

// Seal drops the graph and the master key until operators unseal again.
func (c *Core) Seal(context.Context) error {
	if c.opts.Config.Dev {
		return precondition("a dev server cannot be sealed: it would unseal from its key file at the next start anyway")
	}
	c.initMu.Lock()
	defer c.initMu.Unlock()
	c.mu.Lock()
	u := c.u
	c.u = nil
	c.mu.Unlock()
	if u != nil {
		c.deactivate(u)
		c.log.Warn("sigil sealed by operator")
	}
	return nil
}

// RotateKey adds a data-encryption key to the barrier keyring and returns
// its version; values sealed afterwards use it.
func (c *Core) RotateKey(ctx context.Context) (uint32, error) {
	v, err := c.opts.Barrier.Rotate(ctx)
	if err != nil {
		return 0, internalErr("rotate barrier key", err)
	}
	c.log.Info("barrier key rotated", "key_version", v)
	return v, nil
}

// Rewrap re-encrypts every registered sealed value under the newest key.
func (c *Core) Rewrap(ctx context.Context) (barrier.RewrapStats, error) {
	st, err := c.opts.Barrier.RewrapAll(ctx)
	if err != nil {
		return st, internalErr("rewrap", err)
	}
	if kinds := c.opts.Barrier.UnregisteredKinds(); len(kinds) > 0 {
		// A kind sealed without a rewrap source stays under its old key.
		c.log.Warn("sealed values without a rewrap source were left as they were", "kinds", kinds)
	}
	c.log.Info("sealed values rewrapped", "rewrapped", st.Rewrapped, "already_current", st.Current)
	return st, nil
}

// devMasterKey reads the dev master key, creating it only for a data
// directory that has never held a keyring: a missing key file next to
// existing data is an error, never a reason to start over.
func devMasterKey(ctx context.Context, dir string, store storage.Store, fresh bool) ([]byte, error) {
	path := filepath.Join(dir, DevUnsealFile)
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(data)))
		if err != nil || len(key) != barrierKeySize {
			return nil, fmt.Errorf("%s: not a 32-byte hex key", path)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !fresh {
		if _, _, err := store.Keyring().Get(ctx); !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("%s is missing but the store already holds sealed data; refusing to create a new key over it", path)
		}
	}
	key := make([]byte, barrierKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return key, nil
}

// DevBootstrap creates, on a dev server's first start only, the CA
// hierarchy and the root token; later starts reuse both. It returns the
// root token.
func (c *Core) DevBootstrap(ctx context.Context) (string, error) {
	u, err := c.Unsealed()
	if err != nil {
		return "", err
	}
	if u.CA.Root() == nil {
		c.log.Info("initialising a new dev CA hierarchy")
		err := u.CA.InitHierarchy(ctx, ca.InitRequest{CommonName: c.opts.Config.CA.CommonName, KeyType: hsm.ECDSAP256})
		if err != nil {
			return "", fmt.Errorf("initialise CA: %w", err)
		}
	}
	tokenPath := filepath.Join(c.opts.Config.DataDir, devRootTokenFile)
	existing, err := os.ReadFile(tokenPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read root token: %w", err)
	}
	tok, err := u.Tokens.EnsureRoot(ctx, strings.TrimRight(string(existing), "\r\n "))
	if err != nil {
		return "", fmt.Errorf("%s: %w", tokenPath, err)
	}
	if len(existing) == 0 {
		if err := atomicfile.Write(tokenPath, []byte(tok+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("write root token: %w", err)
		}
	}
	return tok, nil
}
