package pgreplica

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync/atomic"
)

// No stampede on the primary. When every replica lags or is down, plain
// reads fall back to the primary, and all at once: a primary sized for the
// writes then takes the whole read load too, at the moment the cluster is
// already in trouble. fallback_max_share bounds the share of those reads
// the primary gets. The rest go to the least-lagged replica that is up
// (stale data, as the read's lag bound was the DSN's default), or, when
// the call set its own bound with WithMaxLag or no replica is up, fail
// with ErrFallbackShare. Reads that need the primary (a session's reads
// before its writes replayed, UsePrimary, primary hints, transactions,
// pinned checkouts) never come here.

// fallbackShare counts a connector's plain reads that found no usable
// replica, to admit the primary's share of them exactly: the k-th is
// admitted when ceil(k·share) grows, so the first is, and of any run of m
// of them at most ceil(m·share)+1 are. No clock and no window: its
// counters are the only state.
type fallbackShare struct {
	seen atomic.Uint64
}

// admit says whether the next read that found no usable replica may go to
// the primary under share (0 or ≥ 1: always).
func (f *fallbackShare) admit(share float64) bool {
	if share <= 0 || share >= 1 {
		return true
	}
	k := f.seen.Add(1)
	return ceilMul(k, share) > ceilMul(k-1, share)
}

func ceilMul(k uint64, share float64) uint64 {
	v := float64(k) * share
	c := uint64(v)
	if float64(c) < v {
		c++
	}
	return c
}

// fallbackTarget decides where a plain read goes that found no usable
// replica, with fallback on: the primary (nil, nil) while its share allows,
// and always for a session's read (minLSN set: only the primary has its
// writes); else the least-lagged replica that is up and not in tried,
// unless the call bounded lag itself (ownBound); else ErrFallbackShare.
// Routing code calls it at the point where it would fall back to the
// primary.
func (c *Connector) fallbackTarget(ownBound bool, minLSN, tried uint64) (*node, error) {
	if minLSN != 0 || c.fallback.admit(c.cfg.FallbackMaxShare) {
		return nil, nil
	}
	if ownBound {
		return nil, ErrFallbackShare
	}
	if best := c.leastLagged(tried); best != nil {
		return best, nil
	}
	return nil, ErrFallbackShare
}

// leastLagged is the least-lagged replica that is up, not full, not in
// tried and on the primary's timeline (one on another timeline will never
// catch up, whatever its lag reads), or nil.
func (c *Connector) leastLagged(tried uint64) *node {
	var best *node
	for _, n := range c.topo.Load().replicas {
		if tried&(1<<n.index) != 0 || !n.up.Load() || !n.standby.Load() || n.serverFull() || n.offTimeline.Load() {
			continue
		}
		if best == nil || n.lagNanos.Load() < best.lagNanos.Load() {
			best = n
		}
	}
	return best
}

// queryStale runs a read on n, the replica fallbackTarget chose. A read
// that fails before its first row because the replica could not be reached
// or its connection broke moves to the next least-lagged replica, each at
// most once; when none is left it fails with ErrFallbackShare (the
// primary's share is used up).
func (c *conn) queryStale(ctx context.Context, o *routeOptions, n *node, query string, args []driver.NamedValue, cl classification, tried uint64) (driver.Rows, error) {
	l := &c.replica
	if l.held() && l.node != n {
		l.release()
	}
	for {
		tried |= 1 << n.index
		var err error
		if !l.held() {
			if err = n.acquire(ctx, l); err != nil && ctx.Err() == nil {
				c.c.connectFailed(n, err)
			}
		}
		if err == nil {
			var rows driver.Rows
			if err = c.replicaReady(ctx, l); errors.Is(err, errSettingsRefused) {
				l.release()
				return c.queryPrimary(ctx, o, query, args, ReasonPinned, cl)
			}
			if err == nil {
				if rows, err = c.queryOn(ctx, o, l, query, args, ReasonStale, cl); err == nil {
					return c.result(n, rows), nil
				}
			}
			c.dropReplica(l, err)
			if !isRetryableRead(err) {
				return nil, err
			}
		}
		if ctx.Err() != nil {
			return nil, err
		}
		next := c.c.leastLagged(tried)
		if next == nil {
			return nil, fmt.Errorf("%w (replica %s: %v)", ErrFallbackShare, n.addr, err)
		}
		n = next
	}
}
