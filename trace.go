package pgreplica

import "context"

// traceKey carries a statement's route reason to pgx query tracers.
type traceKey struct{}

// RouteReason returns why pgreplica sent the statement being traced to the
// node that runs it, for a pgx tracer (Config.Tracer) reading the context
// of TraceQueryStart, TraceBatchStart, TraceCopyFromStart or
// TracePrepareStart. The node is the tracer's *pgx.Conn. ok is false for
// statements pgreplica did not route: its own probes are never traced, and
// statements run on a RawConn connection carry only what their caller's
// context carries.
func RouteReason(ctx context.Context) (r Reason, ok bool) {
	r, ok = ctx.Value(traceKey{}).(Reason)
	return r, ok
}

// traceCtx tells a configured tracer why the statement went where it
// goes. Without a tracer it returns ctx as it is: no allocation.
func (c *conn) traceCtx(ctx context.Context, r Reason) context.Context {
	if !c.c.traced {
		return ctx
	}
	return context.WithValue(ctx, traceKey{}, r)
}
