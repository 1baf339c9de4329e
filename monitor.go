package pgreplica

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// probeSQL learns a node's role and WAL position in one round trip. A
// primary reports its insert position (it covers every acknowledged
// commit, even with synchronous_commit off) and its flush position (what a
// standby can have received); a standby reports what it has replayed.
const probeSQL = `SELECT pg_is_in_recovery(),
	(CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_insert_lsn() END - '0/0')::bigint,
	(CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_flush_lsn() END - '0/0')::bigint`

// historyLen bounds the primary positions kept to turn a standby's replay
// position into a time lag: ten minutes at the default interval.
const historyLen = 600

// monitor probes every node on its own connection (so a full pool cannot
// starve it) each interval, or at once when traffic saw a failure.
type monitor struct {
	c        *Connector
	interval time.Duration
	timeout  time.Duration // a probe query on an open connection
	// connectTimeout bounds opening a probe connection, authentication
	// included: on a loaded machine that alone can outlast timeout, and a
	// freeze is caught by the query on the open connection anyway.
	connectTimeout time.Duration
	kickCh         chan struct{}
	stopCh         chan struct{}
	done           chan struct{}

	// Owned by the monitor goroutine.
	probeConns []*pgx.Conn
	history    []lsnSample // primary flush positions, oldest first
	lagging    []bool
	splitBrain bool
	roundStart int64 // unix nanos at which the current round began
}

type probeResult struct {
	skipped  bool
	err      error
	standby  bool
	lsn      uint64 // insert (primary) or replay (standby) position
	flushLSN uint64
	started  int64 // monoNow
	latency  time.Duration
}

func startMonitor(c *Connector) *monitor {
	timeout := min(max(c.cfg.MonitorInterval, 500*time.Millisecond), 5*time.Second)
	m := &monitor{
		c:              c,
		interval:       c.cfg.MonitorInterval,
		timeout:        timeout,
		connectTimeout: max(timeout, defaultReplicaConnectTimeout),
		kickCh:         make(chan struct{}, 1),
		stopCh:         make(chan struct{}),
		done:           make(chan struct{}),
		probeConns:     make([]*pgx.Conn, len(c.nodes)),
		lagging:        make([]bool, len(c.nodes)),
	}
	go m.run()
	return m
}

// kick asks for a probe round now; it never blocks.
func (m *monitor) kick() {
	if m == nil {
		return // routing unit tests run without a monitor
	}
	select {
	case m.kickCh <- struct{}{}:
	default:
	}
}

func (m *monitor) stop() {
	if m == nil {
		return
	}
	close(m.stopCh)
	<-m.done
}

func (m *monitor) run() {
	defer close(m.done)
	defer m.closeProbeConns()
	ticker := time.NewTicker(m.interval)
	defer ticker.Stop()
	for {
		m.round()
		select {
		case <-m.stopCh:
			return
		case <-ticker.C:
			m.c.updateHedgeDelays()
		case <-m.kickCh:
			// Failures come in bursts: one extra round covers them all.
			select {
			case <-m.stopCh:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

func (m *monitor) closeProbeConns() {
	for i, pc := range m.probeConns {
		if pc != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_ = pc.Close(ctx)
			cancel()
			m.probeConns[i] = nil
		}
	}
}

// round probes every node at once, each bounded by the probe timeout, and
// then applies what they said.
func (m *monitor) round() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // a stop must not wait for a frozen node's timeout
		select {
		case <-m.stopCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	results := make([]probeResult, len(m.c.nodes))
	now := time.Now().UnixNano()
	m.roundStart = now
	var wg sync.WaitGroup
	for i, n := range m.c.nodes {
		if !n.up.Load() && now < n.nextProbe.Load() ||
			m.needsConnect(i) && n.fullBlocks(fullProbation) {
			results[i].skipped = true
			continue
		}
		wg.Go(func() { results[i] = m.probe(ctx, i) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // stopping
	}
	m.apply(results)
}

// needsConnect says whether probing node i must open a connection first:
// a node backed off after refusing one is then not probed (see refused.go).
func (m *monitor) needsConnect(i int) bool {
	return m.probeConns[i] == nil || m.probeConns[i].IsClosed()
}

func (m *monitor) probe(parent context.Context, i int) probeResult {
	r := probeResult{started: monoNow()}
	reused := m.probeConns[i] != nil && !m.probeConns[i].IsClosed()
	r.err = m.probeOnce(parent, i, &r)
	// The probe's own connection may have been the only one to fail
	// (pg_terminate_backend, an idle timeout), and a new one may be
	// terminated while it starts up: that says nothing about the node, so
	// ask again on a new connection, at most twice. A server that is
	// shutting down refuses the new connection (57P03, or refused).
	for retries := 2; r.err != nil && retries > 0 && (reused || isTerminated(r.err)) &&
		!errors.Is(r.err, errProbeTimeout) && parent.Err() == nil; retries-- {
		reused = false
		r.err = m.probeOnce(parent, i, &r)
	}
	return r
}

// probeOnce runs the probe query, opening the node's probe connection
// first when it has none. A connection that failed is closed.
func (m *monitor) probeOnce(parent context.Context, i int, r *probeResult) error {
	pc := m.probeConns[i]
	fresh := pc == nil || pc.IsClosed()
	if fresh {
		cctx, cancel := context.WithTimeout(context.WithValue(parent, probeDial{}, true), m.connectTimeout)
		var err error
		pc, err = pgx.ConnectConfig(cctx, m.c.nodes[i].probeConfig)
		timedOut := cctx.Err() != nil
		cancel()
		if err != nil {
			if timedOut {
				err = errProbeTimeout // it accepted the connection and never answered
			}
			return err
		}
		m.probeConns[i] = pc
	}
	ctx, cancel := context.WithTimeout(parent, m.timeout)
	defer cancel()
	var err error
	if fresh {
		// A new backend's first query fills its catalog caches and takes
		// milliseconds; timed, it would seed the smoothed RTT too high
		// (replica_policy=nearest could then take a far node for near).
		err = readProbe(ctx, pc, r)
	}
	t0 := time.Now() // latency of the query alone, not of a reconnect
	if err == nil {
		err = readProbe(ctx, pc, r)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = errProbeTimeout
		}
		closeCtx, closeCancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_ = pc.Close(closeCtx)
		closeCancel()
		m.probeConns[i] = nil
		return err
	}
	r.latency = time.Since(t0)
	return nil
}

// readProbe runs probeSQL with the simple query protocol of pgconn itself:
// probes must work whatever the DSN's query mode (a pgbouncer that keeps
// no prepared statements) and session settings (pgx's own simple protocol
// refuses to run with standard_conforming_strings=off).
func readProbe(ctx context.Context, pc *pgx.Conn, r *probeResult) error {
	results, err := pc.PgConn().Exec(ctx, probeSQL).ReadAll()
	if err != nil {
		return err
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 3 {
		return errors.New("pgreplica: unexpected probe result")
	}
	row := results[0].Rows[0]
	lsn, err1 := strconv.ParseUint(string(row[1]), 10, 64)
	flush, err2 := strconv.ParseUint(string(row[2]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("pgreplica: unexpected probe result: %w", err)
	}
	r.standby, r.lsn, r.flushLSN = string(row[0]) == "t", lsn, flush
	return nil
}

// apply turns one round of probes into node states, the primary's WAL
// history, replica lag and, when the servers changed roles, a new topology.
func (m *monitor) apply(results []probeResult) {
	c, nodes := m.c, m.c.nodes
	nowWall := time.Now().UnixNano()
	for i, r := range results {
		n := nodes[i]
		switch {
		case r.skipped:
		case isTooManyConnections(r.err):
			// It answered, refusing the probe's new connection for want of
			// a free slot: full, not down. Until its backoff passes it
			// gets no new connection attempt (see refused.go).
			n.refused(r.err, m.interval)
			n.setCause(r.err)
		case r.err != nil:
			n.failures.Add(1)
			// Counted from the round's start, less half an interval, so that
			// a backoff of k intervals means k ticks despite scheduling jitter.
			n.nextProbe.Store(m.roundStart + int64(m.backoff(n.failures.Load())-m.interval/2))
			n.frozen.Store(errors.Is(r.err, errProbeTimeout))
			n.setCause(r.err)
			if n.setDown() {
				c.logDown(n, r.err)
				n.resetPool()
			}
			if n.standby.Load() {
				// Reads stuck on it are safe to abort and retry; writes on a
				// primary are not touched: only the server knows their fate.
				n.abortConns()
			}
		default:
			n.failures.Store(0)
			n.setCause(nil)
			n.frozen.Store(false)
			n.standby.Store(r.standby)
			n.probedAt.Store(nowWall)
			n.probeNanos.Store(int64(r.latency))
			if r.standby {
				n.replayLSN.Store(r.lsn)
			}
			cameBack := n.setUp()
			if cameBack {
				c.log.Info("pgreplica: node up", "node", n.addr, "role", roleName(r.standby))
			}
			// A node back from down may be elsewhere now (a restart, a new
			// route): its old figure says nothing.
			old := time.Duration(n.rttNanos.Load())
			if cameBack {
				old = 0
			}
			n.rttNanos.Store(int64(smoothRTT(old, r.latency)))
		}
	}

	topo := c.topo.Load()
	primary := m.choosePrimary(topo.primary, results)
	if primary != topo.primary {
		var replicas []*node
		for _, n := range nodes {
			if n != primary {
				replicas = append(replicas, n)
			}
		}
		c.topo.Store(&topology{primary: primary, replicas: replicas})
		if primary != nil {
			c.log.Warn("pgreplica: following a new primary", "node", primary.addr)
		} else {
			c.log.Error("pgreplica: no primary: the primary answers as a standby and no node is writable; writes fail with ErrNoPrimary", "node", topo.primary.addr)
		}
	}

	if primary != nil {
		if r := results[primary.index]; !r.skipped && r.err == nil && !r.standby {
			c.primarySample.Store(&lsnSample{at: r.started, lsn: lastRecordEnd(r.lsn)})
			m.history = append(m.history, lsnSample{at: r.started, lsn: r.flushLSN})
			if len(m.history) > historyLen {
				m.history = m.history[len(m.history)-historyLen:]
			}
		}
	}
	m.updateLag(primary)
}

// smoothRTT folds one probe's latency into a node's smoothed round-trip
// time: an exponentially weighted moving average giving the new sample a
// fifth of the weight, as MongoDB's server selection does, so that one slow
// probe does not send reads away and a lasting change shows within a few
// probes. The first sample is taken as it is.
func smoothRTT(old, sample time.Duration) time.Duration {
	sample = max(sample, 1) // 0 means unmeasured
	if old <= 0 {
		return sample
	}
	return old + (sample-old)/5
}

// maxProbeGap is the longest a down node goes unprobed: probing a dead
// node twice a second costs nothing, and a restarted one must serve again
// within a monitor interval plus a second, whatever its downtime, with room
// left for a slow reconnect on a loaded machine.
const maxProbeGap = 500 * time.Millisecond

// backoff is how long after its f-th failed probe in a row a down node is
// probed again: the interval, doubling, but never leaving a gap longer
// than max(interval, maxProbeGap) once the round's tick is counted.
func (m *monitor) backoff(f int32) time.Duration {
	limit := max(maxProbeGap-m.interval, m.interval)
	return min(m.interval<<min(max(f-1, 0), 4), limit)
}

// choosePrimary keeps the current primary while it answers as writable. It
// follows a promotion only when the current one is gone or has become a
// standby and exactly one node answers as writable; two writable nodes are
// reported and never resolved by guessing.
func (m *monitor) choosePrimary(cur *node, results []probeResult) *node {
	var writable []*node
	for i, r := range results {
		if !r.skipped && r.err == nil && !r.standby {
			writable = append(writable, m.c.nodes[i])
		}
	}
	split := len(writable) > 1
	if split != m.splitBrain {
		m.splitBrain = split
		if split {
			addrs := make([]string, len(writable))
			for i, n := range writable {
				addrs[i] = n.addr
			}
			m.c.log.Error("pgreplica: more than one writable node; writes stay on the current primary", "writable", addrs)
		} else {
			m.c.log.Info("pgreplica: one writable node again")
		}
	}
	if cur != nil {
		r := results[cur.index]
		answered := !r.skipped && r.err == nil
		if answered && !r.standby {
			return cur
		}
		if !answered && len(writable) != 1 {
			return cur // it may come back; there is nothing unambiguous to follow
		}
		if answered && len(writable) == 0 {
			// It says it is a standby and no node is writable (a one-host
			// DSN naming a standby, a demotion): there is no primary. Writes
			// fail with ErrNoPrimary instead of 25006, status says so, and
			// the node serves reads as the standby it is.
			return nil
		}
	}
	if len(writable) == 1 {
		return writable[0]
	}
	return cur
}

// updateLag measures each standby against the primary: bytes behind its
// flush position, and the time since the primary first had WAL the standby
// has not replayed. Unlike now() - pg_last_xact_replay_timestamp(), neither
// grows while the primary is idle.
func (m *monitor) updateLag(primary *node) {
	if primary == nil || len(m.history) == 0 {
		return
	}
	latest := m.history[len(m.history)-1]
	now := monoNow()
	for _, n := range m.c.nodes {
		if n == primary || !n.standby.Load() || !n.up.Load() {
			continue
		}
		replay := n.replayLSN.Load()
		var bytes int64
		var lag time.Duration
		if replay < latest.lsn {
			bytes = int64(latest.lsn - replay)
			// The oldest sample the standby lacks tells how long ago that
			// WAL existed on the primary.
			since := latest.at
			for j := len(m.history) - 1; j >= 0 && m.history[j].lsn > replay; j-- {
				since = m.history[j].at
			}
			lag = time.Duration(now - since)
		}
		n.lagBytes.Store(bytes)
		n.lagNanos.Store(int64(lag))
		if limit := m.c.cfg.MaxReplicaLag; limit > 0 {
			over := lag > limit
			if over != m.lagging[n.index] {
				m.lagging[n.index] = over
				if over {
					m.c.log.Warn("pgreplica: replica lagging", "node", n.addr, "lag", lag, "bytes", bytes)
				} else {
					m.c.log.Info("pgreplica: replica caught up", "node", n.addr)
				}
			}
		}
	}
}

// lastRecordEnd turns pg_current_wal_insert_lsn() into the end of the last
// WAL record. When that record ends exactly at a page boundary, the insert
// position points past the next page's header (24 bytes, or 40 at a
// segment start), while a standby's replay position stops at the boundary;
// an idle primary would keep sessions off the replicas until more WAL came.
// A record never ends inside a header, so nothing is lost by stepping back.
func lastRecordEnd(insertLSN uint64) uint64 {
	const walPageSize = 8192 // XLOG_BLCKSZ, PostgreSQL's default build
	if off := insertLSN % walPageSize; off == 24 || off == 40 {
		return insertLSN - off
	}
	return insertLSN
}

func roleName(standby bool) string {
	if standby {
		return "replica"
	}
	return "primary"
}
