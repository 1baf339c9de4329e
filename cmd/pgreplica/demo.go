package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
)

const demoAbout = `
Starts a sandbox (a primary and two streaming replicas, see "sandbox"), opens
it with sql.Open("pgreplica", …) and runs a workload through that one
*sql.DB in its default mode (read_your_writes=connector): writers insert rows
and read each one back with no session or hint, readers read the newest row.
Every second it prints how many statements each node served and its state.
Meanwhile it lags replica1 (pauses its WAL replay), then stops and restarts
replica2, and ends with a summary.

A request is one statement. It counts as failed when it returns any error,
and a read-back that does not find the row just written counts as a stale
read. The exit status is 0 only when there were neither.`

const (
	demoWriters  = 2
	demoReaders  = 4
	demoPace     = 10 * time.Millisecond // between one worker's requests
	demoTimeout  = 10 * time.Second      // per request
	demoDSNExtra = "&monitor_interval=200ms&max_replica_lag=1s"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", "", demoAbout)
	pos, code, ok := fs.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return fs.usageError(stderr, "unexpected argument %q", pos[0])
	}
	d := &demo{out: stdout, tick: map[string]int{}, count: map[string]*nodeCount{}, flush: make(chan chan struct{}), ticked: make(chan struct{}, 1)}
	began := time.Now()
	err := d.run(ctx)
	d.say("demo took %.1fs", time.Since(began).Seconds())
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "pgreplica demo: interrupted")
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "pgreplica demo:", err)
		return 1
	case d.failed > 0 || d.stale > 0:
		fmt.Fprintf(stderr, "pgreplica demo: %d failed requests, %d stale reads\n", d.failed, d.stale)
		return 1
	}
	return 0
}

type nodeCount struct{ reads, writes int }

type demo struct {
	outMu sync.Mutex
	out   io.Writer

	cl    *sandbox.Cluster
	db    *sql.DB
	c     *pgreplica.Connector
	addrs []string // node order: primary, replica1, replica2
	names map[string]string
	began time.Time // of the workload

	stop   atomic.Bool
	wg     sync.WaitGroup
	flush  chan chan struct{} // see ticker
	ticked chan struct{}      // a value after each line of a full second

	mu               sync.Mutex
	tick             map[string]int // statements per node since the last tick
	count            map[string]*nodeCount
	requests         int
	failed, stale    int
	readBacks        int
	readBacksPrimary int // served by the primary because no replica was known to have the write
	watchAddr        string
	watchSince       time.Time
	watchCount       int
}

func (d *demo) say(format string, a ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, format+"\n", a...)
}

func (d *demo) step(format string, a ...any) {
	d.say("\n==> "+format, a...)
}

func (d *demo) run(ctx context.Context) error {
	d.say("pgreplica demo: %d writers and %d readers share one *sql.DB over a primary and 2 streaming replicas.", demoWriters, demoReaders)

	d.step("Starting a sandbox cluster (initdb, 2 × pg_basebackup)")
	t0 := time.Now()
	cl, err := startSandbox(ctx, sandbox.Options{Replicas: 2})
	if err != nil {
		return err
	}
	defer func() {
		d.step("Cleaning up: stopping the cluster and removing its files")
		if err := cl.Close(); err != nil {
			d.say("    %v", err)
		}
	}()
	d.cl = cl
	d.names = map[string]string{}
	for i, n := range cl.Nodes {
		d.addrs = append(d.addrs, n.Addr())
		d.names[n.Addr()] = nodeName(i)
		d.say("    %-8s %s", nodeName(i), n.Addr())
	}
	d.say("    ready in %.1fs", time.Since(t0).Seconds())

	d.step(`Opening sql.Open("pgreplica", dsn+%q) and creating table demo_items`, demoDSNExtra)
	db, err := sql.Open(pgreplica.DriverName, cl.DSN()+demoDSNExtra)
	if err != nil {
		return err
	}
	defer db.Close()
	d.db = db
	if d.c, err = pgreplica.ConnectorOf(ctx, db); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE demo_items (
		id bigserial PRIMARY KEY, writer int NOT NULL, payload text NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	if err := cl.WaitReplayed(ctx); err != nil { // the readers must find the table on the replicas
		return err
	}
	for _, a := range d.addrs {
		if err := d.waitState(ctx, a, pgreplica.StateHealthy, 10*time.Second); err != nil {
			return err
		}
	}

	d.step("Steady state: writers insert on the primary and read their row back, plain db.QueryRow (the default mode reads the *sql.DB's writes); readers read from the replicas")
	d.say("    every second: statements each node served since the previous line, and its state (from Connector.Status)")
	d.startWorkload(ctx)
	defer func() { // also after a failed step: the counts so far
		d.stopWorkload()
		d.step("Summary")
		d.summary()
	}()
	if err := d.observe(ctx, 3); err != nil {
		return err
	}

	r1, r2 := d.addrs[1], d.addrs[2]
	d.step("Lag replica1: pause its WAL replay (pg_wal_replay_pause) while the writers keep inserting")
	if err := cl.Nodes[1].PauseReplay(ctx); err != nil {
		return err
	}
	if err := d.waitState(ctx, r1, pgreplica.StateLagging, 20*time.Second); err != nil {
		return err
	}
	d.flushTick(ctx)
	ns := d.node(r1)
	d.say("    replica1 is lagging: %s and %d bytes behind the primary, over max_replica_lag=1s; reads avoid it", ns.Lag.Round(time.Millisecond), ns.LagBytes)
	d.watch(r1)
	if err := d.observe(ctx, 2); err != nil {
		return err
	}
	d.say("    replica1 served %d of the statements started since it was seen lagging", d.watched())

	d.step("Resume WAL replay on replica1")
	if err := cl.Nodes[1].ResumeReplay(ctx); err != nil {
		return err
	}
	if err := d.waitState(ctx, r1, pgreplica.StateHealthy, 20*time.Second); err != nil {
		return err
	}
	d.flushTick(ctx)
	d.say("    replica1 caught up and is healthy: reads come back to it")
	if err := d.observe(ctx, 2); err != nil {
		return err
	}

	d.step("Stop replica2 (immediate shutdown, like a crash)")
	failedBefore := d.failures()
	if err := cl.Nodes[2].Stop(ctx); err != nil {
		return err
	}
	if err := d.waitState(ctx, r2, pgreplica.StateDown, 20*time.Second); err != nil {
		return err
	}
	d.flushTick(ctx)
	d.say("    replica2 is down: reads move to replica1, failed reads are retried on another node")
	d.watch(r2)
	if err := d.observe(ctx, 2); err != nil {
		return err
	}
	d.say("    replica2 served %d of the statements started since it was seen down; requests failed since the stop: %d", d.watched(), d.failures()-failedBefore)

	d.step("Start replica2 again")
	if err := cl.Nodes[2].Start(ctx); err != nil {
		return err
	}
	if err := d.waitState(ctx, r2, pgreplica.StateHealthy, 30*time.Second); err != nil {
		return err
	}
	d.flushTick(ctx)
	d.say("    replica2 answers probes and has caught up: reads come back to it")
	return d.observe(ctx, 2)
}

// node returns addr's part of the current Status.
func (d *demo) node(addr string) pgreplica.NodeStatus {
	for _, n := range d.c.Status().Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return pgreplica.NodeStatus{}
}

// waitState waits until Status reports addr in state.
func (d *demo) waitState(ctx context.Context, addr, state string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if n := d.node(addr); n.State == state && (state == pgreplica.StateDown || !n.LastProbe.IsZero()) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not become %s within %s (it is %s)", d.names[addr], state, timeout, d.node(addr).State)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// observe lets the workload run for the next n lines of the ticker.
func (d *demo) observe(ctx context.Context, n int) error {
	select {
	case <-d.ticked: // a line printed before this call
	default:
	}
	for range n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.ticked:
		}
	}
	return nil
}

func (d *demo) startWorkload(ctx context.Context) {
	d.began = time.Now()
	for i := range demoWriters {
		d.wg.Go(func() { d.writer(ctx, i+1) })
	}
	for range demoReaders {
		d.wg.Go(func() { d.reader(ctx) })
	}
	d.wg.Go(func() { d.ticker(ctx) })
}

// stopWorkload lets every worker finish its request and waits for them.
func (d *demo) stopWorkload() {
	d.stop.Store(true)
	d.wg.Wait()
}

// pace waits between two requests of a worker; false means stop.
func (d *demo) pace(ctx context.Context, t *time.Ticker) bool {
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return !d.stop.Load()
	}
}

// writer inserts a row and reads it back, plain calls on the *sql.DB as
// code written for one server does: in the default mode pgreplica must
// serve the read from a node that has the row.
func (d *demo) writer(ctx context.Context, id int) {
	t := time.NewTicker(demoPace)
	defer t.Stop()
	for n := 1; !d.stop.Load(); n++ {
		payload := fmt.Sprintf("writer %d row %d", id, n)
		started := time.Now()
		rctx, route := pgreplica.WithRoute(ctx)
		rctx, cancel := context.WithTimeout(rctx, demoTimeout)
		var rowID int64
		err := d.db.QueryRowContext(rctx,
			"INSERT INTO demo_items (writer, payload) VALUES ($1, $2) RETURNING id", id, payload).Scan(&rowID)
		cancel()
		if !d.record(ctx, started, route, true, err) {
			if !d.pace(ctx, t) {
				return
			}
			continue
		}

		started = time.Now()
		rctx, route = pgreplica.WithRoute(ctx)
		rctx, cancel = context.WithTimeout(rctx, demoTimeout)
		var got string
		err = d.db.QueryRowContext(rctx, "SELECT payload FROM demo_items WHERE id = $1", rowID).Scan(&got)
		cancel()
		stale := errors.Is(err, sql.ErrNoRows)
		if stale {
			err = nil
		}
		if d.record(ctx, started, route, false, err) {
			d.mu.Lock()
			d.readBacks++
			if route.Reason() == pgreplica.ReasonSession {
				d.readBacksPrimary++
			}
			if stale {
				d.stale++
			}
			d.mu.Unlock()
			if stale {
				d.say("    ! STALE read: row %d, just written by writer %d, not found on %s", rowID, id, d.names[route.Node()])
			}
		}
		if !d.pace(ctx, t) {
			return
		}
	}
}

// reader runs plain reads: any usable replica may serve them.
func (d *demo) reader(ctx context.Context) {
	t := time.NewTicker(demoPace)
	defer t.Stop()
	for !d.stop.Load() {
		started := time.Now()
		rctx, route := pgreplica.WithRoute(ctx)
		rctx, cancel := context.WithTimeout(rctx, demoTimeout)
		var id int64
		var payload string
		err := d.db.QueryRowContext(rctx, "SELECT id, payload FROM demo_items ORDER BY id DESC LIMIT 1").Scan(&id, &payload)
		cancel()
		if errors.Is(err, sql.ErrNoRows) {
			err = nil // an empty table is an answer
		}
		d.record(ctx, started, route, false, err)
		if !d.pace(ctx, t) {
			return
		}
	}
}

// record counts one request and attributes it to the node that served it.
// It reports whether the request succeeded. Requests cut short by an
// interrupt of the demo itself are not counted.
func (d *demo) record(ctx context.Context, started time.Time, route *pgreplica.Route, write bool, err error) bool {
	if err != nil && ctx.Err() != nil {
		return false
	}
	d.mu.Lock()
	d.requests++
	if err != nil {
		d.failed++
		d.mu.Unlock()
		d.say("    ! request failed: %v", err)
		return false
	}
	addr := route.Node()
	if addr == d.watchAddr && started.After(d.watchSince) {
		d.watchCount++
	}
	d.tick[addr]++
	nc := d.count[addr]
	if nc == nil {
		nc = &nodeCount{}
		d.count[addr] = nc
	}
	if write {
		nc.writes++
	} else {
		nc.reads++
	}
	d.mu.Unlock()
	return true
}

// watch starts counting the statements that start from now on and that
// addr serves; watched returns that count.
func (d *demo) watch(addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.watchAddr, d.watchSince, d.watchCount = addr, time.Now(), 0
}

func (d *demo) watched() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.watchCount
}

func (d *demo) failures() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

// ticker prints one line a second: statements per node since the previous
// line, each node's state, and the failures so far. A value on flush makes
// it print at once (the line then covers less than a second) and start a
// new second, so that lines do not straddle a step of the script.
func (d *demo) ticker(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := time.Now()
	for {
		var ack chan struct{}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case ack = <-d.flush:
			t.Reset(time.Second)
		}
		if d.stop.Load() {
			if ack != nil {
				close(ack)
			}
			return
		}
		d.mu.Lock()
		counts := d.tick
		d.tick = map[string]int{}
		failed, stale := d.failed, d.stale
		d.mu.Unlock()
		states := map[string]string{}
		for _, n := range d.c.Status().Nodes {
			states[n.Addr] = n.State
		}
		now := time.Now()
		var b strings.Builder
		fmt.Fprintf(&b, "  %5.1fs", now.Sub(d.began).Seconds())
		for _, a := range d.addrs {
			fmt.Fprintf(&b, "   %s %4d %-7s", d.names[a], counts[a], states[a])
		}
		fmt.Fprintf(&b, "   failed %d  stale %d", failed, stale)
		if ack != nil {
			fmt.Fprintf(&b, "   (%.1fs)", now.Sub(last).Seconds())
		}
		last = now
		d.say("%s", b.String())
		if ack != nil {
			close(ack)
			continue
		}
		select {
		case d.ticked <- struct{}{}:
		default: // nobody is waiting for this second
		}
	}
}

// flushTick has the ticker print the statements since its last line now.
func (d *demo) flushTick(ctx context.Context) {
	ack := make(chan struct{})
	select {
	case d.flush <- ack:
	case <-ctx.Done():
		return
	}
	select {
	case <-ack:
	case <-ctx.Done():
	}
}

func (d *demo) summary() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outMu.Lock()
	defer d.outMu.Unlock()
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NODE\tADDR\tSTATEMENTS\tREADS\tWRITES\t")
	var total nodeCount
	for _, a := range d.addrs {
		nc := d.count[a]
		if nc == nil {
			nc = &nodeCount{}
		}
		total.reads += nc.reads
		total.writes += nc.writes
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t\n", d.names[a], a, nc.reads+nc.writes, nc.reads, nc.writes)
	}
	fmt.Fprintf(tw, "total\t\t%d\t%d\t%d\t\n", total.reads+total.writes, total.reads, total.writes)
	tw.Flush()
	fmt.Fprintf(d.out, "\nrequests %d   failed requests %d   stale read-backs %d\n", d.requests, d.failed, d.stale)
	fmt.Fprintf(d.out, "read-backs %d: %d from the primary (write not yet replayed), %d from a replica that had replayed it\n",
		d.readBacks, d.readBacksPrimary, d.readBacks-d.readBacksPrimary)
}
