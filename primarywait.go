package pgreplica

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Statements that need the primary wait, up to primary_wait, for the
// monitor's first probe round (until then the primary is only the DSN's
// guess) and for a writable primary: a failover leaves none for as long as
// Patroni's ttl, and failing every write in that window at once turns a
// promotion into an outage for the caller.

// errNoWritable is why no primary is known: every node that answers is a
// standby.
var errNoWritable = errors.New("no node answers as writable")

// primaryWait is one statement's wait for a primary, across its attempts:
// the bound runs from its first wait.
type primaryWait struct {
	// not refused the statement with 25006 (it was demoted): wait for
	// another primary.
	not *node
	// reachable: a primary marked down does not count. Only writes wait
	// for it to come back (or for a promotion): nothing of theirs was
	// sent, while a read that needs the primary reports its error.
	reachable bool
	// retry is set after the primary refused a new connection without
	// being marked down (a terminated startup): look again after a
	// monitor interval, not at once.
	retry bool
	// cause is why the last attempt failed, for the error at the bound.
	cause error
	start time.Time
}

// waitPrimary returns the primary once the first probe round is done and a
// primary w accepts is known. It waits at most Config.PrimaryWait from the
// first call with w, less when ctx ends sooner; PrimaryWaitOff does not
// wait.
func (c *Connector) waitPrimary(ctx context.Context, w *primaryWait) (*node, error) {
	if w.start.IsZero() {
		w.start = time.Now()
	}
	if !w.retry {
		if p, ok := c.primaryReady(w); ok {
			return p, nil
		}
	}
	wait := c.cfg.PrimaryWait
	switch {
	case wait == 0:
		wait = DefaultPrimaryWait // a Connector built without resolve
	case wait < 0:
		// primary_wait=off: the primary as it is known now, reachable or
		// not (its connection error is the caller's answer).
		if p := c.topo.Load().primary; p != nil && p != w.not && !w.retry {
			return p, nil
		}
		return nil, c.noPrimary(w, 0)
	}
	left := wait - time.Since(w.start)
	if left <= 0 {
		return nil, c.noPrimary(w, wait)
	}
	timer := time.NewTimer(left)
	defer timer.Stop()
	if w.not != nil {
		c.mon.kick() // it answered as a standby: probe now, not next round
	}
	known := c.rolesKnown // nil once it fired: a closed channel would spin
	interval := c.cfg.MonitorInterval
	if interval <= 0 {
		interval = DefaultMonitorInterval
	}
	for first := true; ; first = false {
		if c.closed.Load() {
			return nil, ErrClosed
		}
		_, changed := c.topologyChange()
		if !first || !w.retry {
			if p, ok := c.primaryReady(w); ok {
				w.retry = false
				return p, nil
			}
		}
		// The monitor's round may end without a topology change (the
		// primary stays unknown, or comes back up): look again each
		// interval.
		tick := time.NewTimer(interval)
		select {
		case <-known:
			known = nil
		case <-changed:
		case <-tick.C:
		case <-timer.C:
			tick.Stop()
			return nil, c.noPrimary(w, wait)
		case <-ctx.Done():
			tick.Stop()
			return nil, fmt.Errorf("%w: %w", ErrNoPrimary, ctx.Err())
		}
		tick.Stop()
	}
}

// noPrimary is ErrNoPrimary at the end of w's wait (0: primary_wait=off),
// wrapping why there was none.
func (c *Connector) noPrimary(w *primaryWait, waited time.Duration) error {
	cause := w.cause
	if cause == nil {
		switch p := c.topo.Load().primary; {
		case p == nil:
			cause = errNoWritable
		case p == w.not:
			cause = fmt.Errorf("primary %s answers as a standby", p.addr)
		case !p.up.Load():
			why := "not answering"
			if cs := p.cause.Load(); cs != nil {
				why = cs.String()
			}
			cause = fmt.Errorf("primary %s is down (%s)", p.addr, why)
		default:
			cause = errors.New("roles not known yet")
		}
	}
	if waited == 0 {
		return fmt.Errorf("%w (primary_wait=off): %w", ErrNoPrimary, cause)
	}
	return fmt.Errorf("%w after waiting primary_wait (%v): %w", ErrNoPrimary, waited, cause)
}

// primaryReady returns the primary when roles are known and w accepts it;
// else the primary, if any, and false.
func (c *Connector) primaryReady(w *primaryWait) (*node, bool) {
	if c.rolesKnown != nil {
		select {
		case <-c.rolesKnown:
		default:
			return nil, false
		}
	}
	p := c.topo.Load().primary
	return p, p != nil && p != w.not && (!w.reachable || p.up.Load() || p.refusesLogin())
}

// waitRolesKnown waits, bounded like waitPrimary, for the first probe round,
// so that a fresh connector's first read does not take the DSN's order for
// the roles (its first host may be down, or a standby now). Past the bound
// the read goes on with what is known.
func (c *Connector) waitRolesKnown(ctx context.Context) {
	if c.rolesKnown == nil || c.cfg.PrimaryWait < 0 {
		return
	}
	select {
	case <-c.rolesKnown:
		return
	default:
	}
	wait := c.cfg.PrimaryWait
	if wait == 0 {
		wait = DefaultPrimaryWait
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-c.rolesKnown:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// refusesLogin says whether the node is down because it refused the login
// itself (Cause.refusesLogin): a statement tries it, and gets the server's
// own error at once, rather than waiting primary_wait for nothing.
func (n *node) refusesLogin() bool {
	cause := n.cause.Load()
	return !n.up.Load() && cause != nil && cause.refusesLogin()
}
