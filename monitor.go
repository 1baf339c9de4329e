package pgreplica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// probeSQL learns a node's role, WAL position and timeline in one round
// trip. A primary reports its insert position (it covers every acknowledged
// commit, even with synchronous_commit off), its flush position (what a
// standby can have received) and the timeline it writes, from the name of
// its current WAL file (pg_control_checkpoint() keeps the old timeline
// until the first checkpoint after a promotion, which may be minutes
// away). A standby reports what it has replayed, the timeline its WAL
// receiver streams (received_tli: NULL when none runs, or when the role
// lacks pg_read_all_stats, which pg_monitor includes), and the newest
// timeline its control file shows it replayed, which can lag behind (it
// moves at restartpoints). Positions on different timelines cannot be
// compared: see updateLag. The last column is probeClockSQL (staleness.go).
const probeSQL = `SELECT pg_is_in_recovery(),
	(CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_insert_lsn() END - '0/0')::bigint,
	(CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_flush_lsn() END - '0/0')::bigint,
	CASE WHEN pg_is_in_recovery() THEN to_hex(w.received_tli) ELSE left(pg_walfile_name(pg_current_wal_insert_lsn()), 8) END,
	CASE WHEN pg_is_in_recovery() THEN
		(SELECT to_hex(greatest(r.min_recovery_end_timeline, c.timeline_id)) FROM pg_control_recovery() r, pg_control_checkpoint() c)
	END,
	` + probeClockSQL + `
FROM (VALUES (1)) AS one LEFT JOIN pg_stat_wal_receiver w ON true`

// probeNoControlSQL is probeSQL for a server where the role may not run
// pg_control_recovery() or pg_control_checkpoint() (public by default; an
// administrator may revoke them): a standby with no WAL receiver then
// reports only the timeline its WAL receiver streams.
const probeNoControlSQL = `SELECT pg_is_in_recovery(),
	(CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_insert_lsn() END - '0/0')::bigint,
	(CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_flush_lsn() END - '0/0')::bigint,
	CASE WHEN pg_is_in_recovery() THEN to_hex(w.received_tli) ELSE left(pg_walfile_name(pg_current_wal_insert_lsn()), 8) END,
	NULL::text,
	` + probeClockSQL + `
FROM (VALUES (1)) AS one LEFT JOIN pg_stat_wal_receiver w ON true`

// historyLen bounds the primary positions kept to turn a standby's replay
// position into a time lag: ten minutes at the default interval.
const historyLen = 600

// monitor probes every node on its own connection (so a full pool cannot
// starve it) each interval, or at once when traffic saw a failure.
//
// No node's probe waits for another's: a round lasts at most one interval
// (the first round excepted: it waits for every node, so that roles are
// known before the first write), and a probe still under way then is
// applied by the round in which it ends; until then its node is not probed
// again and keeps what its last probe said. A frozen node, each of whose
// probes waits for a timeout, so never delays another node's state, nor
// following a promotion.
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
	// results brings each probe's answer back to the monitor goroutine;
	// probes counts the probes under way, so that none outlives stop.
	results chan probeDone
	probes  sync.WaitGroup

	// Owned by the monitor goroutine; indexed by node.index. slot is the
	// node each index held at the last round: discovery may give a removed
	// node's index to a new one (see membership.go), whose state starts
	// afresh.
	slot [maxNodes]*node
	// probing says whether a probe of the node at an index is under way:
	// until it ends, that probe's goroutine owns probeConns and noControl
	// at the index. lastOK says whether the node's last probe that ended
	// answered: while the next one runs, what it said stands.
	probing    [maxNodes]bool
	lastOK     [maxNodes]bool
	rolesKnown bool // the first round was applied
	probeConns []*pgx.Conn
	history    []lsnSample // the current primary's flush positions on its current timeline, oldest first
	historyOf  *node       // the primary history was taken on
	primaryTLI uint32      // its timeline; 0 until it answered
	lagging    []bool
	noControl  []bool        // the node refused pg_control_*(): probe with probeNoControlSQL
	timeouts   [maxNodes]int // probe timeouts in a row (see apply: frozen in two steps)
	splitBrain bool
	roundStart int64      // unix nanos at which the current round began (see probeResult.round)
	stale      staleClock // see staleness.go
}

type probeResult struct {
	skipped bool
	// pending: the node's probe is still under way (skipped is set too):
	// it keeps what its last probe said.
	pending  bool
	err      error
	standby  bool
	lsn      uint64 // insert (primary) or replay (standby) position
	flushLSN uint64
	// timeline is the primary's, or the one a standby's WAL receiver
	// streams (0: none runs, or the role may not see it); replayedTLI is,
	// for a standby, the newest timeline its control file shows (0:
	// unknown).
	timeline    uint32
	replayedTLI uint32
	started     int64 // monoNow
	latency     time.Duration
	// clock (unix nanos) is the primary's clock_timestamp(), or a
	// standby's last replayed commit's timestamp; 0: none (staleness.go).
	clock int64
	// round is the unix nanos start of the round that started the probe
	// (0: the current round's).
	round int64
}

// probeDone is one probe's answer, sent back to the monitor goroutine.
type probeDone struct {
	n *node
	r probeResult
}

func startMonitor(c *Connector) *monitor {
	timeout := min(max(c.cfg.MonitorInterval, 500*time.Millisecond), 5*time.Second)
	m := &monitor{
		c:              c,
		interval:       probeInterval(&c.cfg),
		timeout:        timeout,
		connectTimeout: max(timeout, defaultReplicaConnectTimeout),
		kickCh:         make(chan struct{}, 1),
		stopCh:         make(chan struct{}),
		done:           make(chan struct{}),
		results:        make(chan probeDone, maxNodes), // one probe per index at most: sends never block
		probeConns:     make([]*pgx.Conn, maxNodes),
		lagging:        make([]bool, maxNodes),
		noControl:      make([]bool, maxNodes),
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
	ctx, cancel := context.WithCancel(context.Background())
	defer m.probes.Wait() // after cancel: a stop must not wait for a frozen node's timeout
	defer cancel()
	ticker := time.NewTicker(m.interval)
	defer ticker.Stop()
	if !m.round(ctx, nil) {
		return
	}
	for {
		select {
		case <-m.stopCh:
			return
		case d := <-m.results:
			// A probe that outlasted its round ended: apply it now, not at
			// the end of the next round (a frozen node's second timeout
			// aborts the reads stuck on it: they must not wait another
			// interval for that).
			if !m.round(ctx, &d) {
				return
			}
			continue
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
		if !m.round(ctx, nil) {
			return
		}
	}
}

func (m *monitor) closeProbeConns() {
	for i, pc := range m.probeConns {
		if pc != nil {
			closeProbeConn(pc, 100*time.Millisecond)
			m.probeConns[i] = nil
		}
	}
}

// round probes every node at once, each bounded by the probe timeout, and
// then applies what they said: once every probe it started has ended, or
// after one interval (see monitor), with the answers of earlier rounds'
// probes that ended meanwhile. Given one such answer (late), it starts no
// probe and applies the answers that have arrived. It returns false when
// the monitor stops.
func (m *monitor) round(ctx context.Context, late *probeDone) bool {
	members := m.c.allNodes() // discovery may change them between rounds
	m.follow(members)
	results := make([]probeResult, maxNodes) // by node.index
	now := time.Now().UnixNano()
	m.roundStart = now
	var started [maxNodes]bool
	waiting := 0
	for _, n := range members {
		i := n.index
		switch {
		case m.probing[i]:
			results[i] = probeResult{skipped: true, pending: true}
		case late != nil:
			results[i].skipped = true
		case !n.up.Load() && now < n.nextProbe.Load() ||
			m.needsConnect(i) && n.fullBlocks(fullProbation):
			results[i].skipped = true
		default:
			m.probing[i], started[i] = true, true
			waiting++
			m.probes.Go(func() {
				r := m.probe(ctx, n)
				r.round = now
				m.results <- probeDone{n, r}
			})
		}
	}
	take := func(d probeDone) {
		i := d.n.index
		m.probing[i] = false
		if started[i] {
			waiting--
		}
		if m.slot[i] != d.n {
			// It left the members while it was probed (its index may hold
			// another node now): what it said is of no use.
			m.forget(i)
			return
		}
		results[i] = d.r
	}
	if late != nil {
		take(*late)
	}
	var deadline <-chan time.Time
	if m.rolesKnown {
		t := time.NewTimer(m.interval)
		defer t.Stop()
		deadline = t.C
	}
wait:
	for waiting > 0 {
		select {
		case d := <-m.results:
			take(d)
		case <-deadline:
			break wait
		case <-m.stopCh:
			return false
		}
	}
	for more := true; more; { // answers of earlier rounds' probes that ended meanwhile
		select {
		case d := <-m.results:
			take(d)
		default:
			more = false
		}
	}
	if ctx.Err() != nil {
		return false // stopping
	}
	for i := range results {
		if m.probing[i] { // started by this round or an earlier one
			results[i] = probeResult{skipped: true, pending: true}
		}
	}
	m.apply(members, results)
	m.rolesKnown = true
	m.c.markRolesKnown()
	return true
}

// follow closes the probe connections of nodes no longer members and
// starts a new member's state afresh, when it got a removed one's index.
func (m *monitor) follow(members []*node) {
	var now [maxNodes]*node
	for _, n := range members {
		now[n.index] = n
	}
	for i := range m.slot {
		if m.slot[i] == now[i] {
			continue
		}
		m.slot[i] = now[i]
		if !m.probing[i] { // else when that probe ends (see round)
			m.forget(i)
		}
	}
}

// forget closes the probe connection at index i and starts its state
// afresh; no probe of it may be under way.
func (m *monitor) forget(i int) {
	if pc := m.probeConns[i]; pc != nil {
		closeProbeConn(pc, 100*time.Millisecond)
		m.probeConns[i] = nil
	}
	m.lagging[i], m.noControl[i], m.timeouts[i], m.lastOK[i] = false, false, 0, false
}

// closeProbeConn closes a probe connection, waiting at most d for the
// server's goodbye: a frozen node would never send it.
func closeProbeConn(pc *pgx.Conn, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_ = pc.Close(ctx)
}

// needsConnect says whether probing node i must open a connection first:
// a node backed off after refusing one is then not probed (see refused.go).
func (m *monitor) needsConnect(i int) bool {
	return m.probeConns[i] == nil || m.probeConns[i].IsClosed()
}

func (m *monitor) probe(parent context.Context, n *node) probeResult {
	i := n.index
	r := probeResult{started: monoNow()}
	reused := m.probeConns[i] != nil && !m.probeConns[i].IsClosed()
	r.err = m.probeOnce(parent, n, &r)
	// The probe's own connection may have been the only one to fail
	// (pg_terminate_backend, an idle timeout), and a new one may be
	// terminated while it starts up: that says nothing about the node, so
	// ask again on a new connection, at most twice. A server that is
	// shutting down refuses the new connection (57P03, or refused).
	for retries := 2; r.err != nil && retries > 0 && (reused || isTerminated(r.err)) &&
		!errors.Is(r.err, errProbeTimeout) && parent.Err() == nil; retries-- {
		reused = false
		r.err = m.probeOnce(parent, n, &r)
	}
	if isTerminated(r.err) {
		// Every attempt was accepted and then terminated (57P01): someone
		// is killing backends (pg_terminate_backend), which says nothing of
		// the node. A server shutting down terminates the probe too, but
		// then refuses the new connection (57P03, or refused): that is a
		// failure. Inconclusive: the node keeps its state until the next
		// probe.
		r.skipped, r.err = true, nil
	}
	return r
}

// probeOnce runs the probe query, opening the node's probe connection
// first when it has none. A connection that failed is closed.
func (m *monitor) probeOnce(parent context.Context, n *node, r *probeResult) error {
	i := n.index
	pc := m.probeConns[i]
	fresh := pc == nil || pc.IsClosed()
	if fresh {
		cctx, cancel := context.WithTimeout(context.WithValue(parent, probeDial{}, true), m.connectTimeout)
		var err error
		pc, err = pgx.ConnectConfig(cctx, n.probeConfig)
		if err == nil {
			// A new backend's first query fills its catalog caches: it is
			// part of opening the connection, bounded with it. Under the
			// probe timeout, meant for a server that stops answering an
			// open connection, a loaded machine made a replica whose
			// probe connection was terminated look frozen. Timed, it
			// would also seed the smoothed RTT too high
			// (replica_policy=nearest could then take a far node for near).
			if err = m.readProbe(cctx, i, pc, r); err != nil {
				closeProbeConn(pc, 50*time.Millisecond)
			}
		}
		timedOut := cctx.Err() != nil
		cancel()
		if err != nil {
			if timedOut {
				err = errProbeConnectTimeout // it accepted the connection and never answered
			}
			return err
		}
		m.probeConns[i] = pc
	}
	ctx, cancel := context.WithTimeout(parent, m.timeout)
	defer cancel()
	t0 := time.Now() // latency of the query alone, not of a reconnect
	err := m.readProbe(ctx, i, pc, r)
	if err != nil {
		if ctx.Err() != nil {
			err = errProbeTimeout
		}
		closeProbeConn(pc, 50*time.Millisecond)
		m.probeConns[i] = nil
		return err
	}
	r.latency = time.Since(t0)
	return nil
}

// readProbe runs probeSQL with the simple query protocol of pgconn itself:
// probes must work whatever the DSN's query mode (a pgbouncer that keeps
// no prepared statements) and session settings (pgx's own simple protocol
// refuses to run with standard_conforming_strings=off). A node whose role
// may not read its control file (42501) is asked without it from then on.
func (m *monitor) readProbe(ctx context.Context, i int, pc *pgx.Conn, r *probeResult) error {
	sql := probeSQL
	if m.noControl[i] {
		sql = probeNoControlSQL
	}
	err := readProbeSQL(ctx, pc, sql, r)
	if pgCode(err) == "42501" && !m.noControl[i] {
		m.noControl[i] = true
		err = readProbeSQL(ctx, pc, probeNoControlSQL, r)
	}
	return err
}

func readProbeSQL(ctx context.Context, pc *pgx.Conn, sql string, r *probeResult) error {
	results, err := pc.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return err
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 6 {
		return errors.New("pgreplica: unexpected probe result")
	}
	row := results[0].Rows[0]
	lsn, err1 := strconv.ParseUint(string(row[1]), 10, 64)
	flush, err2 := strconv.ParseUint(string(row[2]), 10, 64)
	tli, err3 := parseTimeline(row[3])
	replayed, err4 := parseTimeline(row[4])
	clock, err5 := parseClock(row[5])
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return fmt.Errorf("pgreplica: unexpected probe result: %w", err)
	}
	r.standby, r.lsn, r.flushLSN = string(row[0]) == "t", lsn, flush
	r.timeline, r.replayedTLI, r.clock = tli, replayed, clock
	return nil
}

// parseTimeline reads a timeline ID in hex; NULL is 0, unknown.
func parseTimeline(b []byte) (uint32, error) {
	if b == nil {
		return 0, nil
	}
	v, err := strconv.ParseUint(string(b), 16, 32)
	return uint32(v), err
}

// apply turns one round of probes into node states, the primary's WAL
// history, replica lag and, when the servers changed roles, a new topology.
func (m *monitor) apply(nodes []*node, results []probeResult) {
	c := m.c
	nowWall := time.Now().UnixNano()
	for _, n := range nodes {
		r := results[n.index]
		switch {
		case r.skipped:
		case probeFull(n, r):
			// It answered, refusing the probe's new connection for want of
			// a free slot: full, not down. Until its backoff passes it
			// gets no new connection attempt (see refused.go).
			n.refused(r.err, m.interval)
			if isTooManyConnections(r.err) {
				n.setCause(r.err) // a timeout keeps the 53300 as the cause
			}
		case r.err != nil:
			m.lastOK[n.index] = false
			n.failures.Add(1)
			// Counted from the round's start, less half an interval, so that
			// a backoff of k intervals means k ticks despite scheduling jitter.
			// The round that started the probe, which may have ended after
			// a later one began.
			start := r.round
			if start == 0 {
				start = m.roundStart
			}
			n.nextProbe.Store(start + int64(m.backoff(n.failures.Load())-m.interval/2))
			timedOut := errors.Is(r.err, errProbeTimeout)
			// Frozen in two steps: one probe timeout may be a loaded machine
			// (two CI runs on two cores made a 500 ms probe time out on a
			// healthy replica), so it only stops new reads going to the node.
			// Reads in flight are cut only after a second timeout in a row,
			// or a definite failure.
			wasFrozen := n.frozen.Swap(timedOut)
			if timedOut {
				m.timeouts[n.index]++
			} else {
				m.timeouts[n.index] = 0
			}
			n.setCause(r.err)
			wentDown := n.setDown()
			switch {
			case timedOut && !wasFrozen:
				// The first timeout in a row: no new reads, nothing cut.
				c.logTimedOut(n)
			case timedOut && m.timeouts[n.index] == 2:
				c.logFrozen(n) // the second: now reads in flight are cut
			case wentDown:
				c.logDown(n, r.err)
			}
			if wentDown {
				n.resetPool()
			}
			if n.standby.Load() && (!timedOut || wasFrozen) {
				// Reads stuck on it are safe to abort and retry; writes on a
				// primary are not touched: only the server knows their fate.
				n.abortConns()
			}
		default:
			n.failures.Store(0)
			m.timeouts[n.index] = 0
			m.lastOK[n.index] = true
			n.setCause(nil)
			n.frozen.Store(false)
			wasStandby := n.standby.Swap(r.standby)
			if wasStandby != r.standby {
				n.followRole()
			}
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
			if r.standby {
				n.noteTimeline(r, cameBack || !wasStandby)
			}
		}
	}

	topo := c.topo.Load()
	primary := m.choosePrimary(topo.primary, nodes, results)
	if primary != topo.primary {
		// Against the members as they are now: discovery may have changed
		// them during the round, and it never removes the primary.
		c.changeTopology(func(cur *topology) *topology {
			if primary != nil && !slices.Contains(cur.nodes, primary) {
				primary = cur.primary // removed while it was probed: nothing to follow
			}
			return newTopology(primary, cur.nodes)
		})
	}
	if primary != topo.primary {
		if primary != nil {
			c.log.Warn("pgreplica: following a new primary", "node", primary.addr)
		} else {
			c.log.Error("pgreplica: no primary: the primary answers as a standby and no node is writable; writes fail with ErrNoPrimary", "node", topo.primary.addr)
		}
	}

	if primary != m.historyOf {
		// Positions of another primary say nothing about what a standby
		// lacks now, and may be on another timeline.
		m.history, m.historyOf, m.primaryTLI = m.history[:0], primary, 0
	}
	if primary != nil {
		if r := results[primary.index]; !r.skipped && r.err == nil && !r.standby {
			if r.timeline != m.primaryTLI {
				// Promoted again: the same node on a new timeline.
				m.history, m.primaryTLI = m.history[:0], r.timeline
			}
			c.primarySample.Store(&lsnSample{at: r.started, lsn: lastRecordEnd(r.lsn)})
			m.history = append(m.history, lsnSample{at: r.started, lsn: r.flushLSN})
			if len(m.history) > historyLen {
				m.history = m.history[len(m.history)-historyLen:]
			}
		}
	}
	m.updateLag(primary, nodes)
	m.updateStaleness(primary, nodes, results)
}

// probeFull says whether a failed probe r finds n full rather than down:
// it refused the probe's new connection with 53300, or the connection
// timed out while the node's last answer was 53300 (no connection opened
// since). A full server on a loaded machine answers its refusal late, as
// connectFailed's rule for traffic has it; a timeout on an open probe
// connection is still a freeze.
func probeFull(n *node, r probeResult) bool {
	return isTooManyConnections(r.err) ||
		errors.Is(r.err, errProbeConnectTimeout) && n.fullStreak.Load() != 0
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
//
// A node whose probe is still under way (pending) counts as what its last
// probe said: a slow primary is neither given up nor outvoted by a node
// promoted meanwhile, and one whose last probe failed (frozen) is not
// waited for.
func (m *monitor) choosePrimary(cur *node, nodes []*node, results []probeResult) *node {
	var writable []*node
	for _, n := range nodes {
		if r := results[n.index]; !r.skipped && r.err == nil && !r.standby ||
			r.pending && m.lastOK[n.index] && !n.standby.Load() {
			writable = append(writable, n)
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
	if cur != nil && slices.Contains(nodes, cur) {
		r := results[cur.index]
		if r.pending && m.lastOK[cur.index] && !cur.standby.Load() {
			return cur // its last probe found it writable
		}
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
func (m *monitor) updateLag(primary *node, nodes []*node) {
	if primary == nil || len(m.history) == 0 {
		return
	}
	latest := m.history[len(m.history)-1]
	now := monoNow()
	for _, n := range nodes {
		if n == primary || !n.standby.Load() || !n.up.Load() {
			continue
		}
		replay := n.replayLSN.Load()
		var bytes int64
		var lag time.Duration
		if replay < latest.lsn {
			bytes = int64(latest.lsn - replay)
		}
		if t := n.timeline.Load(); t != 0 && t != m.primaryTLI {
			// It follows another timeline: a primary that is gone (or a
			// second one). Its position is not comparable with the
			// primary's, and it may never receive another write: it is
			// behind at least everything this primary wrote since we
			// follow it, and serves no reads until it follows the
			// primary's timeline.
			n.lagBytes.Store(bytes)
			n.lagNanos.Store(now - m.history[0].at)
			if !n.offTimeline.Swap(true) {
				m.c.log.Warn("pgreplica: replica on another timeline than the primary", "node", n.addr,
					"timeline", t, "primary_timeline", m.primaryTLI)
			}
			continue
		}
		if n.offTimeline.Swap(false) {
			m.c.log.Info("pgreplica: replica follows the primary's timeline", "node", n.addr)
		}
		if replay < latest.lsn {
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

// noteTimeline records which timeline the standby n follows, from a probe
// r: the newest of the one its WAL receiver streams (when the role may see
// it), the one its control file shows it replayed, and the one noted
// before. Timelines only grow, so the newest seen stands, unless the node
// may be another server now (back from down, or a standby again). Without
// pg_read_all_stats, a standby that followed a promotion is known to be on
// the new timeline only once its control file shows it (its next
// restartpoint): until then it serves no reads, which is safe.
func (n *node) noteTimeline(r probeResult, forget bool) {
	t := n.timeline.Load()
	if forget {
		t = 0
	}
	n.timeline.Store(max(t, r.timeline, r.replayedTLI))
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
