package pgreplica

import (
	"context"
	"database/sql/driver"
	"errors"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// node is one PostgreSQL server of the cluster with its own pool.
type node struct {
	index int    // position in the DSN; 0 was listed as the primary
	addr  string // host:port, never credentials
	// source is where it came from: the DSN, or discovery (membership.go).
	source Source
	pool   *pgxpool.Pool
	// acquiring counts primary acquires under way; see parkSticky.
	acquiring atomic.Int32
	// probeConfig is the pool's connection config, for the monitor's own
	// connection (see probeDial).
	probeConfig *pgx.ConnConfig
	// slots admits at most the pool's size of leases at once. Waiting here
	// rather than inside pgxpool lets a read stop waiting when the node is
	// marked down; pgxpool's own wait only ends with the caller's context.
	slots chan struct{}
	// Settings by role (rolesettings.go): the pool sizes (zero: its own),
	// the leases admitted at once now, the slots the limit holds (held)
	// and those it takes from the next releases (owed), and the connect
	// timeouts.
	sizes          roleSizes
	limitMu        sync.Mutex
	limit          atomic.Int32
	held, owed     atomic.Int32
	primaryTimeout time.Duration
	replicaTimeout time.Duration
	// wrapper builds the *stdlib.Conn for a physical connection the first
	// time it is used; see acquire.
	wrapper driver.Connector

	// Health, written by the monitor and by failing traffic. up changes
	// only under stateMu, together with epoch.
	stateMu    sync.Mutex
	up         atomic.Bool
	epoch      atomic.Pointer[upEpoch] // the current up period; ends when the node is marked down
	standby    atomic.Bool             // pg_is_in_recovery() at the last probe
	replayLSN  atomic.Uint64
	lagBytes   atomic.Int64
	lagNanos   atomic.Int64
	probedAt   atomic.Int64 // unix nanos of the last answered probe
	probeNanos atomic.Int64 // latency of the last answered probe
	rttNanos   atomic.Int64 // smoothed probe latency (see smoothRTT); 0 until measured
	failures   atomic.Int32 // consecutive failed probes, for backoff
	frozen     atomic.Bool  // the last failed probe timed out: it accepts but does not answer
	nextProbe  atomic.Int64 // unix nanos before which a down node is not probed
	fullUntil  atomic.Int64 // backoff after a connection refused with 53300; see refused.go
	fullStreak atomic.Int32 // refusals in a row since the last new connection

	// Staleness (staleness.go), written by the monitor: every commit the
	// primary had made visible at knownAt (monoNow) is replayed here, 0
	// while unknown; horizon is when the primary stopped answering probes,
	// 0 while it answers.
	knownAt atomic.Int64
	horizon atomic.Int64

	// cause is why its last probe or new connection failed; nil once a
	// probe answers (see setCause).
	cause atomic.Pointer[Cause]

	// Timelines (see updateLag): the timeline a standby follows, 0 while
	// unknown (see noteTimeline), and whether that is another timeline
	// than the primary's, which makes it serve no reads.
	timeline    atomic.Uint32
	offTimeline atomic.Bool

	// conns are the node's sockets, from dial to close, including those
	// still in the startup handshake; tracked at dial and close only,
	// never on the query path.
	connsMu sync.Mutex
	conns   map[*trackedConn]struct{}

	// closing is set when the connector closed; the pool closes when the
	// last lease comes back (pgxpool.Close would wait for it).
	closing atomic.Bool
	// closed ends when the connector closes: dials still under way (pgx's
	// cancel requests for connections it abandons, for one) give up, so
	// that none of their goroutines outlives db.Close.
	closed     context.Context
	closeDials context.CancelFunc
	closePool  sync.Once

	// fake replaces the pool in routing unit tests; fakeErr makes acquiring
	// from it fail as an unreachable server would.
	fake    nodeConn
	fakeErr error

	// sockets counts the node's open sockets (conns' length without its
	// lock): with inFlight, whether the pool likely has an idle connection.
	sockets atomic.Int64

	// Hedging (hedge.go): the delay after which a read is hedged (0: off),
	// the latencies it follows, and until when a node that lost to a hedge
	// gets no new reads.
	hedgeDelay    atomic.Int64
	hedgeMeasured atomic.Int64 // the last delay that enough latencies supported
	latency       latencyBuckets
	slowUntil     atomic.Int64
	beatenAt      atomic.Int64  // unix nanos of the last time a hedge beat it
	hedgesSent    atomic.Uint64 // hedges sent to this node
	hedgesWon     atomic.Uint64 // of those, answered first

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

// newNode builds the node at index of the members from its pool
// configuration. sizes are its pool sizes by role (rolesettings.go); zero
// keeps cfg.MaxConns whatever its role.
func newNode(index int, cfg *pgxpool.Config, sizes roleSizes) (*node, error) {
	n := &node{index: index, addr: addrOf(cfg), source: SourceDSN, conns: make(map[*trackedConn]struct{}), sizes: sizes}
	n.closed, n.closeDials = context.WithCancel(context.Background())
	cfg = cfg.Copy()
	n.primaryTimeout, n.replicaTimeout = cfg.ConnConfig.ConnectTimeout, cfg.ConnConfig.ConnectTimeout
	if n.replicaTimeout == 0 {
		n.replicaTimeout = defaultReplicaConnectTimeout
	}
	if sizes[0] != 0 {
		cfg.MaxConns = max(sizes[0], sizes[1])
	}
	next := cfg.BeforeConnect
	cfg.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		if t := n.connectTimeout(); t > 0 { // the role's, now
			cc.ConnectTimeout = t
		}
		if next != nil {
			return next(ctx, cc)
		}
		return nil
	}
	cfg.ConnConfig.DialFunc = n.dialFunc(cfg.ConnConfig.DialFunc)
	cfg.ConnConfig.AfterConnect = n.afterConnect(cfg.ConnConfig.AfterConnect)
	n.probeConfig = cfg.ConnConfig.Copy()
	n.probeConfig.Tracer = nil // probes are not the application's statements
	// Until the first probe answers, trust the DSN: listed nodes are up and
	// every node but the first is a standby. Set before the pool exists:
	// it dials pool_min_conns connections at once, and a replica not yet
	// up would refuse them until pgxpool's next health check.
	n.epoch.Store(newUpEpoch())
	n.up.Store(true)
	n.standby.Store(index != 0)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	n.pool, n.wrapper = pool, stdlib.GetPoolConnector(pool)
	n.slots = make(chan struct{}, pool.Config().MaxConns) // pgxpool's default when cfg left it 0
	n.limit.Store(int32(cap(n.slots)))
	n.followRole()
	return n, nil
}

// errNodeDown is what a lease or a dial gets from a replica that routing
// has marked down; reads move on to the next node.
var errNodeDown = errors.New("pgreplica: node is marked down")

// dialFunc wraps the node's dial function for the pool's connections and
// for pgx's cancel requests, which dial through it too (pgconn's
// CancelRequest calls Config.DialFunc with the caller's context: 15 s when
// a broken connection is closed, and pgxpool holds the connection's slot
// until it returns). A dial to a replica marked down fails at once; one in
// progress when it is marked down is abandoned; every dial is bounded by
// the connect timeout. Sockets are tracked so abortConns can close them.
func (n *node) dialFunc(dial pgconn.DialFunc) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		timeout := n.connectTimeout() // the role's, now
		e := n.downEpoch()
		if ctx.Value(probeDial{}) != nil {
			e = noEpoch // the monitor must reach a node routing gave up on
		}
		if e == nil {
			return nil, errNodeDown
		}
		if n.closing.Load() {
			return nil, ErrClosed
		}
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(n.closed, cancel)()
		if timeout > 0 {
			var cancelT context.CancelFunc
			dctx, cancelT = context.WithTimeout(dctx, timeout)
			defer cancelT()
		}
		if e != noEpoch {
			stop := context.AfterFunc(e.ctx, cancel)
			defer stop()
		}
		noteHedgeDial(ctx)
		c, err := dial(dctx, network, addr)
		if err != nil {
			if e != noEpoch && e.ctx.Err() != nil {
				return nil, errNodeDown
			}
			return nil, err
		}
		tc := n.track(c)
		if n.closing.Load() {
			// The connector closed while this dialled (a cancel request
			// of pgx's, say): close may have closed the tracked sockets
			// before this one was tracked, and nothing else would.
			tc.Close()
			return nil, ErrClosed
		}
		if e != noEpoch && e.ctx.Err() != nil {
			// Marked down while dialling: abortConns may have run before
			// this socket was tracked.
			tc.Close()
			return nil, errNodeDown
		}
		return tc, nil
	}
}

// probeDial marks the context of the monitor's connection attempts: they
// dial a node even while it is marked down. Cancel requests for the
// monitor's connection do not carry it, so they fail at once like any other.
type probeDial struct{}

// upEpoch is one period during which the node was up; its context ends
// when the node is marked down, waking waits and dials on it.
type upEpoch struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newUpEpoch() *upEpoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &upEpoch{ctx: ctx, cancel: cancel}
}

// noEpoch is downEpoch's answer for a node whose waits and dials are not
// cut short when it is marked down: the primary, whose writes only the
// server can judge.
var noEpoch = &upEpoch{}

// downEpoch returns the up period whose end should abort a wait or a dial
// on the node, noEpoch when none should, or nil when the node is a replica
// already marked down.
func (n *node) downEpoch() *upEpoch {
	if !n.standby.Load() {
		return noEpoch
	}
	e := n.epoch.Load()
	if !n.up.Load() {
		return nil
	}
	return e
}

// setDown marks the node down and ends its up period; it reports whether
// the node was up.
func (n *node) setDown() bool {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if !n.up.Swap(false) {
		return false
	}
	if e := n.epoch.Load(); e != nil && e.cancel != nil {
		e.cancel()
	}
	return true
}

// setUp marks the node up in a new up period; it reports whether the node
// was down.
func (n *node) setUp() bool {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if n.up.Load() {
		return false
	}
	n.epoch.Store(newUpEpoch())
	n.up.Store(true)
	return true
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
	// terminated is set once pgx wrote Terminate on it: pgx is closing it,
	// and (after an aborted statement) may wait up to 15 s for the server
	// to hang up, which a partitioned or frozen server never does.
	terminated atomic.Bool
	// peek looks at its receive queue before a pooled primary connection
	// is used (conncheck.go); nil when the socket has no raw descriptor.
	peek *peeker
	// sent is the first byte of pgx's last write, reply the first byte
	// read after that write began, |replied (0: nothing read since): what
	// tells a statement the server never ran from one it may have
	// (unreceived.go).
	sent, reply atomic.Uint32
}

// replied marks reply as set (a zero byte is a byte).
const replied = 0x100

// terminateMsg is the protocol's Terminate message: 'X', length 4.
var terminateMsg = [5]byte{'X', 0, 0, 0, 4}

func (c *trackedConn) Write(b []byte) (int, error) {
	if len(b) == len(terminateMsg) && [5]byte(b) == terminateMsg {
		c.terminated.Store(true)
		n, err := c.Conn.Write(b)
		if c.n.closing.Load() {
			c.Conn.Close() // no one waits for the server's goodbye any more
		}
		return n, err
	}
	if len(b) > 0 {
		c.reply.Store(0) // before the bytes go: no answer to them can precede it
		c.sent.Store(uint32(b[0]))
	}
	return c.Conn.Write(b)
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.reply.Load() == 0 {
		c.reply.CompareAndSwap(0, uint32(b[0])|replied)
	}
	return n, err
}

func (n *node) track(c net.Conn) *trackedConn {
	tc := &trackedConn{Conn: c, n: n, peek: newPeeker(c)}
	n.connsMu.Lock()
	n.conns[tc] = struct{}{}
	n.connsMu.Unlock()
	n.sockets.Add(1)
	return tc
}

func (c *trackedConn) Close() error {
	c.n.connsMu.Lock()
	_, open := c.n.conns[c]
	delete(c.n.conns, c)
	c.n.connsMu.Unlock()
	if open {
		c.n.sockets.Add(-1)
	}
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
	return n.setDown()
}

// noLagLimit is the maxLag of a read with no lag limit (max_replica_lag=off
// and no WithMaxLag): a maxLag of 0 means caught up.
const noLagLimit = time.Duration(math.MaxInt64)

// lagLimit is the maxLag for a configured limit, where 0 means off.
func lagLimit(d time.Duration) time.Duration {
	if d <= 0 {
		return noLagLimit
	}
	return d
}

// usableReplica says whether the node may serve a read that tolerates
// maxLag (0: caught up; noLagLimit: any lag) and must have replayed at
// least minLSN.
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
	case n.offTimeline.Load(), !n.withinLag(maxLag),
		minLSN != 0 && n.replayLSN.Load() < minLSN:
		return rerouteLag
	case n.fullBlocks(fullProbation):
		return rerouteFull
	}
	return usable
}

// poolFull says whether every connection the pool may open is leased out:
// the next acquire waits for a slot.
func (n *node) poolFull() bool {
	return cap(n.slots) > 0 && len(n.slots) == cap(n.slots)
}

// fullProbation bounds how long the first attempt on a node whose backoff
// after a refused connection passed keeps the others away (see fullBlocks):
// an attempt that opens a connection or is refused ends it sooner.
const fullProbation = time.Second

// stillBefore says whether now is before the unix-nanos time in until (0:
// none), clearing it once past so that later calls skip the clock.
func stillBefore(until *atomic.Int64) bool {
	t := until.Load()
	if t == 0 {
		return false
	}
	if time.Now().UnixNano() < t {
		return true
	}
	until.CompareAndSwap(t, 0)
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
	// A replica connection that holds a conn's settings (settings.go):
	// the log it replayed, and what to set back before it is pooled.
	settingsGen uint64
	restore     []settingRestore
}

func (l *lease) held() bool { return l.sc != nil }

func (n *node) acquire(ctx context.Context, l *lease) error {
	return n.acquireAbortable(ctx, l, nil)
}

// acquireAbortable is acquire whose wait for a slot also ends when abort
// is closed.
func (n *node) acquireAbortable(ctx context.Context, l *lease, abort <-chan struct{}) error {
	if n.fake != nil {
		if err := n.fakeErr; err != nil {
			return err
		}
		*l = lease{node: n, sc: n.fake}
		n.inFlight.Add(1)
		return nil
	}
	if err := n.takeSlot(ctx, abort); err != nil {
		return err
	}
	return n.leaseConn(ctx, l)
}

// leaseConn takes a physical connection for l once the caller holds a
// slot, giving the slot back if that fails.
func (n *node) leaseConn(ctx context.Context, l *lease) error {
	if err := n.acquireConn(ctx, l); err != nil {
		n.freeSlot()
		return err
	}
	n.inFlight.Add(1)
	return nil
}

// trySlot admits one more lease if a slot is free now, without waiting.
func (n *node) trySlot() bool {
	select {
	case n.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// takeSlot admits one more lease on the node. When every slot is taken it
// waits for one, for the caller's context to end, or for a replica to be
// marked down, whichever comes first: a read waiting for a dead node's
// connections moves to the next node instead. The common case, a free
// slot, costs one channel send and allocates nothing.
func (n *node) takeSlot(ctx context.Context, abort <-chan struct{}) error {
	if n.trySlot() {
		return nil
	}
	e := n.downEpoch()
	if e == nil {
		return errNodeDown
	}
	var down <-chan struct{}
	if e != noEpoch {
		down = e.ctx.Done()
	}
	select {
	case n.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-down:
		return errNodeDown
	case <-abort:
		return errHedgeWon
	}
}

// acquireConn takes a physical connection for l; the caller holds a slot,
// so the pool has room unless a destroyed connection still holds its own
// slot (the dial function keeps that short: see dialFunc).
func (n *node) acquireConn(ctx context.Context, l *lease) error {
	pc, err := n.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	if sc, ok := pc.Conn().PgConn().CustomData()[wrapperKey].(*stdlib.Conn); ok {
		*l = lease{node: n, pc: pc, sc: sc}
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
	l.undoSettings() // may mark it dirty
	if l.dirty {
		l.discard()
	}
	if l.pc != nil {
		l.pc.Release()
	} else if l.closer != nil {
		l.closer.Close()
	}
	n := l.node
	if n.slots != nil {
		n.freeSlot()
	}
	*l = lease{}
	if n.inFlight.Add(-1) == 0 && n.closing.Load() {
		n.close()
	}
}

// closeWhenIdle closes the node's pool now if no lease is out, else when
// the last one is released. db.Close must not wait for a sql.Conn, Tx or
// Rows that the application still holds.
func (n *node) closeWhenIdle() {
	n.closing.Store(true)    // before the check: see release
	if n.closeDials != nil { // fakes in unit tests have none
		n.closeDials()
	}
	// Connections pgx is closing in the background would otherwise keep a
	// goroutine waiting for the server after db.Close.
	n.connsMu.Lock()
	for c := range n.conns {
		if c.terminated.Load() {
			c.Conn.Close()
		}
	}
	n.connsMu.Unlock()
	if n.inFlight.Load() == 0 {
		n.close()
	}
}

func (n *node) close() {
	n.closePool.Do(func() {
		if n.pool != nil {
			n.pool.Close()
		}
		// What is still open now, pgx is abandoning in the background (a
		// connection dropped mid-statement waiting for a frozen server's
		// goodbye, a connection still being opened for a read that was
		// hedged elsewhere): close it, so no goroutine of pgx's outlives
		// db.Close.
		n.connsMu.Lock()
		for c := range n.conns {
			c.Conn.Close()
		}
		n.connsMu.Unlock()
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
