package pgreplica

import (
	"context"
	"testing"
)

// Without a tracer, routing must not pay for one: the context passes
// through untouched and nothing is allocated.
func TestTraceCtxFreeWithoutTracer(t *testing.T) {
	c := &conn{c: &Connector{}}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		if c.traceCtx(ctx, ReasonRead) != ctx {
			t.Fatal("traceCtx changed the context without a tracer")
		}
	})
	if allocs != 0 {
		t.Fatalf("traceCtx without a tracer allocates %v times per statement", allocs)
	}
	if _, ok := RouteReason(ctx); ok {
		t.Fatal("RouteReason found a reason in a plain context")
	}
}

func TestRouteReasonWithTracer(t *testing.T) {
	c := &conn{c: &Connector{traced: true}}
	for _, r := range []Reason{ReasonRead, ReasonWrite, ReasonTransaction, ReasonRetry} {
		got, ok := RouteReason(c.traceCtx(context.Background(), r))
		if !ok || got != r {
			t.Fatalf("RouteReason = %v, %v; want %v", got, ok, r)
		}
	}
}
