package pgreplica

import (
	"context"
	"fmt"
	"time"
)

// Statements that need the primary wait, up to primary_wait, for the
// monitor's first probe round (until then the primary is only the DSN's
// guess) and for a writable primary: a failover leaves none for as long as
// Patroni's ttl, and failing every write in that window at once turns a
// promotion into an outage for the caller.

// waitPrimary returns the primary once the first probe round is done and a
// writable primary other than not (the node that just refused a write with
// 25006, or nil) is known. It waits at most Config.PrimaryWait, less when
// ctx ends sooner; PrimaryWaitOff does not wait.
func (c *Connector) waitPrimary(ctx context.Context, not *node) (*node, error) {
	if p, ok := c.primaryReady(not); ok {
		return p, nil
	}
	wait := c.cfg.PrimaryWait
	if wait <= 0 {
		if wait == 0 {
			wait = DefaultPrimaryWait // a Connector built without resolve
		} else {
			return c.primary()
		}
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	if not != nil {
		c.mon.kick() // it answered as a standby: probe now, not next round
	}
	known := c.rolesKnown // nil once it fired: a closed channel would spin
	interval := c.cfg.MonitorInterval
	if interval <= 0 {
		interval = DefaultMonitorInterval
	}
	for {
		if c.closed.Load() {
			return nil, ErrClosed
		}
		_, changed := c.topologyChange()
		if p, ok := c.primaryReady(not); ok {
			return p, nil
		}
		// The monitor's round may end without a topology change (the
		// primary stays unknown): look again each interval.
		tick := time.NewTimer(interval)
		select {
		case <-known:
			known = nil
		case <-changed:
		case <-tick.C:
		case <-timer.C:
			tick.Stop()
			return nil, fmt.Errorf("%w after waiting primary_wait (%v)", ErrNoPrimary, wait)
		case <-ctx.Done():
			tick.Stop()
			return nil, fmt.Errorf("%w: %w", ErrNoPrimary, ctx.Err())
		}
		tick.Stop()
	}
}

// primaryReady returns the primary when roles are known and it is not not.
func (c *Connector) primaryReady(not *node) (*node, bool) {
	if c.rolesKnown != nil {
		select {
		case <-c.rolesKnown:
		default:
			return nil, false
		}
	}
	p := c.topo.Load().primary
	return p, p != nil && p != not
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
