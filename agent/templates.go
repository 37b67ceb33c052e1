package agent

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/agent/render"
)

// nodeConn is the agent's current connection to the server, looked up on
// every call: a renewed node SVID replaces the connection (a TLS
// connection keeps presenting the certificate it opened with), and the
// renderer's next call goes over the new one. A call caught on the old
// connection as it closes fails as Canceled, which the renderer retries.
type nodeConn struct{ a *Agent }

func (c nodeConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.a.client().Invoke(ctx, method, args, reply, opts...)
}

func (c nodeConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.a.client().NewStream(ctx, desc, method, opts...)
}

var _ grpc.ClientConnInterface = nodeConn{}

// renderTemplates renders the templates: of agent.yaml until ctx ends,
// authenticated by the node SVID alone: the secrets are those the
// policies bound to the node's SPIFFE ID grant, each sealed by the server
// to a key made for that one call. exec: is sigil exec's; the agent does
// not run a command.
func (a *Agent) renderTemplates(ctx context.Context) error {
	cfg := a.cfg.Render
	if cfg.Exec != nil {
		a.log.Info("agent.yaml has an exec: section; the agent renders only templates: (exec: is for sigil exec --config)")
		cfg.Exec = nil
	}
	cfg.OnRender = a.observeRender
	if err := render.Run(ctx, cfg, render.NewGRPCSource(nodeConn{a}), a.log.With("part", "templates")); err != nil {
		return fmt.Errorf("agent: templates: %w", err)
	}
	return nil
}

// observeRender keeps the render metrics.
func (a *Agent) observeRender(template string, err error) {
	a.st.mu.Lock()
	defer a.st.mu.Unlock()
	if err != nil {
		a.st.renderFailures++
		a.st.failing[template] = true
	} else {
		delete(a.st.failing, template)
	}
}
