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
	nodes  []*node // DSN order
	topo   atomic.Pointer[topology]

	primarySample atomic.Pointer[lsnSample] // newest probe of the primary

	// traced is set when a node has a pgx tracer: statements then carry
	// their route reason in the context (RouteReason).
	traced bool

	closed    atomic.Bool
	closeOnce sync.Once
	mon       *monitor
}

// topology is who plays which role now; replaced whole when it changes.
type topology struct {
	primary  *node // nil while no node is known to be the writable primary
	replicas []*node
}

// NewConnector starts the pools (they connect lazily) and the monitor of
// the nodes that cfg describes.
func NewConnector(cfg Config) (*Connector, error) {
	return newConnector(cfg)
}

func newConnector(cfg Config) (*Connector, error) {
	if cfg.Primary == nil {
		return nil, fmt.Errorf("%w: Config.Primary is nil", ErrInvalidDSN)
	}
	if 1+len(cfg.Replicas) > maxNodes {
		return nil, fmt.Errorf("%w: %d nodes; pgreplica supports at most %d", ErrInvalidDSN, 1+len(cfg.Replicas), maxNodes)
	}
	if cfg.MonitorInterval <= 0 {
		cfg.MonitorInterval = DefaultMonitorInterval
	}
	c := &Connector{driver: &Driver{}, cfg: cfg, policy: cfg.Policy, log: cfg.Logger}
	if c.policy == nil {
		c.policy = Random()
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	for i, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
		if cfg.Tracer != nil && pc.ConnConfig.Tracer == nil {
			pc = pc.Copy() // the caller's Config stays as it was
			pc.ConnConfig.Tracer = cfg.Tracer
		}
		c.traced = c.traced || pc.ConnConfig.Tracer != nil
		n, err := newNode(i, pc)
		if err != nil {
			c.closeNodes()
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidDSN, nodeLabel(i), err)
		}
		c.nodes = append(c.nodes, n)
	}
	c.topo.Store(&topology{primary: c.nodes[0], replicas: c.nodes[1:]})
	c.mon = startMonitor(c)
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

// Driver returns the pgreplica driver.
func (c *Connector) Driver() driver.Driver { return c.driver }

// Close stops the monitor and closes every pool; database/sql calls it from
// db.Close. A pool from which a sql.Conn, Tx or Rows still holds a
// connection closes when that connection is released, as with database/sql's
// own connections. It is idempotent.
func (c *Connector) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.mon.stop()
		c.closeNodes()
	})
	return nil
}

func (c *Connector) closeNodes() {
	for _, n := range c.nodes {
		n.closeWhenIdle()
	}
}

// primary returns the node writes go to, or ErrNoPrimary.
func (c *Connector) primary() (*node, error) {
	if p := c.topo.Load().primary; p != nil {
		return p, nil
	}
	return nil, ErrNoPrimary
}

// pickReplica asks the policy to choose among the replicas that may serve
// a read now, skipping those already tried by this call.
func (c *Connector) pickReplica(cn *conn, maxLag time.Duration, minLSN, tried uint64) *node {
	topo := c.topo.Load()
	nodes := cn.candNodes[:0]
	for _, n := range topo.replicas {
		if tried&(1<<n.index) != 0 {
			continue
		}
		switch why := n.skipReason(maxLag, minLSN); why {
		case usable:
			nodes = append(nodes, n)
		case rerouteDown, rerouteLag:
			n.reroutes[why].Add(1)
		}
	}
	cn.candNodes = nodes
	switch len(nodes) {
	case 0:
		return nil
	case 1:
		return nodes[0] // no choice to make: skip building candidates
	}
	cands := cn.cands[:0]
	for _, n := range nodes {
		cands = append(cands, Candidate{
			Index:    n.index - 1,
			Addr:     n.addr,
			InFlight: int(n.inFlight.Load()),
			Lag:      time.Duration(n.lagNanos.Load()),
		})
	}
	cn.cands = cands
	i := c.policy.Choose(cands)
	if i < 0 || i >= len(nodes) {
		i = 0
	}
	return nodes[i]
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

// trafficFailed records that real traffic found n unreachable: it leaves
// routing at once, and the monitor re-probes it.
func (c *Connector) trafficFailed(n *node, err error) {
	if n.markDown() {
		c.log.Warn("pgreplica: node down", "node", n.addr, "cause", errorClass(err))
		if n.standby.Load() {
			n.abortConns()
		}
		n.resetPool()
		c.mon.kick()
	}
}
