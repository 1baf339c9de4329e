package pgreplica

import (
	"context"
	"database/sql/driver"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Compile-time checks of the interfaces database/sql looks for.
var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// maxNodes bounds a cluster so that the nodes tried by one call fit in a
// bit set.
const maxNodes = 64

// Connector is a driver.Connector for one primary and its replicas; use it
// with sql.OpenDB to build the configuration in code. database/sql's
// db.Close closes it: its pools, and its monitor goroutine.
type Connector struct {
	driver *Driver
	cfg    Config
	policy Policy
	log    *slog.Logger
	// nodes are the members the DSN named, in its order. The current
	// members (which discovery may change) are in topo: see allNodes.
	nodes []*node
	topo  atomic.Pointer[topology]
	// topoMu orders setTopology's stores and wake-ups; topoChanged is
	// closed (and replaced) by every setTopology.
	topoMu      sync.Mutex
	topoChanged chan struct{}
	// rolesKnown is closed once every member was probed once, answered or
	// not: until then the roles are the DSN's guess.
	rolesKnown     chan struct{}
	rolesKnownOnce sync.Once

	primarySample atomic.Pointer[lsnSample] // newest probe of the primary
	// ryw is the session every statement shares under
	// read_your_writes=connector, else nil.
	ryw *session
	// ddl is a session that records only DDL: a catalog read (of
	// information_schema or pg_catalog) is bounded by it in every mode, so
	// a migrator that creates a table and then looks for it finds it.
	ddl        session
	sticky     stickyConns      // idle conns holding session state
	hedges     hedgeBudgetState // how many reads may still be hedged
	hedgeWatch hedgeWatch       // fires the hedges that are due
	fallback   fallbackShare    // the primary's share of fallback reads

	// traced is set when a node has a pgx tracer: statements then carry
	// their route reason in the context (RouteReason).
	traced bool

	closed    atomic.Bool
	closeOnce sync.Once
	mon       *monitor
	members   *membership // nil without discovery
}

// topology is who plays which role now; replaced whole when it changes
// (setTopology).
type topology struct {
	primary  *node   // nil while no node is known to be the writable primary
	replicas []*node // every member but the primary
	nodes    []*node // every member: the DSN's in its order, then any discovered
}

// NewConnector starts the pools (they connect lazily) and the monitor of
// the nodes that cfg describes. Fields left zero get their defaults (see
// Config); a Config without a Primary, or with a value out of range, is
// refused with ErrInvalidConfig. Use the result with sql.OpenDB:
//
//	c, err := pgreplica.NewConnector(cfg)
//	if err != nil {
//		return err
//	}
//	db := sql.OpenDB(c) // db.Close closes c
func NewConnector(cfg Config) (*Connector, error) {
	return newConnector(cfg)
}

func newConnector(cfg Config) (*Connector, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	c := &Connector{cfg: cfg, policy: cfg.Policy, log: cfg.Logger}
	c.driver = &Driver{c: c}
	if c.policy == nil {
		c.policy = Random()
	}
	if c.log == nil {
		c.log = slog.New(defaultLogHandler{})
	}
	for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
		c.traced = c.traced || pc.ConnConfig.Tracer != nil
	}
	c.topoChanged = make(chan struct{})
	c.rolesKnown = make(chan struct{})
	var discovered []*node
	if cfg.discovering() {
		c.members = newMembership(c)
		discovered = c.members.first()
	}
	if discovered != nil {
		// The members discovery reported; which is the primary, the first
		// probe round tells (none is assumed).
		c.nodes = discovered
		c.topo.Store(newTopology(nil, c.nodes))
	} else {
		for i, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
			n, err := newNode(i, pc, cfg.roleSizes(i))
			if err != nil {
				c.closeNodes()
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, nodeLabel(i), err)
			}
			c.nodes = append(c.nodes, n)
		}
		c.topo.Store(&topology{primary: c.nodes[0], replicas: c.nodes[1:], nodes: c.nodes})
	}
	if cfg.ReadYourWrites == ReadYourWritesConnector {
		c.ryw = &session{}
	}
	c.updateHedgeDelays()
	if cfg.HedgeAfter >= 0 {
		c.hedgeWatch.start()
	}
	c.mon = startMonitor(c)
	c.members.start()
	return c, nil
}

// Connect returns a lightweight handle: physical connections are taken
// from the node pools per checkout, when a statement needs one.
func (c *Connector) Connect(context.Context) (driver.Conn, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	return &conn{c: c}, nil
}

// Driver returns the pgreplica driver; db.Driver() returns it too. It is
// this Connector's own, which is how ConnectorOf finds the Connector.
func (c *Connector) Driver() driver.Driver { return c.driver }

// Close stops the monitor and closes every pool; database/sql calls it from
// db.Close. A pool from which a sql.Conn, Tx or Rows still holds a
// connection closes when that connection is released, as with database/sql's
// own connections. It is idempotent.
func (c *Connector) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.members.stop() // before the monitor: it kicks the monitor
		c.mon.stop()
		c.hedgeWatch.close()
		c.closeNodes()
		c.hedgeWatch.waitFired()
	})
	return nil
}

func (c *Connector) closeNodes() {
	for _, n := range c.allNodes() {
		n.closeWhenIdle()
	}
}

// allNodes returns the current members.
func (c *Connector) allNodes() []*node {
	if t := c.topo.Load(); t != nil && t.nodes != nil {
		return t.nodes
	}
	return c.nodes // a routing unit test's connector, built by hand
}

// setTopology replaces the topology and wakes whoever waits for a change
// (see topologyChange).
func (c *Connector) setTopology(t *topology) {
	c.topoMu.Lock()
	defer c.topoMu.Unlock()
	c.topo.Store(t)
	if c.topoChanged != nil { // nil in a routing unit test's connector
		close(c.topoChanged)
	}
	c.topoChanged = make(chan struct{})
}

// changeTopology replaces the topology with what change makes of the
// current one, under the lock that orders every change: the monitor
// (roles) and membership (members) each change their part only.
func (c *Connector) changeTopology(change func(cur *topology) *topology) {
	c.topoMu.Lock()
	defer c.topoMu.Unlock()
	c.topo.Store(change(c.topo.Load()))
	if c.topoChanged != nil { // nil in a routing unit test's connector
		close(c.topoChanged)
	}
	c.topoChanged = make(chan struct{})
}

// newTopology is the topology of nodes with primary (nil: none known) as
// the primary.
func newTopology(primary *node, nodes []*node) *topology {
	replicas := make([]*node, 0, len(nodes))
	for _, n := range nodes {
		if n != primary {
			replicas = append(replicas, n)
		}
	}
	return &topology{primary: primary, replicas: replicas, nodes: nodes}
}

// topologyChange returns the topology now and a channel closed at the next
// setTopology: load both at once, so that no change falls between them.
func (c *Connector) topologyChange() (*topology, <-chan struct{}) {
	c.topoMu.Lock()
	defer c.topoMu.Unlock()
	return c.topo.Load(), c.topoChanged
}

// markRolesKnown says every member was probed once; the monitor calls it
// after its first round.
func (c *Connector) markRolesKnown() {
	c.rolesKnownOnce.Do(func() {
		if c.rolesKnown != nil {
			close(c.rolesKnown)
		}
	})
}

// primary returns the node writes go to, or ErrNoPrimary.
func (c *Connector) primary() (*node, error) {
	if p := c.topo.Load().primary; p != nil {
		return p, nil
	}
	return nil, ErrNoPrimary
}

// logDown logs that n stopped answering, and why, in words and SQLSTATE:
// never the error's text, which may name the user or the DSN.
func (c *Connector) logDown(n *node, err error) {
	cause := errorCause(err)
	attrs := []any{"node", n.addr, "cause", cause.Reason}
	if cause.SQLState != "" {
		attrs = append(attrs, "sqlstate", cause.SQLState)
	}
	c.log.Warn("pgreplica: node down", attrs...)
}

// logTimedOut logs a node's first probe timeout in a row: it gets no new
// reads, and what runs on it is left alone (one timeout may be a loaded
// machine). The primary keeps its writes either way.
func (c *Connector) logTimedOut(n *node) {
	if n.standby.Load() {
		c.log.Warn("pgreplica: probe timed out, no new reads", "node", n.addr, "cause", "timeout")
		return
	}
	c.log.Warn("pgreplica: primary probe timed out", "node", n.addr, "cause", "timeout")
}

// logFrozen logs a node's second probe timeout in a row: it accepts
// connections and does not answer. A replica's connections are aborted,
// so that reads stuck on it are retried elsewhere; a primary's are not:
// only the server knows what became of its writes.
func (c *Connector) logFrozen(n *node) {
	if n.standby.Load() {
		c.log.Warn("pgreplica: node frozen, connections aborted", "node", n.addr, "cause", "timeout")
		return
	}
	c.log.Warn("pgreplica: primary frozen, writes in flight left to the server", "node", n.addr, "cause", "timeout")
}

// defaultLogHandler sends the connector's records to slog.Default() as it
// is when each is logged: an application that sets its default logger after
// sql.Open (or never, and reads the log package's output) hears of state
// changes all the same.
type defaultLogHandler struct{}

func (defaultLogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return slog.Default().Handler().Enabled(ctx, l)
}

func (defaultLogHandler) Handle(ctx context.Context, r slog.Record) error {
	return slog.Default().Handler().Handle(ctx, r)
}

func (defaultLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return slog.Default().Handler().WithAttrs(as)
}

func (defaultLogHandler) WithGroup(name string) slog.Handler {
	return slog.Default().Handler().WithGroup(name)
}

// primaryOnly says whether the DSN names one node: a single-node
// deployment, whose primary serves every read by design. Its reads are
// not a fallback, fallback_to_primary does not apply to them, and its
// health is not degraded.
func (c *Connector) primaryOnly() bool { return len(c.allNodes()) == 1 }

// fallbackReason is the route reason of a read the primary serves because
// no replica is usable.
func (c *Connector) fallbackReason() Reason {
	if c.primaryOnly() {
		return ReasonPrimaryOnly
	}
	return ReasonFallback
}

// pickReplica asks the policy to choose among the replicas that may serve
// a read now, skipping those already tried by this call. It returns nil
// when none may, and an error only when the policy panicked.
func (c *Connector) pickReplica(cn *conn, maxLag time.Duration, minLSN, tried uint64) (*node, error) {
	topo := c.topo.Load()
	nodes := cn.candNodes[:0]
	for _, n := range topo.replicas {
		if tried&(1<<n.index) != 0 {
			continue
		}
		switch why := n.skipReason(maxLag, minLSN); why {
		case usable:
			nodes = append(nodes, n)
		case rerouteDown, rerouteLag, rerouteFull:
			n.reroutes[why].Add(1)
		}
	}
	if len(nodes) > 1 {
		nodes = withoutSlow(nodes)
	}
	cn.candNodes = nodes
	switch len(nodes) {
	case 0:
		return nil, nil
	case 1:
		return nodes[0], nil // no choice to make: skip building candidates
	}
	cands := cn.cands[:0]
	for _, n := range nodes {
		cands = append(cands, Candidate{
			Index:    n.index,
			Addr:     n.addr,
			InFlight: int(n.inFlight.Load()),
			Lag:      time.Duration(n.lagNanos.Load()),
			RTT:      time.Duration(n.rttNanos.Load()),
		})
	}
	cn.cands = cands
	i, err := c.choose(cands)
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= len(nodes) {
		i = 0
	}
	return nodes[i], nil
}

// withoutSlow drops the nodes a hedge beat a moment ago (see hedge.go),
// unless that drops them all; it filters in place.
func withoutSlow(nodes []*node) []*node {
	kept := nodes[:0]
	for _, n := range nodes {
		if !n.slow() {
			kept = append(kept, n)
		}
	}
	if len(kept) == 0 {
		return nodes // all slow: nothing was overwritten
	}
	return kept
}

// choose runs the policy. A policy that panics fails the read with an
// error naming it: the panic would otherwise unwind through database/sql,
// which then never gets its connection back.
func (c *Connector) choose(cands []Candidate) (i int, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %T panicked: %v", ErrPolicy, c.policy, r)
		}
	}()
	return c.policy.Choose(cands), nil
}

// anyUsableReplica says whether a replica not yet tried could serve a read
// that tolerates maxLag, whatever its replay position.
func (c *Connector) anyUsableReplica(maxLag time.Duration, tried uint64) bool {
	for _, n := range c.topo.Load().replicas {
		if tried&(1<<n.index) == 0 && n.usableReplica(maxLag, 0) {
			return true
		}
	}
	return false
}

// connectFailed records that a new connection to n could not be opened.
// A node that cannot be reached leaves routing at once, and the monitor
// re-probes it; one that refused only for want of a free slot (53300) is
// full: it gets no new reads until its backoff passes (see refused.go), and
// it is not reported down. One terminated while it started up
// (57P01) is only that connection's failure.
func (c *Connector) connectFailed(n *node, err error) {
	if isTooManyConnections(err) || isConnectTimeout(err) && n.fullStreak.Load() != 0 {
		// A timed-out attempt to a node whose last answer was 53300 (no
		// connection opened since) is no evidence it is down: a full
		// server on a loaded machine answers its refusal late (issue 19).
		// It stays backed off; the monitor's probe, one after each backoff,
		// still finds a node that really died or froze.
		n.refused(err, c.cfg.MonitorInterval)
		n.reroutes[rerouteFull].Add(1)
		return
	}
	if isTerminated(err) {
		// It was accepted and then terminated (pg_terminate_backend while
		// it started up, or a shutdown): one connection's failure. The
		// monitor finds out at once whether the server is going away.
		n.reroutes[rerouteRetry].Add(1)
		c.mon.kick()
		return
	}
	n.reroutes[rerouteDown].Add(1)
	if n.up.Load() {
		// Only the failure that takes a node out names its cause (the
		// monitor's probes refresh it): later ones are mostly that
		// outage's echo, a dial abandoned when routing marked the node
		// down or a handshake abortConns cut, and showed a frozen node's
		// cause as "error" instead of its timeout.
		n.setCause(err)
	}
	if n.markDown() {
		c.logDown(n, err)
		if n.standby.Load() {
			n.abortConns()
		}
		n.resetPool()
		c.mon.kick()
	}
}

// connectionFailed records that one established connection to n broke
// (its backend was terminated, the socket closed): only that connection
// is lost, and pgxpool destroys it on release. A dying server breaks every
// connection and refuses new ones, so the monitor checks the node now.
func (c *Connector) connectionFailed(err error) {
	if isConnectionError(err) {
		c.mon.kick()
	}
}
