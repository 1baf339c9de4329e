// Package model is a randomized, seeded checker of README's guarantees
// against the real cluster (a primary and two replicas from
// internal/testcluster, on either sandbox backend). Workers send every kind
// of statement a user can send, through two *sql.DBs (hedging on and off),
// while a schedule crashes, freezes, lags, stalls and partitions replicas,
// terminates backends, and once per run crashes the primary and promotes a
// replica that is behind the other, which is left on the old timeline.
// Every op is recorded (what it wrote, whether that was acknowledged, which
// node answered, what it read); after the run the invariants of
// integration/model/check run on the history and on what the servers hold.
// A violation prints the seed and the ops and faults that show it.
//
// PGREPLICA_MODEL_BUDGET (default 50s) is the run's length,
// PGREPLICA_MODEL_SEED replays a seed, PGREPLICA_MODEL_HISTORY=file.json
// writes the whole history there. Run with -count=1: the promotion
// changes the package's cluster for good.
package model

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/integration/model/check"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }

const (
	monitorInterval = 200 * time.Millisecond
	maxReplicaLag   = time.Second
	primaryMax      = 6
	replicaMax      = 8
	workersPerDB    = 5
	opTimeout       = 5 * time.Second
	// margin is what a bounded read gets on top of its bound: none. An
	// op's start is taken before pgreplica routes it and a heartbeat's
	// acknowledgement after it was visible, so load on the machine only
	// makes a read look fresher; pgreplica counts the age of its probes
	// against the bound (docs/guarantees.md, "How stale a read can be").
	margin = 0
	// scopeSpan keys: key = scope*scopeSpan + seq.
	scopeSpan = 1_000_000
)

var usedOnce atomic.Bool

func budget(t *testing.T) time.Duration {
	d := 50 * time.Second
	if v := os.Getenv("PGREPLICA_MODEL_BUDGET"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("PGREPLICA_MODEL_BUDGET=%q: %v", v, err)
		}
	}
	return d
}

func seed(t *testing.T) uint64 {
	if v := os.Getenv("PGREPLICA_MODEL_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("PGREPLICA_MODEL_SEED=%q: %v", v, err)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

// run is one checker run: the history being recorded and what the workers,
// samplers and the fault schedule share.
type run struct {
	t     *testing.T
	cl    *sandbox.Cluster
	seed  uint64
	start time.Time
	base  context.Context

	w, hb, u, fn string // tables (writes, heartbeats, unlogged) and the write function

	mu     sync.Mutex
	ops    []check.Op
	faults []check.Fault
	hbs    []check.Heartbeat
	probes []check.ProbeSample
	pools  []check.PoolSample
	// restarts: the primary stopped and started again (fault "restart
	// primary").
	restarts []check.Window

	opID      atomic.Int64
	nextScope atomic.Int64
	primary   atomic.Int32 // node index the heartbeat writer writes to
	failover  atomic.Bool  // the primary crashed: pool caps of node 1 change
	stop      chan struct{}
	dbs       []*mdb
}

func (r *run) now() time.Duration { return time.Since(r.start) }

func (r *run) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

func (r *run) record(op check.Op) {
	op.ID = int(r.opID.Add(1))
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

func (r *run) fault(kind, node string, start time.Duration) {
	end := r.now()
	r.mu.Lock()
	r.faults = append(r.faults, check.Fault{Kind: kind, Node: node, Start: start, End: end})
	r.mu.Unlock()
	r.t.Logf("t=%8.3fs–%8.3fs fault: %s %s", start.Seconds(), end.Seconds(), kind, node)
}

func TestModel(t *testing.T) {
	if !usedOnce.CompareAndSwap(false, true) {
		t.Fatal("TestModel promotes a replica and so runs once per process: use -count=1")
	}
	dur, sd := budget(t), seed(t)
	t.Logf("model: budget %v, seed %d (replay with PGREPLICA_MODEL_SEED=%d PGREPLICA_MODEL_BUDGET=%v)", dur, sd, sd, dur)
	ctx := context.Background()
	cl := testcluster.Cluster()
	r := &run{t: t, cl: cl, seed: sd, base: ctx, stop: make(chan struct{})}
	roles := map[int]string{}
	for _, n := range cl.Nodes {
		roles[n.Port] = testcluster.Role(n.Port)
		t.Logf("%s is %s", testcluster.Role(n.Port), n.Addr())
	}
	r.setup(ctx)
	rng := rand.New(rand.NewPCG(sd, sd^0x9e3779b97f4a7c15))

	// Opened after the tables so that NoLeaks' cleanup runs after every
	// db.Close (cleanups run last registered first).
	testcluster.NoLeaks(t)
	hedge := "1ms"
	if rng.IntN(3) == 0 {
		hedge = "auto"
	}
	// The read_your_writes mode of each *sql.DB, taken from the seed, not
	// rng, so that older seeds replay the same workload otherwise: the
	// hedged one runs in the default mode (no key: connector) but for one
	// seed in four (off); the other is opened with read_your_writes=connector
	// for one seed in two, else off. PGREPLICA_MODEL_RYW=off or connector
	// sets both.
	modes := [2]string{"", "off"}
	if sd&4 != 0 {
		modes[0] = "off"
	}
	if sd&2 == 0 {
		modes[1] = "connector"
	}
	if v := os.Getenv("PGREPLICA_MODEL_RYW"); v != "" {
		modes = [2]string{v, v}
	}
	r.dbs = []*mdb{r.openDB("hedge_after="+hedge, "pgreplica-model-hedge", modes[0]), r.openDB("hedge_after=off", "pgreplica-model-nohedge", modes[1])}
	t.Logf("model: read_your_writes of the hedged *sql.DB: %q, of the other: %q (\"\": the default, connector)", modes[0], modes[1])

	r.start = time.Now()
	var wg sync.WaitGroup
	wg.Go(r.heartbeats)
	wg.Go(r.sampleProbes)
	wg.Go(r.samplePools)
	var workers sync.WaitGroup
	for i := range workersPerDB * len(r.dbs) {
		w := r.newWorker(i, r.dbs[i%len(r.dbs)], rng.Uint64())
		workers.Go(w.loop)
	}

	promoted := r.schedule(ctx, rng, dur)
	close(r.stop)
	// Nothing is left frozen or cut off, whatever failed above.
	for _, n := range cl.Nodes {
		if err := n.Thaw(); err != nil {
			t.Errorf("thaw %s: %v", testcluster.Role(n.Port), err)
		}
		if err := n.Heal(ctx); err != nil {
			t.Errorf("heal %s: %v", testcluster.Role(n.Port), err)
		}
	}
	workers.Wait()
	wg.Wait()
	elapsed := r.now()

	h := r.history(ctx, roles, promoted)
	r.summary(h, elapsed)
	if path := os.Getenv("PGREPLICA_MODEL_HISTORY"); path != "" {
		// The whole history as JSON, for a closer look at a failure.
		if b, err := json.Marshal(h); err != nil {
			t.Errorf("history: %v", err)
		} else if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Errorf("history: %v", err)
		}
	}
	vs := check.Check(h)
	for _, v := range vs {
		t.Errorf("\n%s", check.Explain(h, v))
	}
	r.sanity(h)
	if len(vs) > 0 {
		t.Logf("seed %d: %d violations; replay with PGREPLICA_MODEL_SEED=%d PGREPLICA_MODEL_BUDGET=%v", sd, len(vs), sd, dur)
	}
}

// setup creates the tables and the write function on the primary.
func (r *run) setup(ctx context.Context) {
	t := r.t
	// port and n default to the node that ran the write and its first
	// run; every write is an upsert counting its runs.
	r.w = testcluster.NewTable(t, ctx, "model_w", "k bigint PRIMARY KEY, port int NOT NULL DEFAULT inet_server_port(), n int NOT NULL DEFAULT 1")
	r.hb = testcluster.NewTable(t, ctx, "model_hb", "seq bigint PRIMARY KEY")
	r.u = testcluster.NewTable(t, ctx, "model_u", "k int")
	r.fn = r.w + "_write"
	// A plpgsql function that inserts: what the classifier cannot see.
	// delay makes its replica attempt slow enough to be hedged.
	err := r.cl.Exec(ctx, 0, fmt.Sprintf(`ALTER TABLE %[2]s SET UNLOGGED;
		CREATE FUNCTION %[1]s(key bigint, delay float8) RETURNS int LANGUAGE plpgsql AS $$
		BEGIN
			IF delay > 0 THEN PERFORM pg_sleep(delay); END IF;
			INSERT INTO %[3]s (k) VALUES (key) ON CONFLICT (k) DO UPDATE SET n = %[3]s.n + 1;
			RETURN inet_server_port();
		END $$;
		CREATE PROCEDURE %[1]s_commit(key bigint, INOUT port int) LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO %[3]s (k) VALUES (key) ON CONFLICT (k) DO UPDATE SET n = %[3]s.n + 1;
			COMMIT;
			PERFORM pg_sleep(0.1);
			port := inet_server_port();
		END $$`, r.fn, r.u, r.w))
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
}

// heartbeats inserts a row into the heartbeat table every few ms, straight
// into the current primary (apart from pgreplica), and records when each
// insert was acknowledged: the clock that staleness is measured by.
func (r *run) heartbeats() {
	var conn *pgx.Conn
	var connTo int32 = -1
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for seq := int64(1); !r.stopped(); seq++ {
		idx := r.primary.Load()
		if conn != nil && connTo != idx {
			conn.Close(context.Background())
			conn = nil
		}
		if conn == nil {
			cctx, cancel := context.WithTimeout(r.base, time.Second)
			c, err := pgx.Connect(cctx, r.cl.AdminDSN(int(idx)))
			cancel()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			conn, connTo = c, idx
		}
		qctx, cancel := context.WithTimeout(r.base, time.Second)
		_, err := conn.Exec(qctx, "INSERT INTO "+r.hb+" (seq) VALUES ($1)", seq)
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			continue // seq's fate is unknown: never counted
		}
		acked := r.now()
		r.mu.Lock()
		r.hbs = append(r.hbs, check.Heartbeat{Seq: seq, Acked: acked})
		r.mu.Unlock()
		time.Sleep(3 * time.Millisecond)
	}
}

// sampleProbes records, every 25 ms, when each DB's monitor last heard
// from each node: the age of what routing knows.
func (r *run) sampleProbes() {
	for !r.stopped() {
		for _, d := range r.dbs {
			st := d.connector.Status()
			s := check.ProbeSample{At: r.now(), DB: d.name, LastProbe: map[int]time.Duration{}}
			for _, n := range st.Nodes {
				if n.LastProbe.IsZero() {
					continue
				}
				if _, p, err := net.SplitHostPort(n.Addr); err == nil {
					port, _ := strconv.Atoi(p)
					s.LastProbe[port] = n.LastProbe.Sub(r.start)
				}
			}
			r.mu.Lock()
			r.probes = append(r.probes, s)
			r.mu.Unlock()
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// samplePools counts each DB's connections per node in pg_stat_activity,
// by application_name, whose client socket is still open here.
func (r *run) samplePools() {
	for !r.stopped() {
		for i, n := range r.cl.Nodes {
			ports, err := testcluster.EstablishedClientPorts(n.Port)
			if err != nil {
				r.t.Errorf("reading /proc/net/tcp: %v", err)
				return
			}
			for _, d := range r.dbs {
				qctx, cancel := context.WithTimeout(r.base, 300*time.Millisecond)
				live, err := r.cl.QueryInt(qctx, i, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"+d.app+"' AND client_port = ANY('{"+ports+"}'::int[])")
				cancel()
				if err != nil {
					continue
				}
				// The pool's size plus the monitor's probe connection; once
				// a replica was promoted its pool may be either size.
				limit := int64(replicaMax + 1)
				if i == 0 {
					limit = primaryMax + 1
				} else if i == 1 && r.failover.Load() {
					limit = max(primaryMax, replicaMax) + 1
				}
				r.mu.Lock()
				r.pools = append(r.pools, check.PoolSample{At: r.now(), DB: d.name, Port: n.Port, Live: live, Cap: limit})
				r.mu.Unlock()
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// history gathers the recorded run and what the servers hold.
func (r *run) history(ctx context.Context, roles map[int]string, p *promotion) *check.History {
	t := r.t
	h := &check.History{
		Seed: r.seed, Ops: r.ops, Faults: r.faults, Heartbeats: r.hbs, Probes: r.probes, Pools: r.pools, PrimaryRestarts: r.restarts,
		Roles: roles, PrimaryPort: r.cl.Nodes[0].Port,
		MonitorInterval: monitorInterval, Margin: margin,
	}
	sort.Slice(h.Ops, func(i, j int) bool { return h.Ops[i].Start < h.Ops[j].Start })
	sort.Slice(h.Heartbeats, func(i, j int) bool { return h.Heartbeats[i].Seq < h.Heartbeats[j].Seq })
	sort.Slice(h.Probes, func(i, j int) bool { return h.Probes[i].At < h.Probes[j].At })
	if p != nil {
		h.NewPrimaryPort, h.FailoverAt, h.PromotedAt = r.cl.Nodes[1].Port, p.crashedAt, p.promotedAt
		h.OldPrimary, h.OldHB = p.oldRows, p.oldHB
		h.Roles[h.NewPrimaryPort] = fmt.Sprintf("replica1 (primary from t=%.3fs)", p.promotedAt.Seconds())
		h.Roles[h.PrimaryPort] = fmt.Sprintf("primary (crashed at t=%.3fs)", p.crashedAt.Seconds())
	}
	var err error
	h.Final, h.FinalHB, err = r.snapshot(ctx, int(r.primary.Load()))
	if err != nil {
		t.Fatalf("reading the primary after the run: %v", err)
	}
	return h
}

// snapshot reads every written key and heartbeat node i holds, as the
// superuser over a connection of its own.
func (r *run) snapshot(ctx context.Context, i int) (map[int64]check.Row, map[int64]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.cl.AdminDSN(i))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close(context.Background())
	rows := map[int64]check.Row{}
	var k int64
	var port, n int
	_, err = pgx.ForEachRow(mustQuery(ctx, conn, "SELECT k, port, n FROM "+r.w), []any{&k, &port, &n}, func() error {
		rows[k] = check.Row{Port: port, N: n}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	hbs := map[int64]bool{}
	var seq int64
	_, err = pgx.ForEachRow(mustQuery(ctx, conn, "SELECT seq FROM "+r.hb), []any{&seq}, func() error {
		hbs[seq] = true
		return nil
	})
	return rows, hbs, err
}

// mustQuery is conn.Query whose error ForEachRow reports through the rows.
func mustQuery(ctx context.Context, conn *pgx.Conn, sql string) pgx.Rows {
	rows, _ := conn.Query(ctx, sql)
	return rows
}

// summary logs what ran: ops by kind (ok/failed), answers by node, faults.
func (r *run) summary(h *check.History, elapsed time.Duration) {
	type count struct {
		ok, failed int
		errs       map[string]int
	}
	kinds := map[string]*count{}
	nodes := map[string]int{}
	reasons := map[string]int{}
	acked := 0
	for i := range h.Ops {
		o := &h.Ops[i]
		c := kinds[o.Kind]
		if c == nil {
			c = &count{}
			kinds[o.Kind] = c
		}
		if o.Err != "" {
			c.failed++
			if c.errs == nil {
				c.errs = map[string]int{}
			}
			c.errs[o.Err]++
		} else {
			c.ok++
			if o.Port != 0 {
				nodes[h.Roles[o.Port]]++
			}
			if o.Reason != "" {
				reasons[o.Reason]++
			}
		}
		if o.Acked {
			acked++
		}
	}
	var ks []string
	for k, c := range kinds {
		ks = append(ks, fmt.Sprintf("%s %d/%d", k, c.ok, c.ok+c.failed))
	}
	sort.Strings(ks)
	fk := map[string]int{}
	for _, f := range h.Faults {
		fk[f.Kind]++
	}
	r.t.Logf("model done in %v, seed %d: %d ops, %d acknowledged writes, %d heartbeats", elapsed.Round(time.Millisecond), h.Seed, len(h.Ops), acked, len(h.Heartbeats))
	r.t.Logf("ops (ok/all): %s", strings.Join(ks, ", "))
	r.t.Logf("answered by: %s; route reasons: %s; faults: %s", join(nodes), join(reasons), join(fk))
	errs := map[string]int{}
	for _, c := range kinds {
		for e, n := range c.errs {
			if len(e) > 120 {
				e = e[:120] + "…"
			}
			errs[e] += n
		}
	}
	type en struct {
		e string
		n int
	}
	var top []en
	for e, n := range errs {
		top = append(top, en{e, n})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n })
	for i := 0; i < len(top) && i < 8; i++ {
		r.t.Logf("error ×%d: %s", top[i].n, top[i].e)
	}
	// The stalest read of each kind and node, against what it was allowed.
	stalest := map[string]check.Staleness{}
	for i, st := range check.StalenessOf(h) {
		k := h.Ops[i].Kind + " on " + h.Roles[h.Ops[i].Port]
		if st.Stale > stalest[k].Stale {
			stalest[k] = st
		}
	}
	var sk []string
	for k, st := range stalest {
		sk = append(sk, fmt.Sprintf("%s %.2fs (allowed %.2fs)", k, st.Stale.Seconds(), st.Allowed.Seconds()))
	}
	sort.Strings(sk)
	r.t.Logf("stalest reads: %s", strings.Join(sk, "; "))
	for _, d := range r.dbs {
		var hs []string
		for _, n := range d.connector.Status().Nodes {
			hs = append(hs, fmt.Sprintf("%s %d/%d", n.Addr, n.HedgesWon, n.HedgesSent))
		}
		r.t.Logf("%s hedges won/sent: %s", d.name, strings.Join(hs, ", "))
	}
}

// sanity fails a run whose workload or schedule did not cover what the
// invariants need: a checker that ran nothing cannot fail.
func (r *run) sanity(h *check.History) {
	var reads, writes, sessionReads int
	for i := range h.Ops {
		o := &h.Ops[i]
		if o.Err != "" {
			continue
		}
		switch {
		case o.Read && o.RYW:
			sessionReads++
		case o.Read:
			reads++
		}
		if o.Acked {
			writes++
		}
	}
	killed := 0
	for _, f := range h.Faults {
		if strings.HasPrefix(f.Kind, "terminate primary statement: a ") {
			killed++
		}
	}
	if reads == 0 || writes == 0 || sessionReads == 0 || len(h.Heartbeats) == 0 || len(h.Faults) == 0 || len(h.PrimaryRestarts) == 0 || killed == 0 {
		r.t.Errorf("a part of the run never happened: %d reads, %d session reads, %d acknowledged writes, %d heartbeats, %d faults, %d primary restarts, %d statements killed on the primary",
			reads, sessionReads, writes, len(h.Heartbeats), len(h.Faults), len(h.PrimaryRestarts), killed)
	}
}

func join[V int | int64](m map[string]V) string {
	var s []string
	for k, v := range m {
		s = append(s, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(s)
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// ensure pgreplica is linked for its driver registration and API.
var _ = pgreplica.WithSession
