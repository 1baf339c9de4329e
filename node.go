package pgreplica

import (
	"context"
	"database/sql/driver"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// node is one PostgreSQL server of the cluster with its own pool.
type node struct {
	index int    // position in the DSN; 0 was listed as the primary
	addr  string // host:port, never credentials
	pool  *pgxpool.Pool
	// maxConns is the pool's size: with this many leases out, the next
	// acquire waits.
	maxConns int64
	// acquiring counts primary acquires under way; see parkSticky.
	acquiring atomic.Int32
	// wrapper builds the *stdlib.Conn for a physical connection the first
	// time it is used; see acquire.
	wrapper driver.Connector

	// Health, written by the monitor and by failing traffic.
	up         atomic.Bool
	standby    atomic.Bool // pg_is_in_recovery() at the last probe
	replayLSN  atomic.Uint64
	lagBytes   atomic.Int64
	lagNanos   atomic.Int64
	probedAt   atomic.Int64 // unix nanos of the last answered probe
	probeNanos atomic.Int64 // latency of the last answered probe
	failures   atomic.Int32 // consecutive failed probes, for backoff
	frozen     atomic.Bool  // the last failed probe timed out: it accepts but does not answer
	nextProbe  atomic.Int64 // unix nanos before which a down node is not probed
	fullUntil  atomic.Int64 // unix nanos until which it gets no new reads: it refused a connection with 53300

	// conns are the node's sockets, from dial to close, including those
	// still in the startup handshake; tracked at dial and close only,
	// never on the query path.
	connsMu sync.Mutex
	conns   map[*trackedConn]struct{}

	// closing is set when the connector closed; the pool closes when the
	// last lease comes back (pgxpool.Close would wait for it).
	closing   atomic.Bool
	closePool sync.Once

	// fake replaces the pool in routing unit tests; fakeErr makes acquiring
	// from it fail as an unreachable server would.
	fake    nodeConn
	fakeErr error

	// Traffic, for policies and the status snapshot.
	inFlight   atomic.Int64 // leases held
	statements atomic.Uint64
	errors     atomic.Uint64
	reroutes   [numRerouteReasons]atomic.Uint64
}

// defaultReplicaConnectTimeout bounds a connection attempt to a replica
// when the DSN sets none: a frozen server accepts TCP and never answers,
// and a read should move on to another node instead.
const defaultReplicaConnectTimeout = 2 * time.Second

func newNode(index int, cfg *pgxpool.Config) (*node, error) {
	n := &node{index: index, addr: addrOf(cfg), conns: make(map[*trackedConn]struct{})}
	cfg = cfg.Copy()
	if index != 0 && cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultReplicaConnectTimeout
	}
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return n.track(c), nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	n.pool, n.wrapper = pool, stdlib.GetPoolConnector(pool)
	n.maxConns = int64(pool.Config().MaxConns) // pgxpool's default when cfg left it 0
	// Until the first probe answers, trust the DSN: listed nodes are up and
	// every node but the first is a standby.
	n.up.Store(true)
	n.standby.Store(index != 0)
	return n, nil
}

func addrOf(cfg *pgxpool.Config) string {
	cc := cfg.ConnConfig
	if strings.HasPrefix(cc.Host, "/") {
		return cc.Host // unix socket directory
	}
	return net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))
}

// trackedConn is a socket to the node that leaves the node's set when it
// is closed, however pgx closes it (a failed handshake, a broken or
// destroyed connection).
type trackedConn struct {
	net.Conn
	n *node
}

func (n *node) track(c net.Conn) *trackedConn {
	tc := &trackedConn{Conn: c, n: n}
	n.connsMu.Lock()
	n.conns[tc] = struct{}{}
	n.connsMu.Unlock()
	return tc
}

func (c *trackedConn) Close() error {
	c.n.connsMu.Lock()
	delete(c.n.conns, c)
	c.n.connsMu.Unlock()
	return c.Conn.Close()
}

// abortConns closes the node's sockets, so that reads blocked on a frozen
// or dead replica fail now, while their callers' deadlines still leave time
// to retry them elsewhere; a connection still in its startup handshake is
// cut too, instead of waiting for its connect timeout. net.Conn.Close is
// safe while another goroutine reads; pgx then sees a broken connection and
// the pool destroys it.
func (n *node) abortConns() {
	n.connsMu.Lock()
	conns := make([]net.Conn, 0, len(n.conns))
	for c := range n.conns {
		conns = append(conns, c.Conn)
	}
	n.connsMu.Unlock()
	for _, c := range conns {
		_ = c.Close() // the raw socket: the wrapper's Close would relock
	}
}

// resetPool drops the pool's connections to a node found down: idle ones now,
// busy ones when released. Otherwise a server that restarts quickly would
// be handed its predecessor's dead connections (pgxpool pings only those
// idle for over a second), and the first reads would mark it down again.
func (n *node) resetPool() {
	if n.pool != nil {
		n.pool.Reset()
	}
}

// markDown takes the node out of routing at once, after real traffic saw it
// fail; the monitor brings it back when a probe answers.
func (n *node) markDown() bool {
	n.nextProbe.Store(time.Now().UnixNano())
	return n.up.Swap(false)
}

// usableReplica says whether the node may serve a read that tolerates
// maxLag (0: any lag) and must have replayed at least minLSN.
func (n *node) usableReplica(maxLag time.Duration, minLSN uint64) bool {
	return n.skipReason(maxLag, minLSN) == usable
}

const usable rerouteReason = numRerouteReasons

// skipReason says why the node may not serve such a read, or usable.
func (n *node) skipReason(maxLag time.Duration, minLSN uint64) rerouteReason {
	switch {
	case !n.up.Load():
		return rerouteDown
	case !n.standby.Load():
		return rerouteReadOnly // writable: not a replica at all
	case maxLag > 0 && time.Duration(n.lagNanos.Load()) > maxLag,
		minLSN != 0 && n.replayLSN.Load() < minLSN:
		return rerouteLag
	case n.serverFull():
		return rerouteFull
	}
	return usable
}

// poolFull says whether every connection the pool may open is leased out.
func (n *node) poolFull() bool {
	return n.maxConns > 0 && n.inFlight.Load() >= n.maxConns
}

// serverFull says whether the node refused a new connection for want of a free
// slot less than a monitor interval ago.
func (n *node) serverFull() bool {
	until := n.fullUntil.Load()
	if until == 0 {
		return false
	}
	if time.Now().UnixNano() < until {
		return true
	}
	n.fullUntil.CompareAndSwap(until, 0)
	return false
}

// wrapperKey stores a physical connection's *stdlib.Conn in pgconn's
// per-connection CustomData so that it is built once per connection, not
// once per checkout (stdlib's pool connector allocates three objects on
// every Connect).
const wrapperKey = "pgreplica.stdlib"

// nodeConn is what a lease runs statements on: pgx's *stdlib.Conn, or a
// fake in the routing unit tests.
type nodeConn interface {
	driver.ExecerContext
	driver.QueryerContext
	driver.ConnBeginTx
	driver.Pinger
}

// lease is one physical connection pinned for the length of one
// database/sql checkout.
type lease struct {
	node   *node
	pc     *pgxpool.Conn // set when acquired from the pool directly
	sc     nodeConn      // runs the statements
	closer *stdlib.Conn  // set when acquired through the wrapper: Close releases
	dirty  bool          // session state was changed: close, never reuse
}

func (l *lease) held() bool { return l.sc != nil }

func (n *node) acquire(ctx context.Context, l *lease) error {
	if n.fake != nil {
		if err := n.fakeErr; err != nil {
			return err
		}
		*l = lease{node: n, sc: n.fake}
		n.inFlight.Add(1)
		return nil
	}
	pc, err := n.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	if sc, ok := pc.Conn().PgConn().CustomData()[wrapperKey].(*stdlib.Conn); ok {
		*l = lease{node: n, pc: pc, sc: sc}
		n.inFlight.Add(1)
		return nil
	}
	// A new physical connection: stdlib offers no way to wrap a *pgx.Conn we
	// hold, only a connector that acquires one itself. Hand this one back and
	// let the connector acquire; it wraps whatever it gets, and the wrapper
	// is cached on that connection for every later checkout.
	pc.Release()
	dc, err := n.wrapper.Connect(ctx)
	if err != nil {
		return err
	}
	sc := dc.(*stdlib.Conn)
	data := sc.Conn().PgConn().CustomData()
	if cached, ok := data[wrapperKey].(*stdlib.Conn); ok {
		*l = lease{node: n, sc: cached, closer: sc}
	} else {
		data[wrapperKey] = sc
		*l = lease{node: n, sc: sc, closer: sc}
	}
	n.inFlight.Add(1)
	return nil
}

// release returns the connection to its pool. One that holds session
// state (its conn is being closed, or the state was made on a replica) is
// closed instead: resetting it would also undo what the pool's AfterConnect
// set up, such as a role.
func (l *lease) release() {
	if l.sc == nil {
		return
	}
	if l.dirty {
		l.discard()
	}
	if l.pc != nil {
		l.pc.Release()
	} else if l.closer != nil {
		l.closer.Close()
	}
	n := l.node
	*l = lease{}
	if n.inFlight.Add(-1) == 0 && n.closing.Load() {
		n.close()
	}
}

// closeWhenIdle closes the node's pool now if no lease is out, else when
// the last one is released. db.Close must not wait for a sql.Conn, Tx or
// Rows that the application still holds.
func (n *node) closeWhenIdle() {
	n.closing.Store(true) // before the check: see release
	if n.inFlight.Load() == 0 {
		n.close()
	}
}

func (n *node) close() {
	n.closePool.Do(func() {
		if n.pool != nil {
			n.pool.Close()
		}
	})
}

// discard closes the physical connection so that release destroys it.
func (l *lease) discard() {
	if sc, ok := l.sc.(*stdlib.Conn); ok {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = sc.Conn().Close(ctx)
	}
}
