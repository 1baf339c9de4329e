// Package soak runs a mixed workload through one pgreplica *sql.DB while
// one replica at a time is crashed, frozen, lagged, has its backends
// terminated or is partitioned (where the sandbox can), and checks what the application saw: every plain read
// served, read-only transactions that fail only after returning data, no
// stale read in a read-your-writes session, every acknowledged write on the
// primary, no goroutine left and no pool over its size. Statements come in
// every form: plain and prepared (*sql.Stmt) reads, Exec, prepared Exec and
// write functions called with SELECT, session writes through a write
// function under UsePrimary read back plainly, with UsePrimary and through
// a *sql.Stmt, and session state (set_config) on a sql.Conn.
//
// It runs for 30 s by default; PGREPLICA_SOAK=10m runs longer. The fault
// schedule comes from a seed that the log prints; PGREPLICA_SOAK_SEED=N
// replays it.
package soak

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }

const (
	readers    = 10
	writers    = 3 // Exec; then one writer calls a write function with SELECT, one a prepared Exec
	sessions   = 4
	roTxUsers  = 2
	primaryMax = 6
	replicaMax = 8
	opTimeout  = 5 * time.Second
	// appName marks the soak's connections (the monitor's probes included)
	// in pg_stat_activity, apart from the test's own direct ones.
	appName = "pgreplica-soak"
)

// failures keeps a count per kind and the first few errors of each, with
// when they happened, to set against the fault timeline.
type failures struct {
	mu     sync.Mutex
	counts map[string]int
	first  map[string][]string
	start  time.Time
}

func (f *failures) add(kind string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[kind]++
	if len(f.first[kind]) < 5 {
		f.first[kind] = append(f.first[kind], fmt.Sprintf("t=%.3fs %v", time.Since(f.start).Seconds(), err))
	}
}

func (f *failures) count(kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[kind]
}

// timeline logs faults with their time since the start.
type timeline struct {
	t     *testing.T
	start time.Time
	mu    sync.Mutex
	kinds map[string]int
}

func (tl *timeline) log(format string, args ...any) {
	tl.t.Logf("t=%7.3fs %s", time.Since(tl.start).Seconds(), fmt.Sprintf(format, args...))
}

// timelineWriter puts the driver's log lines on the timeline.
type timelineWriter struct{ tl *timeline }

func (w timelineWriter) Write(p []byte) (int, error) {
	w.tl.log("driver: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

func soakDuration(t *testing.T) time.Duration {
	d := 30 * time.Second
	if v := os.Getenv("PGREPLICA_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("PGREPLICA_SOAK=%q: %v", v, err)
		}
	}
	return d
}

func soakSeed(t *testing.T) uint64 {
	if v := os.Getenv("PGREPLICA_SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("PGREPLICA_SOAK_SEED=%q: %v", v, err)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

func TestSoak(t *testing.T) {
	duration, seed := soakDuration(t), soakSeed(t)
	t.Logf("soak: %v, seed %d (replay with PGREPLICA_SOAK_SEED=%d)", duration, seed, seed)
	ctx := context.Background()
	cl := testcluster.Cluster()
	for _, n := range cl.Nodes {
		t.Logf("%s is %s", testcluster.Role(n.Port), n.Addr())
	}

	kv := testcluster.NewTable(t, ctx, "soak_kv", "k int PRIMARY KEY, v bigint NOT NULL")
	writes := testcluster.NewTable(t, ctx, "soak_writes", "id bigserial PRIMARY KEY, writer int NOT NULL, seq int NOT NULL")
	// Write functions called with SELECT: what the classifier cannot see.
	insertFn, setFn := writes+"_insert", kv+"_set"
	if err := cl.Exec(ctx, 0, fmt.Sprintf(`
		CREATE FUNCTION %[1]s(w int, s int) RETURNS int LANGUAGE sql AS $$ INSERT INTO %[2]s (writer, seq) VALUES (w, s) RETURNING seq $$;
		CREATE FUNCTION %[3]s(key int, val bigint) RETURNS bigint LANGUAGE plpgsql AS $$
		BEGIN UPDATE %[4]s SET v = val WHERE k = key; RETURN val; END $$`, insertFn, writes, setFn, kv)); err != nil {
		t.Fatal(err)
	}
	primary := testcluster.Direct(t, 0)
	for k := range sessions + 1 {
		if _, err := primary.ExecContext(ctx, "INSERT INTO "+kv+" VALUES ($1, 0)", k); err != nil {
			t.Fatal(err)
		}
	}
	testcluster.WaitReplayed(t, ctx)

	start := time.Now()
	fails := &failures{counts: map[string]int{}, first: map[string][]string{}, start: start}
	tl := &timeline{t: t, start: start, kinds: map[string]int{}}

	// Opened after the tables so that NoLeaks' cleanup runs after db.Close.
	// The driver's state changes (node down, up, frozen) join the fault
	// timeline.
	testcluster.NoLeaks(t)
	cfg, err := pgreplica.ParseConfig(testcluster.DSN("monitor_interval=200ms", "application_name="+appName,
		"primary_max_conns="+strconv.Itoa(primaryMax), "replica_max_conns="+strconv.Itoa(replicaMax)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(timelineWriter{tl}, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(32)
	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	var plainReads, sessionReads, roTxs, roLate atomic.Int64
	var readsByPort sync.Map // port → *atomic.Int64
	countPort := func(port int) {
		v, _ := readsByPort.LoadOrStore(port, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}

	// Plain reads; every other reader through a prepared *sql.Stmt.
	readSQL := "SELECT inet_server_port(), v FROM " + kv + " WHERE k = 0"
	readStmt, err := db.PrepareContext(ctx, readSQL)
	if err != nil {
		t.Fatal(err)
	}
	for i := range readers {
		wg.Go(func() {
			for !stopped() {
				rctx, cancel := context.WithTimeout(ctx, opTimeout)
				var port int
				var v int64
				var err error
				if i%2 == 0 {
					err = db.QueryRowContext(rctx, readSQL).Scan(&port, &v)
				} else {
					err = readStmt.QueryRowContext(rctx).Scan(&port, &v)
				}
				cancel()
				plainReads.Add(1)
				if err != nil {
					fails.add("plain read", err)
					continue
				}
				countPort(port)
			}
		})
	}

	// Writers: every acknowledged insert must be on the primary at the end.
	insertSQL := "INSERT INTO " + writes + " (writer, seq) VALUES ($1, $2)"
	insertStmt, err := db.PrepareContext(ctx, insertSQL)
	if err != nil {
		t.Fatal(err)
	}
	acked := make([]atomic.Int64, writers+2)
	for w := range writers + 2 {
		wg.Go(func() {
			for seq := 1; !stopped(); seq++ {
				wctx, cancel := context.WithTimeout(ctx, opTimeout)
				var err error
				switch w {
				case writers: // a write function called with SELECT
					var got int
					err = db.QueryRowContext(wctx, "SELECT "+insertFn+"($1, $2)", w, seq).Scan(&got)
				case writers + 1: // a prepared *sql.Stmt
					_, err = insertStmt.ExecContext(wctx, w, seq)
				default:
					_, err = db.ExecContext(wctx, insertSQL, w, seq)
				}
				cancel()
				if err != nil {
					fails.add("write", err)
					return // the row may or may not exist: stop counting this writer
				}
				acked[w].Add(1)
				time.Sleep(5 * time.Millisecond)
			}
		})
	}

	// Read-your-writes sessions: each owns one key, bumps it and reads it
	// back in the same session. Every other write goes through a write
	// function called with SELECT under UsePrimary; the reads are plain
	// session reads, UsePrimary session reads and prepared *sql.Stmt ones.
	sessionReadSQL := "SELECT v FROM " + kv + " WHERE k = $1"
	sessionStmt, err := db.PrepareContext(ctx, sessionReadSQL)
	if err != nil {
		t.Fatal(err)
	}
	for s := 1; s <= sessions; s++ {
		wg.Go(func() {
			sctx := pgreplica.WithSession(ctx)
			for v := int64(1); !stopped(); v++ {
				wctx, cancel := context.WithTimeout(sctx, opTimeout)
				var err error
				if v%2 == 0 {
					var got int64
					err = db.QueryRowContext(pgreplica.UsePrimary(wctx), "SELECT "+setFn+"($1, $2)", s, v).Scan(&got)
				} else {
					_, err = db.ExecContext(wctx, "UPDATE "+kv+" SET v = $2 WHERE k = $1", s, v)
				}
				cancel()
				if err != nil {
					fails.add("session write", err)
					return
				}
				for i := range 3 {
					rctx, cancel := context.WithTimeout(sctx, opTimeout)
					var got int64
					var err error
					switch i {
					case 0:
						err = db.QueryRowContext(rctx, sessionReadSQL, s).Scan(&got)
					case 1:
						err = db.QueryRowContext(pgreplica.UsePrimary(rctx), sessionReadSQL, s).Scan(&got)
					default:
						err = sessionStmt.QueryRowContext(rctx, s).Scan(&got)
					}
					cancel()
					sessionReads.Add(1)
					switch {
					case err != nil:
						fails.add("session read", err)
					case got != v:
						fails.add("stale session read", fmt.Errorf("session %d read %d after writing %d", s, got, v))
					}
				}
			}
		})
	}

	// Session state: set_config(…, false) on a sql.Conn stays with that
	// connection (read back from it), set_config(…, true) outside a
	// transaction lasts one statement; then the connection is discarded,
	// as README advises, so that it does not keep its primary connection.
	var stateChecks atomic.Int64
	wg.Go(func() {
		for n := 1; !stopped(); n++ {
			sessionState(ctx, db, n, fails)
			stateChecks.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	})

	// Read-only transactions: two reads and a commit.
	for range roTxUsers {
		wg.Go(func() {
			for !stopped() {
				roTxs.Add(1)
				tctx, cancel := context.WithTimeout(ctx, opTimeout)
				roTx(tctx, db, kv, fails, &roLate)
				cancel()
			}
		})
	}

	// Connections per node, from pg_stat_activity, while the load runs.
	// A backend whose client closed its socket during a partition lives on
	// until the client's FIN gets through after the heal: maxConns counts
	// only backends whose client socket is still established here;
	// maxServer counts them all.
	maxConns := make([]atomic.Int64, len(cl.Nodes))
	maxServer := make([]atomic.Int64, len(cl.Nodes))
	wg.Go(func() {
		for !stopped() {
			for i, n := range cl.Nodes {
				ports := establishedClientPorts(t, n.Port)
				qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				live, err := cl.QueryInt(qctx, i, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"+appName+"' AND client_port = ANY('{"+ports+"}'::int[])")
				all, err2 := cl.QueryInt(qctx, i, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"+appName+"'")
				cancel()
				if err == nil && live > maxConns[i].Load() {
					maxConns[i].Store(live)
				}
				if err2 == nil && all > maxServer[i].Load() {
					maxServer[i].Store(all)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	// Faults: every 2–4 s one replica gets one, lasting 1–2 s.
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	kinds := []string{"crash", "freeze", "lag", "terminate"}
	if _, ok := any(cl.Nodes[1]).(partitioner); ok {
		kinds = append(kinds, "partition")
	} else {
		t.Log("internal/sandbox has no Node.Partition on this branch: no partition faults")
	}
	faultCounts := map[string]int{}
	deadline := start.Add(duration)
	for time.Now().Add(2 * time.Second).Before(deadline) {
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
		i := 1 + rng.IntN(len(cl.Nodes)-1)
		kind := kinds[rng.IntN(len(kinds))]
		hold := time.Duration(1000+rng.IntN(1000)) * time.Millisecond
		faultCounts[kind]++
		if err := inject(ctx, tl, cl.Nodes[i], cl, kind, hold); err != nil {
			t.Errorf("fault %s on replica%d: %v", kind, i, err)
		}
	}
	if rest := time.Until(deadline); rest > 0 {
		time.Sleep(rest)
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)

	// Every acknowledged write is on the primary.
	for w := range acked {
		n, err := cl.QueryInt(ctx, 0, fmt.Sprintf("SELECT count(DISTINCT seq) FROM %s WHERE writer = %d AND seq <= %d", writes, w, acked[w].Load()))
		if err != nil {
			t.Fatal(err)
		}
		if n != acked[w].Load() {
			fails.add("lost write", fmt.Errorf("writer %d: %d acknowledged, %d on the primary", w, acked[w].Load(), n))
		}
	}

	var ports []string
	readsByPort.Range(func(k, v any) bool {
		ports = append(ports, fmt.Sprintf("%s %d", testcluster.Role(k.(int)), v.(*atomic.Int64).Load()))
		return true
	})
	sort.Strings(ports)
	var faults []string
	for k, v := range faultCounts {
		faults = append(faults, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(faults)
	var totalAcked int64
	for w := range acked {
		totalAcked += acked[w].Load()
	}
	t.Logf("soak done in %v, seed %d: %d plain reads (%s), %d session reads, %d read-only transactions (%d failed after their first row), %d acknowledged writes; faults: %s",
		elapsed.Round(time.Millisecond), seed, plainReads.Load(), strings.Join(ports, ", "), sessionReads.Load(), roTxs.Load(), roLate.Load(), totalAcked, strings.Join(faults, ", "))
	t.Logf("max connections seen (pg_stat_activity, client socket open; the monitor's probe adds one): primary %d of %d, replica1 %d of %d, replica2 %d of %d",
		maxConns[0].Load(), primaryMax, maxConns[1].Load(), replicaMax, maxConns[2].Load(), replicaMax)
	t.Logf("max backends seen (pg_stat_activity, including those whose client had closed during a partition): primary %d, replica1 %d, replica2 %d",
		maxServer[0].Load(), maxServer[1].Load(), maxServer[2].Load())
	fails.mu.Lock()
	defer fails.mu.Unlock()
	var kindsSeen []string
	for k, n := range fails.counts {
		kindsSeen = append(kindsSeen, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kindsSeen)
	t.Logf("failures by kind: %s", orNone(strings.Join(kindsSeen, ", ")))
	for kind, n := range fails.counts {
		if kind == "ro tx after first row" {
			continue // documented: a transaction that returned data stays on its node
		}
		t.Errorf("%d %s failures; first: %s", n, kind, strings.Join(fails.first[kind], "; "))
	}
	if plainReads.Load() == 0 || roTxs.Load() == 0 || totalAcked == 0 || sessionReads.Load() == 0 || stateChecks.Load() == 0 {
		t.Error("a part of the workload never ran")
	}
	if len(faultCounts) == 0 {
		t.Error("no fault was injected")
	}
	if maxConns[0].Load() > primaryMax+1 || maxConns[1].Load() > replicaMax+1 || maxConns[2].Load() > replicaMax+1 {
		t.Error("more connections than the pool sizes allow")
	}
}

// establishedClientPorts is testcluster.EstablishedClientPorts, failing
// t (and counting nothing) when /proc/net/tcp cannot be read.
func establishedClientPorts(t *testing.T, port int) string {
	ports, err := testcluster.EstablishedClientPorts(port)
	if err != nil {
		t.Errorf("reading /proc/net/tcp: %v", err)
	}
	return ports
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// sessionState sets a setting on a sql.Conn with set_config(…, false) and
// reads it back on that connection; set_config(…, true) outside a
// transaction must leave it as it was.
func sessionState(ctx context.Context, db *sql.DB, n int, fails *failures) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	c, err := db.Conn(ctx)
	if err != nil {
		fails.add("session state", err)
		return
	}
	defer c.Close()
	defer c.Raw(func(any) error { return driver.ErrBadConn }) //nolint:errcheck // discards the connection
	want := strconv.Itoa(n)
	var got string
	if err := c.QueryRowContext(ctx, "SELECT set_config('soak.n', $1, false)", want).Scan(&got); err != nil {
		fails.add("session state", err)
		return
	}
	if err := c.QueryRowContext(ctx, "SELECT set_config('soak.n', 'local', true)").Scan(&got); err != nil {
		fails.add("session state", err)
		return
	}
	if err := c.QueryRowContext(ctx, "SELECT current_setting('soak.n')").Scan(&got); err != nil {
		fails.add("session state", err)
		return
	}
	if got != want {
		fails.add("session state lost", fmt.Errorf("set soak.n to %s on a sql.Conn, read back %q", want, got))
	}
}

// roTx runs one read-only transaction and files any failure under where it
// happened.
func roTx(ctx context.Context, db *sql.DB, kv string, fails *failures, late *atomic.Int64) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		fails.add("ro tx begin", err)
		return
	}
	var n int64
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM "+kv).Scan(&n); err != nil {
		fails.add("ro tx first statement", err)
		_ = tx.Rollback()
		return
	}
	var port int
	if err := tx.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		late.Add(1)
		fails.add("ro tx after first row", err)
		_ = tx.Rollback()
		return
	}
	if err := tx.Commit(); err != nil {
		fails.add("ro tx commit", err)
	}
}

// partitioner is what internal/sandbox offers for network partitions
// (dropped packets) where it has them.
type partitioner interface {
	Partition(ctx context.Context) error
	Heal(ctx context.Context) error
}

// inject applies one fault to a replica for hold, then undoes it.
func inject(ctx context.Context, tl *timeline, n *sandbox.Node, cl *sandbox.Cluster, kind string, hold time.Duration) error {
	name := "replica" + strconv.Itoa(n.Index)
	tl.log("%s %s for %v", kind, name, hold)
	switch kind {
	case "crash":
		if err := n.Stop(ctx); err != nil {
			return err
		}
		time.Sleep(hold)
		tl.log("restart %s", name)
		return n.Start(ctx)
	case "freeze":
		if err := n.Freeze(); err != nil {
			return err
		}
		time.Sleep(hold)
		tl.log("thaw %s", name)
		return n.Thaw()
	case "lag":
		if err := n.PauseReplay(ctx); err != nil {
			return err
		}
		time.Sleep(hold)
		tl.log("resume replay on %s", name)
		return n.ResumeReplay(ctx)
	case "partition":
		p := any(n).(partitioner)
		if err := p.Partition(ctx); err != nil {
			return err
		}
		time.Sleep(hold)
		tl.log("heal %s", name)
		return p.Heal(ctx)
	case "terminate":
		// Generous: right after a thaw the server first accepts the
		// connections queued while it was frozen, and the machine is busy.
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		killed, err := cl.QueryInt(qctx, n.Index, "SELECT count(*) FILTER (WHERE CASE WHEN application_name = '"+appName+"' THEN pg_terminate_backend(pid) END) FROM pg_stat_activity")
		if err != nil {
			return err
		}
		tl.log("terminated %d backends on %s", killed, name)
		time.Sleep(hold)
		return nil
	}
	return errors.New("unknown fault " + kind)
}
