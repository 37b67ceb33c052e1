package ra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// RA is the registration authority. Create it with New; call Close on
// shutdown to stop pending validations.
type RA struct {
	cfg    Config
	ca     CA
	va     VA
	store  Store
	sealer Sealer
	logger *slog.Logger
	provs  map[string]*Provisioner
	// accounts caches account objects (Config.SingleNode only; nil
	// otherwise).
	accounts *accountCache

	// Asynchronous validations: bounded by sem, stopped by cancel.
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup
}

// New builds an RA.
func New(cfg Config, deps Deps) (*RA, error) {
	if deps.CA == nil || deps.VA == nil || deps.Store == nil || deps.Sealer == nil {
		return nil, errors.New("acme: CA, VA, Store and Sealer are required")
	}
	if err := cfg.check(deps.CA); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	ra := &RA{cfg: cfg, ca: deps.CA, va: deps.VA, store: deps.Store, sealer: deps.Sealer,
		logger: deps.Logger, provs: map[string]*Provisioner{}, sem: make(chan struct{}, cfg.ValidationWorkers)}
	for i := range ra.cfg.Provisioners {
		p := &ra.cfg.Provisioners[i]
		ra.provs[p.Name] = p
	}
	if cfg.SingleNode {
		ra.accounts = newAccountCache()
	}
	ra.ctx, ra.cancel = context.WithCancel(context.Background())
	return ra, nil
}

// Close cancels running validations and waits for them to finish.
func (ra *RA) Close() error {
	ra.cancel()
	ra.wg.Wait()
	return nil
}

// ErrNoProvisioner is returned for an unknown provisioner name.
var ErrNoProvisioner = errors.New("acme: no such provisioner")

// Provisioner returns a provisioner by name ("" is the default one).
func (ra *RA) Provisioner(name string) (*Provisioner, error) {
	if name == "" {
		name = ra.cfg.DefaultProvisioner
	}
	p, ok := ra.provs[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrNoProvisioner, name)
	}
	return p, nil
}

// Provisioners lists the provisioners in configuration order.
func (ra *RA) Provisioners() []*Provisioner {
	out := make([]*Provisioner, 0, len(ra.cfg.Provisioners))
	for i := range ra.cfg.Provisioners {
		out = append(out, &ra.cfg.Provisioners[i])
	}
	return out
}

func (ra *RA) now() time.Time { return ra.cfg.Now().UTC().Truncate(time.Second) }
