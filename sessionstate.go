package pgreplica

import (
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
}

// noteSessionState records that a statement run on l changes session
// state: on the primary the conn keeps l from now on; on a replica l is
// closed when released.
func (c *conn) noteSessionState(l *lease) {
	l.dirty = true
	if l == &c.primary {
		c.sticky = true
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
	return true
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
		victim.sticky, victim.pinned, victim.evicted = false, false, true
	}
	s.mu.Unlock()
	l.release() // dirty: closed, so the pool can open a new one
	return victim != nil
}
