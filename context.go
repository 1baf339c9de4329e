package pgreplica

import (
	"context"
	"time"
)

// routeKey is the single context key pgreplica reads: every helper stores
// one *routeOptions under it, so routing costs one ctx.Value per statement.
type routeKey struct{}

type routeOptions struct {
	primary   bool
	maxLag    time.Duration
	hasMaxLag bool
	session   *session
	report    *Route
}

func optionsFrom(ctx context.Context) *routeOptions {
	o, _ := ctx.Value(routeKey{}).(*routeOptions)
	return o
}

// with returns ctx carrying a copy of its route options changed by set.
func with(ctx context.Context, set func(*routeOptions)) context.Context {
	var o routeOptions
	if prev := optionsFrom(ctx); prev != nil {
		o = *prev
	}
	set(&o)
	return context.WithValue(ctx, routeKey{}, &o)
}

// UsePrimary returns a context that sends every statement run with it to the
// primary: reads that must see the latest committed data, whatever the lag.
func UsePrimary(ctx context.Context) context.Context {
	return with(ctx, func(o *routeOptions) { o.primary = true })
}

// WithMaxLag returns a context whose reads accept a replica that is at most
// d behind the primary, overriding the DSN's max_replica_lag for calls made
// with it. A dashboard may allow 30s; a checkout page 100ms.
//
// A replica qualifies only if it is known to have everything the primary
// had committed d before the read began, counting the time since the
// monitor found that out (docs/guarantees.md, "How stale a read can be"):
// a d much under the probe interval is met only right after probes, and a
// d of 0 never, so such reads go to the primary. A negative d is taken as
// 0. There is no "no limit" value: use a long duration.
func WithMaxLag(ctx context.Context, d time.Duration) context.Context {
	d = max(d, 0)
	return with(ctx, func(o *routeOptions) { o.maxLag, o.hasMaxLag = d, true })
}
