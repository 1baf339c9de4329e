package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// db.Close stops everything pgreplica started: the monitor, every node's
// pool and its connections. Checked with goleak after using the primary,
// both replicas, a transaction and a sql.Conn.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "closing", "id int")
	ignore := goleak.IgnoreCurrent()

	db, err := sql.Open("pgreplica", testcluster.DSN("monitor_interval=50ms"))
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, db, "INSERT INTO "+table+" VALUES (1)")
	replicas := map[int]bool{}
	for i := 0; len(replicas) < 2; i++ {
		if i == 1000 {
			t.Fatalf("1000 reads reached only %v", replicas)
		}
		replicas[testcluster.Port(t, ctx, db)] = true
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() // a failing test must not leave it open: db.Close would wait for it
	mustExec(t, ctx, tx, "INSERT INTO "+table+" VALUES (2)")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testcluster.Port(t, ctx, c)
	c.Close()
	// Rows still open while another checkout runs.
	rows, err := db.QueryContext(ctx, "SELECT generate_series(1, 1000)")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	rows.Next()
	connector, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("goroutines left after db.Close: %v", err)
	}
	for _, ns := range connector.Status().Nodes {
		if ns.Pool.Total != 0 || ns.InFlight != 0 {
			t.Errorf("after Close %s still has %d connections, %d in flight", ns.Addr, ns.Pool.Total, ns.InFlight)
		}
	}
	if err := db.PingContext(ctx); err == nil {
		t.Fatal("Ping after Close succeeded")
	}
	if err := connector.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	if _, err := connector.Connect(ctx); !errors.Is(err, pgreplica.ErrClosed) {
		t.Fatalf("Connect after Close: %v, want ErrClosed", err)
	}
}

// db.Close returns while a sql.Conn or open Rows still hold server
// connections, as it does with pgx's stdlib: database/sql closes such
// connections when they are released. The held server connections are
// closed once released.
func TestCloseWithCheckoutsStillHeldReturns(t *testing.T) {
	ctx := testCtx(t)
	testcluster.NoLeaks(t)
	db, err := sql.Open("pgreplica", testcluster.DSN(monitorInterval))
	if err != nil {
		t.Fatal(err)
	}
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := c.QueryRowContext(pgreplica.UsePrimary(ctx), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(ctx, "SELECT generate_series(1, 1000)")
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()

	done := make(chan error, 1)
	go func() { done <- db.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("db.Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		// Unblock it, so that the test ends, then report.
		c.Close()
		rows.Close()
		<-done
		t.Fatal("db.Close did not return while a sql.Conn and open Rows were held; it returned once they were released")
	}
	rows.Close()
	c.Close()
	// The released primary connection is closed, not kept in a pool.
	direct := testcluster.Direct(t, 0)
	waitUntil(t, ctx, "the held primary connection is closed after its release", func() bool {
		return queryInt(t, ctx, direct, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0
	})
}

// waitUntil polls cond until it holds, failing t when ctx ends first.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// leakRecorder is a testing.TB whose cleanups and errors the test runs and
// reads itself, to test testcluster.NoLeaks.
type leakRecorder struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	errs     []string
}

func (r *leakRecorder) Helper() {}
func (r *leakRecorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}
func (r *leakRecorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// runCleanups runs the cleanups last first, as testing does.
func (r *leakRecorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// A test that opens two DBs is checked for leaks once both are closed: the
// first DB's monitor, running by design while the second closes, is no
// leak of the second's. Here the first DB lists a replica that accepts
// connections and never answers, so its probe rounds sit in a connect for
// 2 s, past goleak's retries: checked after the second DB's close (as
// before), they were reported as goroutines left after db.Close.
func TestNoLeaksWaitsForEveryDBOfTheTest(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never answered, closed at the end
		}
	}()
	t.Cleanup(func() {
		silent.Close()
		<-accepted
		for _, c := range held {
			c.Close()
		}
	})

	r := &leakRecorder{TB: t}
	cl := testcluster.Cluster()
	stalled := testcluster.OpenVia(r, []string{cl.Nodes[0].Addr(), cl.Nodes[1].Addr(), silent.Addr().String()}, "monitor_interval=200ms")
	if err := stalled.PingContext(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// Past the first stalled round, so that rounds begin after the second
	// DB opens.
	time.Sleep(2500 * time.Millisecond)
	other := testcluster.Open(r, "monitor_interval=200ms")
	if err := other.PingContext(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	r.runCleanups()
	if len(r.errs) != 0 {
		t.Fatalf("NoLeaks reported, with both DBs closed: %s", strings.Join(r.errs, "\n"))
	}
}

// db.Close waits for a hedge that lost and still runs: by the time it
// returns, the hedge's connection is released and its node's pool closed.
// Before, the hedge's goroutine did both after db.Close returned, so pgx's
// cleanup goroutines outlived it (seen in TestPartitionedReplica's leak
// check under a concurrent CI pair).
func TestCloseWaitsForALosingHedge(t *testing.T) {
	ctx := testCtx(t)
	testcluster.NoLeaks(t)
	nodes := testcluster.Cluster().Nodes
	fast, slow := nodes[1].Port, nodes[2].Port
	db, err := sql.Open("pgreplica", testcluster.DSN("hedge_after=50ms", "max_replica_lag=off", "fallback_to_primary=false"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	connector, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	// Both replicas hold a connection: a read that must open one is not
	// hedged.
	replicas := map[int]bool{}
	for i := 0; len(replicas) < 2; i++ {
		if i == 1000 {
			t.Fatalf("1000 reads reached only %v", replicas)
		}
		replicas[testcluster.Port(t, ctx, db)] = true
	}
	hedgesTo := func(port int) uint64 {
		for _, ns := range connector.Status().Nodes {
			if strings.HasSuffix(ns.Addr, fmt.Sprintf(":%d", port)) {
				return ns.HedgesSent
			}
		}
		t.Fatalf("no node of port %d in %+v", port, connector.Status().Nodes)
		return 0
	}
	// On the fast replica the read answers in 0.3 s; its hedge, sent after
	// 50 ms to the slow one, sleeps 30 s there. A read that begins on the
	// slow one is answered by its hedge instead: try again.
	const query = "SELECT inet_server_port() FROM pg_sleep(CASE WHEN inet_server_port() = $1 THEN 0.3 ELSE 30 END)"
	for try := 1; ; try++ {
		if try > 50 {
			t.Fatal("in 50 reads, none began on the fast replica with a hedge sent to the slow one")
		}
		before := hedgesTo(slow)
		var port int
		if err := db.QueryRowContext(ctx, query, fast).Scan(&port); err != nil {
			t.Fatal(err)
		}
		if port == fast && hedgesTo(slow) > before {
			break
		}
	}
	// The hedge still runs on the slow replica: it is stopped one second
	// after it lost, or when the db closes.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range connector.Status().Nodes {
		if ns.Pool.Total != 0 || ns.InFlight != 0 {
			t.Errorf("when db.Close returned, %s still had %d connections, %d in flight", ns.Addr, ns.Pool.Total, ns.InFlight)
		}
	}
}
