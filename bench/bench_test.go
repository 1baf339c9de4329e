// Package bench holds paired benchmarks of pgreplica against plain pgx
// stdlib on a real primary + one streaming replica (internal/sandbox).
//
// BenchmarkPointSelect, BenchmarkPointSelectParallel and BenchmarkUpdate
// have one sub-benchmark per driver (driver=pgx, driver=pgreplica, …), so
// benchstat can put them side by side; BenchmarkAlternating measures the
// same pairs by alternating between the drivers every few queries and
// reports their ratio:
//
//	go test -run='^$' -bench=. -benchmem -count=10 ./bench/ | tee /tmp/bench.txt
//	benchstat -filter '-.name:/^Alternating/' -col /driver /tmp/bench.txt
//	benchstat -filter '.name:/^Alternating/' /tmp/bench.txt
//
// BENCHMARKS.md at the repository root has the commands, the machine and
// the numbers; interleave.sh runs the pairs interleaved across processes.
// The cluster is started only when -bench is given: a plain go test ./...
// runs nothing here and starts nothing.
package bench

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx": the direct, single-node side

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
)

const (
	// rows in items; ids are 1..rows.
	rows = 10000
	// maxConns is every *sql.DB's MaxOpenConns and MaxIdleConns, so that
	// database/sql neither waits for nor closes connections while timed.
	maxConns = 8
	// parallelism * GOMAXPROCS goroutines run the RunParallel benchmarks;
	// on a 2-core machine that is 8, one per connection.
	parallelism = 4

	selectSQL = "SELECT id, name, price FROM items WHERE id = $1"
	updateSQL = "UPDATE items SET price = price + 1 WHERE id = $1"
)

// reverse runs each benchmark's drivers in the opposite order (pgreplica
// first), so that rounds alternating it cancel any advantage of going
// first or second: go test ./bench/ -bench=. -args -reverse.
var reverse = flag.Bool("reverse", false, "run pgreplica's sub-benchmarks before pgx's")

// dsnParams are added to pgreplica's DSN (-args -dsn-params=hedge_after=off).
var dsnParams = flag.String("dsn-params", "", "query parameters added to pgreplica's DSN, e.g. hedge_after=off")

// The databases every benchmark shares, opened once by TestMain.
var (
	direct struct{ primary, replica *sql.DB } // driver "pgx", one node each
	routed *sql.DB                            // driver "pgreplica", whole cluster
	conn   *pgreplica.Connector               // behind routed, for its counters
)

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// No -bench: there are no tests in this package, so start nothing.
		os.Exit(m.Run())
	}
	os.Exit(runWithCluster(m))
}

func runWithCluster(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if dsn := os.Getenv("PGREPLICA_BENCH_DSN"); dsn != "" {
		c, err := externalCluster(dsn)
		if err == nil {
			err = setup(ctx, c)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench setup (PGREPLICA_BENCH_DSN):", err)
			return 1
		}
		defer closeDBs()
		return m.Run()
	}
	sc, err := sandbox.Start(ctx, sandbox.Options{Replicas: 1})
	if err != nil {
		if errors.Is(err, sandbox.ErrUnavailable) && os.Getenv("PGREPLICA_INTEGRATION") != "require" {
			fmt.Println("SKIP benchmarks: no PostgreSQL server binaries (apt-get install postgresql) and no Docker daemon;",
				"set PGREPLICA_INTEGRATION=require to make this an error.")
			return 0
		}
		fmt.Fprintln(os.Stderr, "bench cluster:", err)
		return 1
	}
	defer func() {
		if err := sc.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the bench cluster:", err)
		}
	}()
	if err := setup(ctx, sandboxCluster{sc}); err != nil {
		fmt.Fprintln(os.Stderr, "bench setup:", err)
		return 1
	}
	defer closeDBs()
	return m.Run()
}

// setup creates and fills items on the primary, waits for the replica to
// replay it, opens the three *sql.DBs with identical settings, warms every
// connection and checks that pgreplica sends the read to the replica.
func setup(ctx context.Context, c benchCluster) error {
	err := c.Exec(ctx, 0, fmt.Sprintf(`
		DROP TABLE IF EXISTS items;
		CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
		INSERT INTO items SELECT i, 'item ' || i, (i %% 1000) + 0.99 FROM generate_series(1, %d) i`, rows))
	if err != nil {
		return err
	}
	// Alone: VACUUM refuses to run inside the implicit transaction of a
	// multi-statement string.
	if err := c.Exec(ctx, 0, "VACUUM ANALYZE items"); err != nil {
		return err
	}
	if err := c.WaitReplayed(ctx); err != nil {
		return err
	}

	open := func(driverName, dsn string) (*sql.DB, error) {
		db, err := sql.Open(driverName, dsn)
		if err != nil {
			return nil, err
		}
		db.SetMaxOpenConns(maxConns)
		db.SetMaxIdleConns(maxConns)
		db.SetConnMaxLifetime(0)
		db.SetConnMaxIdleTime(0)
		return db, nil
	}
	if direct.replica, err = open("pgx", c.NodeDSN(1)); err != nil {
		return err
	}
	if direct.primary, err = open("pgx", c.NodeDSN(0)); err != nil {
		return err
	}
	dsn := c.DSN()
	if *dsnParams != "" {
		// e.g. -args -dsn-params=hedge_after=off, to compare a setting.
		dsn += "&" + *dsnParams
	}
	if routed, err = open("pgreplica", dsn); err != nil {
		return err
	}
	if conn, err = pgreplica.ConnectorOf(ctx, routed); err != nil {
		return err
	}

	// pgreplica must really read from the replica, or the pair compares
	// the wrong servers.
	var port int
	if err := routed.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		return err
	}
	if want := c.ReplicaPort(); port != want {
		return fmt.Errorf("pgreplica read served by port %d, want the replica's %d", port, want)
	}

	// Open all maxConns connections of each side and let pgx prepare and
	// cache both statements on them, so nothing timed connects or prepares.
	for _, w := range []struct {
		db    *sql.DB
		query string
	}{
		{direct.replica, selectSQL}, {routed, selectSQL},
		{direct.primary, updateSQL}, {routed, updateSQL},
	} {
		if err := warm(ctx, w.db, w.query); err != nil {
			return err
		}
	}
	return nil
}

// warm runs query from maxConns goroutines at once, each on its own
// connection, a few times over.
func warm(ctx context.Context, db *sql.DB, query string) error {
	conns := make([]*sql.Conn, maxConns)
	defer func() {
		for _, sc := range conns {
			if sc != nil {
				sc.Close()
			}
		}
	}()
	for i := range conns {
		sc, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		conns[i] = sc
	}
	var wg sync.WaitGroup
	errs := make([]error, maxConns)
	for i, sc := range conns {
		wg.Go(func() {
			for j := range 20 {
				id := 1 + (i*20+j)%rows
				if query == updateSQL {
					_, errs[i] = sc.ExecContext(ctx, query, id)
				} else {
					errs[i] = scanItem(sc.QueryRowContext(ctx, query, id))
				}
				if errs[i] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func closeDBs() {
	for _, db := range []*sql.DB{routed, direct.replica, direct.primary} {
		if db != nil {
			db.Close()
		}
	}
}

func scanItem(row *sql.Row) error {
	var (
		id    int
		name  string
		price string // numeric arrives as text through pgx stdlib
	)
	return row.Scan(&id, &name, &price)
}

// sides runs fn as one sub-benchmark per driver, driver=pgx on directDB
// and driver=pgreplica on routed, then the more sides; on pgreplica it
// checks afterwards, through its counters, that every statement went to
// wantNode (0 primary, 1 replica).
func sides(b *testing.B, directDB *sql.DB, wantNode int, fn func(b *testing.B, db *sql.DB, ctx context.Context), more ...side) {
	all := append([]side{
		{"pgx", func(b *testing.B) { fn(b, directDB, context.Background()) }},
		{"pgreplica", func(b *testing.B) {
			routedTo(b, wantNode, func() { fn(b, routed, context.Background()) })
		}},
	}, more...)
	if *reverse {
		slices.Reverse(all)
	}
	for _, s := range all {
		b.Run("driver="+s.name, func(b *testing.B) {
			cpu0 := processCPU()
			s.run(b)
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the user and system CPU time the whole process has used:
// over a sub-benchmark, divided by b.N, the client CPU per query (cpu-ns/op;
// it includes the Go runtime's and pgx's share, which is the point: on a
// shared machine, throughput swings by ±40% and CPU per query much less).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// threadCPU is the CPU time of the calling OS thread (RUSAGE_THREAD).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// side is one sub-benchmark of a pair (or more).
type side struct {
	name string
	run  func(b *testing.B)
}

// routedTo runs run on pgreplica and fails b unless node want
// served at least b.N statements during it and the other node none.
func routedTo(b *testing.B, want int, run func()) {
	b.StopTimer() // Status allocates: keep it out of the numbers
	if want != 0 {
		settleReads(b)
	}
	before := conn.Status()
	b.StartTimer()
	run()
	b.StopTimer()
	after := conn.Status()
	for i := range after.Nodes {
		got := after.Nodes[i].Statements - before.Nodes[i].Statements
		hedges := after.Nodes[i].HedgesSent - before.Nodes[i].HedgesSent // counted in got
		switch {
		case i == want && got+hedgesAway(before, after, i) < uint64(b.N):
			b.Fatalf("node %d served %d statements, want at least b.N=%d", i, got, b.N)
		case i != want && got != hedges:
			b.Fatalf("node %d served %d statements (%d of them hedges), want all but hedges on node %d", i, got, hedges, want)
		}
		if hedges > 0 {
			b.ReportMetric(float64(hedges)/float64(b.N), fmt.Sprintf("hedges-to-node%d/op", i))
		}
	}
}

// settleReads waits, untimed, until a plain read through pgreplica is
// served by the replica with no statement on the primary. In the default
// read_your_writes=connector mode, the first read after pgreplica's own
// writes (setup's warm-up, BenchmarkUpdate) asks the primary for its WAL
// position once, unless a monitor probe has covered the writes already:
// one primary statement that would fail routedTo's check, and is no part
// of the read path being measured.
func settleReads(b *testing.B) {
	deadline := time.Now().Add(time.Minute)
	for {
		before := conn.Status()
		ctx, route := pgreplica.WithRoute(context.Background())
		var one int
		if err := routed.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			b.Fatal(err)
		}
		after := conn.Status()
		if route.Reason() == pgreplica.ReasonRead && after.Nodes[0].Statements == before.Nodes[0].Statements {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("pgreplica's reads never settled on the replica (last: %s for %s)", route.Node(), route.Reason())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hedgesAway counts the hedges sent to nodes other than i between two
// snapshots: a read whose hedge won before its first attempt had a
// connection never reached node i.
func hedgesAway(before, after pgreplica.Status, i int) uint64 {
	var n uint64
	for m := range after.Nodes {
		if m != i {
			n += after.Nodes[m].HedgesSent - before.Nodes[m].HedgesSent
		}
	}
	return n
}

// BenchmarkPointSelect: one SELECT by primary key per op, from one
// goroutine; pgx reads the replica directly, pgreplica routes to it.
func BenchmarkPointSelect(b *testing.B) {
	sides(b, direct.replica, 1, func(b *testing.B, db *sql.DB, ctx context.Context) {
		b.ReportAllocs()
		id := 0
		for b.Loop() {
			id = id%rows + 1
			if err := scanItem(db.QueryRowContext(ctx, selectSQL, id)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPointSelectParallel: the same SELECT from parallelism*GOMAXPROCS
// goroutines sharing the *sql.DB.
func BenchmarkPointSelectParallel(b *testing.B) {
	sides(b, direct.replica, 1, func(b *testing.B, db *sql.DB, ctx context.Context) {
		b.ReportAllocs()
		b.SetParallelism(parallelism)
		var worker atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			// Workers start at different ids and walk the table.
			id := int(worker.Add(1)*997) % rows
			for pb.Next() {
				id = id%rows + 1
				if err := scanItem(db.QueryRowContext(ctx, selectSQL, id)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkUpdate: one autocommit UPDATE by primary key per op, from one
// goroutine; pgx writes to the primary directly, pgreplica routes to it,
// and pgreplica-session does the same inside a read-your-writes session
// (one WithSession context for the whole run, so only the write-path cost
// of the session shows, not the cost of creating it).
func BenchmarkUpdate(b *testing.B) {
	update := func(b *testing.B, db *sql.DB, ctx context.Context) {
		b.ReportAllocs()
		id := 0
		for b.Loop() {
			id = id%rows + 1
			if _, err := db.ExecContext(ctx, updateSQL, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	sides(b, direct.primary, 0, update, side{"pgreplica-session", func(b *testing.B) {
		routedTo(b, 0, func() { update(b, routed, pgreplica.WithSession(context.Background())) })
	}})
}

// contender is one side of an alternating benchmark.
type contender struct {
	name string
	db   *sql.DB
	ctx  context.Context
	node int // the node pgreplica must route to; -1 for pgx
}

// alternatingBatch is how many queries one side runs before the next side
// takes over: about a millisecond, short enough that every side sees the
// same load from the rest of a shared machine, long enough that reading
// the clock costs nothing measurable.
const alternatingBatch = 10

// alternating runs op on every contender in turn, in batches of
// alternatingBatch, from workers goroutines (each rotating which side goes
// first), until b.N ops per side are done. Each side's mean time per op is
// reported as NAME-ns/op (for workers > 1: latency / workers, comparable
// to RunParallel's ns/op), and every later side against the first as
// NAME/FIRST, a ratio (1.00 = no overhead). Sequential sub-benchmarks
// compare runs seconds apart; these compare batches a millisecond apart,
// which is what a paired comparison on a busy machine needs.
func alternating(b *testing.B, workers int, cs []contender, op func(ctx context.Context, db *sql.DB, id int) error) {
	b.StopTimer()
	for _, c := range cs {
		if c.node > 0 {
			settleReads(b)
			break
		}
	}
	before := conn.Status()
	var (
		mu    sync.Mutex
		spent = make([]time.Duration, len(cs))
		cpu   = make([]time.Duration, len(cs)) // the workers' own threads' CPU
		done  = make([]int, len(cs))
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	cpu0 := processCPU()
	b.StartTimer()
	for w := range workers {
		wg.Go(func() {
			// Locked to its thread, a worker's thread CPU is its own
			// goroutine's (and what the runtime does on that thread for it:
			// allocation, GC assists, waits on the network); the runtime's
			// background work on other threads is only in cpu-ns/op.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			mySpent, myDone, myCPU := make([]time.Duration, len(cs)), make([]int, len(cs)), make([]time.Duration, len(cs))
			defer func() {
				mu.Lock()
				for i := range cs {
					spent[i] += mySpent[i]
					done[i] += myDone[i]
					cpu[i] += myCPU[i]
				}
				mu.Unlock()
			}()
			id := w * 997
			for turn := w; ; turn++ {
				first := int(next.Add(alternatingBatch)) - alternatingBatch
				if first >= b.N {
					return
				}
				n := min(alternatingBatch, b.N-first)
				for j := range cs {
					i := (turn + j) % len(cs)
					c := cs[i]
					c0, t0 := threadCPU(), time.Now()
					for range n {
						id = id%rows + 1
						if err := op(c.ctx, c.db, id); err != nil {
							b.Error(c.name, err)
							return
						}
					}
					mySpent[i] += time.Since(t0)
					myCPU[i] += threadCPU() - c0
					myDone[i] += n
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	procCPU := processCPU() - cpu0
	after := conn.Status()

	perOp, cpuPerOp := make([]float64, len(cs)), make([]float64, len(cs))
	total := 0
	for i, c := range cs {
		if done[i] == 0 {
			return
		}
		total += done[i]
		perOp[i] = float64(spent[i]) / float64(done[i]) / float64(workers)
		cpuPerOp[i] = float64(cpu[i]) / float64(done[i])
		b.ReportMetric(perOp[i], c.name+"-ns/op")
		// Client CPU per query on the worker threads, per side.
		b.ReportMetric(cpuPerOp[i], c.name+"-cpu-ns/op")
		if i > 0 {
			b.ReportMetric(perOp[i]/perOp[0], c.name+"/"+cs[0].name)
			b.ReportMetric(cpuPerOp[i]/cpuPerOp[0], c.name+"-cpu/"+cs[0].name)
		}
	}
	// The whole process's CPU over every side's queries.
	b.ReportMetric(float64(procCPU)/float64(total), "cpu-ns/op")
	// Every pgreplica side's statements went to its node.
	for n := range after.Nodes {
		got := after.Nodes[n].Statements - before.Nodes[n].Statements
		// Hedged reads (hedge_after=auto) may go to the other node; they
		// are counted, and reported below.
		hedges := after.Nodes[n].HedgesSent - before.Nodes[n].HedgesSent
		var want uint64
		for i, c := range cs {
			if c.node == n {
				want += uint64(done[i])
			}
		}
		if got+hedgesAway(before, after, n) < want || (want == 0 && got != hedges) {
			b.Fatalf("pgreplica sent %d statements to node %d (%d of them hedges), want %d", got, n, hedges, want)
		}
		if hedges > 0 {
			b.ReportMetric(float64(hedges)/float64(b.N), fmt.Sprintf("hedges-to-node%d/op", n))
		}
	}
}

func selectOp(ctx context.Context, db *sql.DB, id int) error {
	return scanItem(db.QueryRowContext(ctx, selectSQL, id))
}

func updateOp(ctx context.Context, db *sql.DB, id int) error {
	_, err := db.ExecContext(ctx, updateSQL, id)
	return err
}

// BenchmarkAlternating: the same pairs as BenchmarkPointSelect,
// BenchmarkPointSelectParallel and BenchmarkUpdate, measured by
// alternating.
func BenchmarkAlternating(b *testing.B) {
	bg := context.Background()
	reads := []contender{{"pgx", direct.replica, bg, -1}, {"pgreplica", routed, bg, 1}}
	writes := []contender{
		{"pgx", direct.primary, bg, -1},
		{"pgreplica", routed, bg, 0},
		{"pgreplica-session", routed, pgreplica.WithSession(bg), 0},
	}
	for _, r := range []struct {
		name    string
		workers int
		cs      []contender
		op      func(context.Context, *sql.DB, int) error
	}{
		{"select", 1, reads, selectOp},
		{"select-parallel", parallelism * runtime.GOMAXPROCS(0), reads, selectOp},
		{"update", 1, writes, updateOp},
	} {
		b.Run("op="+r.name, func(b *testing.B) {
			alternating(b, r.workers, r.cs, r.op)
		})
	}
}
