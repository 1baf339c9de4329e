package pgreplica

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5/stdlib"
)

// Session state (SET, temporary tables, session advisory locks, LISTEN,
// prepared statements, …) stays with the database/sql connection that made
// it, as with pgx's own driver: the conn keeps that physical connection to
// the primary across checkouts ("sticky") and closes it when database/sql
// closes the conn. Each sticky conn holds one of the primary pool's
// connections. database/sql keeps idle conns in its own pool, so without
// help a statement could wait forever for a primary connection held by
// idle sticky conns that nothing will use; a waiter therefore evicts one:
// its connection is closed and the conn reports itself bad at its next
// checkout (database/sql may close idle conns at any time too, so no
// application can rely on an idle conn's session).

// stickyConns are the sticky conns that database/sql holds idle.
type stickyConns struct {
	mu   sync.Mutex
	idle map[*conn]struct{}
	// parked, when set, is closed (and cleared) when a conn parks: a
	// primary acquire waiting for a slot then tries to evict it.
	parked chan struct{}
}

// noteSessionState records that a statement run on l changes session
// state: on the primary the conn keeps l from now on, and unless it only
// changes plain settings outside a transaction (which its reads take to
// replicas: settings.go), its later checkouts are pinned to l too; on a
// replica l is closed when released.
func (c *conn) noteSessionState(l *lease, cl classification) {
	l.dirty = true
	if l == &c.primary {
		c.sticky = true
		if !cl.settings || c.txLease != nil {
			c.stickyPin = true
		}
	}
}

// stickyUsable says whether the connection holding this conn's session
// state can still serve it: it is open and its node is still the primary.
func (c *conn) stickyUsable() bool {
	l := &c.primary
	if !l.held() || l.node != c.c.topo.Load().primary {
		return false
	}
	if sc, ok := l.sc.(*stdlib.Conn); ok {
		return !sc.Conn().IsClosed()
	}
	return true
}

// parkSticky records that database/sql took the sticky conn back. It
// reports false, making the conn invalid (database/sql then closes it and
// its connection), when a statement may be waiting for a primary
// connection: one is being acquired and the pool is full.
func (c *conn) parkSticky() bool {
	s := &c.c.sticky
	s.mu.Lock()
	defer s.mu.Unlock()
	// Under the lock, against a waiter's evictIdleSticky: either the waiter
	// is counted here, or it finds this conn parked.
	if n := c.primary.node; n.acquiring.Load() > 0 && n.poolFull() {
		return false
	}
	if s.idle == nil {
		s.idle = make(map[*conn]struct{})
	}
	s.idle[c] = struct{}{}
	c.parked = true
	if s.parked != nil {
		close(s.parked)
		s.parked = nil
	}
	return true
}

// parkedSignal returns a channel closed when a conn next parks.
func (s *stickyConns) parkedSignal() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parked == nil {
		s.parked = make(chan struct{})
	}
	return s.parked
}

// acquirePrimary takes a lease on the primary p into l. Idle sticky conns
// may hold every slot, and nothing releases those but a statement that
// needs one: while the pool is full it evicts one, and it tries again each
// time it lost the freed slot to another acquire or a conn parked while it
// waited, so that it never waits for connections only idle conns hold. A
// conn that parks while it is counted in acquiring and the pool is full
// gives its connection up itself (parkSticky).
func (c *Connector) acquirePrimary(ctx context.Context, p *node, l *lease) error {
	p.acquiring.Add(1)
	defer p.acquiring.Add(-1)
	if p.fake != nil {
		return p.acquire(ctx, l)
	}
	if p.trySlot() {
		return p.leaseConn(ctx, l) // the common case: no lock
	}
	for {
		// Before the eviction: a conn that parks after it found none wakes
		// this wait.
		parked := c.sticky.parkedSignal()
		if p.trySlot() {
			return p.leaseConn(ctx, l)
		}
		if c.evictIdleSticky() {
			continue // its slot may go to another waiter: look again
		}
		select {
		case p.slots <- struct{}{}:
			return p.leaseConn(ctx, l)
		case <-ctx.Done():
			return ctx.Err()
		case <-parked:
		}
	}
}

// unparkSticky is called when database/sql hands the conn out again or
// closes it; it reports whether the conn was evicted while idle.
func (c *conn) unparkSticky() (evicted bool) {
	if !c.parked {
		return false // the common case: a conn without session state costs no lock
	}
	c.parked = false
	s := &c.c.sticky
	s.mu.Lock()
	delete(s.idle, c)
	evicted = c.evicted
	c.evicted = false
	s.mu.Unlock()
	return evicted
}

// evictIdleSticky frees a primary connection held by an idle sticky conn,
// for a statement that would otherwise wait for one. It reports whether it
// found one.
func (c *Connector) evictIdleSticky() bool {
	s := &c.sticky
	s.mu.Lock()
	var victim *conn
	for cn := range s.idle {
		victim = cn
		break
	}
	var l lease
	if victim != nil {
		delete(s.idle, victim)
		// Under the lock: the conn's next ResetSession or Close reads
		// these only after taking it.
		l, victim.primary = victim.primary, lease{}
		victim.sticky, victim.stickyPin, victim.pinned, victim.evicted = false, false, false, true
	}
	s.mu.Unlock()
	l.release() // dirty: closed, so the pool can open a new one
	return victim != nil
}
