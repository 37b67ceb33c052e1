package telemetry

import (
	"context"
	"log/slog"
)

// RequestLogHandler adds the request id to every record logged with a
// context of a call (slog's *Context methods), so each line a request
// causes can be found from the id the caller was shown.
type RequestLogHandler struct {
	slog.Handler
	// ID returns the request id of ctx's call, "" outside a call.
	ID func(ctx context.Context) string
}

// Handle implements slog.Handler.
func (h RequestLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := h.ID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h RequestLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return RequestLogHandler{h.Handler.WithAttrs(as), h.ID}
}

// WithGroup implements slog.Handler.
func (h RequestLogHandler) WithGroup(name string) slog.Handler {
	return RequestLogHandler{h.Handler.WithGroup(name), h.ID}
}
