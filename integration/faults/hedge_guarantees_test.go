package faults

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// openNodes opens a *sql.DB on the cluster as seen through addrs (primary
// first), with params, and a policy that sends reads to replica1 while it
// is usable.
func openNodes(t *testing.T, addrs []string, params ...string) (*sql.DB, *pgreplica.Connector) {
	t.Helper()
	testcluster.NoLeaks(t)
	dsn := testcluster.Cluster().DSNVia(addrs...)
	for _, p := range params {
		dsn += "&" + p
	}
	cfg, err := pgreplica.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	policy := &preferPolicy{}
	policy.prefer(testcluster.Cluster().Nodes[1])
	cfg.Policy = policy
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// openPrimaryAndReplica1 opens a *sql.DB that knows only the primary and
// replica1: the primary is the only other node a hedge could go to.
func openPrimaryAndReplica1(t *testing.T, params ...string) (*sql.DB, *pgreplica.Connector) {
	t.Helper()
	nodes := testcluster.Cluster().Nodes
	return openNodes(t, []string{nodes[0].Addr(), nodes[1].Addr()}, params...)
}

// slowOnStandby is a read without effect that sleeps on a standby and
// answers at once on the primary: a hedge to the primary wins it.
const slowOnStandby = "SELECT inet_server_port() FROM pg_sleep(CASE WHEN pg_is_in_recovery() THEN 20 ELSE 0 END)"

// warm opens a connection of db's to replica1, so that the next read is
// hedged (a read that must open one is not).
// (Until the monitor's first probes, a read may go elsewhere.)
func warm(t *testing.T, ctx context.Context, db *sql.DB) {
	t.Helper()
	testcluster.WaitUntil(t, 10*time.Second, "a read served by replica1", func() bool {
		return testcluster.Port(t, ctx, db) == testcluster.Cluster().Nodes[1].Port
	})
}

func hedgesTo(c *pgreplica.Connector, addr string) uint64 {
	for _, n := range c.Status().Nodes {
		if n.Addr == addr {
			return n.HedgesSent
		}
	}
	return 0
}

// A SELECT of a user function that may write is never hedged to the
// primary: with the primary the only other node, the slow first attempt
// on the standby is refused (25006) and the primary runs it once, as the
// write it is.
func TestHedgeNeverSendsWriteFunctionToPrimary(t *testing.T) {
	ctx := context.Background()
	primary := testcluster.Cluster().Nodes[0]
	table := testcluster.NewTable(t, ctx, "hedgefn", "k text PRIMARY KEY")
	fn := table + "_write"
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, `CREATE FUNCTION `+fn+`(key text) RETURNS int
		LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.1); INSERT INTO `+table+` VALUES (key); RETURN 1; END $$`); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	db, c := openPrimaryAndReplica1(t, "hedge_after=1ms", "max_replica_lag=off")
	warm(t, ctx, db)
	// The warm-up reads are pure: those may be hedged to the primary.
	before := hedgesTo(c, primary.Addr())
	for i := range 3 {
		rctx, route := pgreplica.WithRoute(ctx)
		key := fmt.Sprint("k", i)
		if err := db.QueryRowContext(rctx, "SELECT "+fn+"($1)", key).Scan(new(int)); err != nil {
			t.Fatal(err)
		}
		if route.Node() != primary.Addr() || route.Reason() != pgreplica.ReasonReadOnly {
			t.Errorf("SELECT %s(): %s %s; want the primary, re-run after read_only_error", fn, route.Node(), route.Reason())
		}
		var n int
		if err := testcluster.Direct(t, 0).QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE k = $1", key).Scan(&n); err != nil || n != 1 {
			t.Fatalf("rows for %s: %d (%v); want 1", key, n, err)
		}
	}
	if sent := hedgesTo(c, primary.Addr()) - before; sent != 0 {
		t.Fatalf("%d hedges of a possibly-writing text sent to the primary; want none", sent)
	}
}

// A replica-hinted text the classifier knows has effects
// (pg_terminate_backend) is never hedged: it would run on two replicas.
func TestHedgeReplicaHintWithEffectsIsNotHedged(t *testing.T) {
	ctx := context.Background()
	db, c, _ := openToReplica1(t, "hedge_after=1ms", "max_replica_lag=off")
	warm(t, ctx, db)
	// The warm-up reads are pure: those may be hedged.
	before, _ := hedgeStats(c)
	for range 3 {
		rctx, route := pgreplica.WithRoute(ctx)
		var ok bool
		if err := db.QueryRowContext(rctx, "/* pgreplica:replica */ SELECT pg_terminate_backend(0) FROM pg_sleep(0.05)").Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if !testcluster.IsReplicaAddr(route.Node()) || route.Reason() != pgreplica.ReasonHint {
			t.Errorf("hinted read: %s %s; want a replica, hint", route.Node(), route.Reason())
		}
	}
	if sent, _ := hedgeStats(c); sent != before {
		sent -= before
		t.Fatalf("%d hedges of a replica-hinted text with effects; want none", sent)
	}
}

// After a hedge the primary won, the sql.Conn is pinned to the primary,
// and with primary_max_conns=1 its next Exec runs on the connection the
// hedge left it instead of waiting for its own slot.
func TestHedgeWonByPrimaryPinsConnWithoutSelfDeadlock(t *testing.T) {
	ctx := context.Background()
	primary := testcluster.Cluster().Nodes[0]
	db, _ := openPrimaryAndReplica1(t, "hedge_after=1ms", "max_replica_lag=off", "primary_max_conns=1")
	warm(t, ctx, db)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rctx, route := pgreplica.WithRoute(ctx)
	var port int
	if err := conn.QueryRowContext(rctx, slowOnStandby).Scan(&port); err != nil {
		t.Fatal(err)
	}
	if port != primary.Port || route.Reason() != pgreplica.ReasonHedge {
		t.Fatalf("read: %s (%s); want the primary by a hedge", testcluster.Role(port), route.Reason())
	}
	// Generous: a wait for its own slot lasts until the context ends.
	ectx, cancel := context.WithTimeout(rctx, 20*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(ectx, "SELECT 1"); err != nil {
		t.Fatalf("the conn's Exec after the hedge: %v", err)
	}
	for range 3 {
		if port := testcluster.Port(t, rctx, conn); port != primary.Port || route.Reason() != pgreplica.ReasonPinned {
			t.Fatalf("the conn's next read: %s (%s); want the primary, pinned", testcluster.Role(port), route.Reason())
		}
	}
}

// Rows the primary answered are never treated as a replica's, whose lost
// connection loses nothing: when the primary's backend dies after the
// first row and before the end of the result, closing the rows reports it
// (an acknowledged statement is only what the primary completed).
func TestPrimaryHedgeLostConnectionIsReported(t *testing.T) {
	ctx := context.Background()
	primary := testcluster.Cluster().Nodes[0]
	db, _ := openPrimaryAndReplica1(t, "hedge_after=1ms", "max_replica_lag=off")
	warm(t, ctx, db)
	admin := adminConn(t, ctx, 0)
	// Two rows large enough to be sent at once, then a third that waits:
	// the first row reaches the caller while the statement still runs.
	const query = "SELECT inet_server_port(), repeat('x', 100000) FROM generate_series(1, 3) g, " +
		"pg_sleep(CASE WHEN pg_is_in_recovery() OR g = 3 THEN 20 ELSE 0 END)"
	rctx, route := pgreplica.WithRoute(ctx)
	rows, err := db.QueryContext(rctx, query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if route.Node() != primary.Addr() || route.Reason() != pgreplica.ReasonHedge {
		t.Fatalf("read: %s %s; want the primary by a hedge", route.Node(), route.Reason())
	}
	var killed atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var n int
			err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE state = 'active' AND query LIKE '%repeat(''x'', 100000)%' AND pid <> pg_backend_pid()`).Scan(&n)
			if err == nil && n > 0 {
				killed.Store(true)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	var port int
	var s string
	if !rows.Next() {
		t.Fatalf("no first row: %v", rows.Err())
	}
	if err := rows.Scan(&port, &s); err != nil {
		t.Fatal(err)
	}
	err = rows.Close() // what Row.Scan returns after the first row
	wg.Wait()
	if !killed.Load() {
		t.Fatal("the primary's backend was not found to terminate")
	}
	if err == nil {
		t.Fatal("closing rows whose primary backend was terminated mid-result succeeded; want the error")
	}
	t.Logf("close: %v", err)
}

// A losing hedge never reads the caller's arguments after the call
// returned: the caller mutates its map and [][]byte right after its read,
// while the hedge to replica2 (behind 30 ms of latency each way) is still
// preparing its statement. Under -race, a shared argument is a data race
// (or a "concurrent map iteration and map write" crash).
func TestHedgeArgsNotSharedAfterReturn(t *testing.T) {
	ctx := context.Background()
	nodes := testcluster.Cluster().Nodes
	proxy, err := sandbox.NewLatencyProxy(nodes[2].Addr(), 30*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	db, c := openNodes(t, []string{nodes[0].Addr(), nodes[1].Addr(), proxy.Addr()}, "hedge_after=1ms", "max_replica_lag=off")
	t.Cleanup(func() { proxy.Close() })
	testcluster.WaitUntil(t, 10*time.Second, "replica2 usable through the proxy", func() bool {
		return nodeState(c, proxy.Addr()) == pgreplica.StateHealthy
	})
	warm(t, ctx, db)
	for i := range 5 {
		m := map[string]any{"a": 1, "b": []any{"x", 2}}
		bb := [][]byte{[]byte("abc"), []byte("def")}
		// A new text each time: the hedge prepares it on replica2, a round
		// trip through the proxy before it encodes the arguments.
		query := fmt.Sprintf("SELECT inet_server_port(), $1::jsonb IS NOT NULL, cardinality($2::bytea[]) FROM pg_sleep(0.005) /* %d */", i)
		var port, card int
		var ok bool
		if err := db.QueryRowContext(ctx, query, m, bb).Scan(&port, &ok, &card); err != nil {
			t.Fatal(err)
		}
		end := time.Now().Add(300 * time.Millisecond)
		for j := 0; time.Now().Before(end); j++ {
			m[fmt.Sprint(j%16)] = j
			delete(m, "a")
			bb[0][0], bb[1] = byte(j), []byte{byte(j)}
		}
	}
	sent, _ := hedgeStats(c)
	t.Logf("hedges sent %d", sent)
	if sent == 0 {
		t.Fatal("no hedge sent: the test shows nothing")
	}
}

// countingCtx is a long-lived context that counts what is registered on it
// with context.AfterFunc (directly or by a child context) and not yet
// stopped.
type countingCtx struct {
	context.Context
	done chan struct{}
	live atomic.Int64
}

func (c *countingCtx) Done() <-chan struct{} { return c.done }
func (c *countingCtx) Err() error            { return nil }

func (c *countingCtx) AfterFunc(f func()) func() bool {
	c.live.Add(1)
	var once sync.Once
	return func() bool {
		stopped := false
		once.Do(func() { c.live.Add(-1); stopped = true })
		return stopped
	}
}

// A won hedge leaves nothing registered on the caller's context once its
// checkout ended: a long-lived context would otherwise grow by one entry
// per won hedge.
func TestWonHedgeLeavesNothingOnContext(t *testing.T) {
	primary := testcluster.Cluster().Nodes[0]
	db, _ := openPrimaryAndReplica1(t, "hedge_after=1ms", "max_replica_lag=off")
	warm(t, context.Background(), db)
	const reads = 4
	var cctx *countingCtx
	for range reads {
		rctx, route := pgreplica.WithRoute(context.Background())
		// Outermost, so that registrations reach its AfterFunc (a value
		// context in front of it would make them goroutines).
		cctx = &countingCtx{Context: rctx, done: make(chan struct{})}
		var port int
		if err := db.QueryRowContext(cctx, slowOnStandby).Scan(&port); err != nil {
			t.Fatal(err)
		}
		if port != primary.Port || route.Reason() != pgreplica.ReasonHedge {
			t.Fatalf("read: %s (%s); want the primary by a hedge", testcluster.Role(port), route.Reason())
		}
		time.Sleep(200 * time.Millisecond) // past replica1's slow mark
		testcluster.WaitUntil(t, 5*time.Second, "nothing left registered on the caller's context", func() bool {
			return cctx.live.Load() == 0
		})
	}
}
