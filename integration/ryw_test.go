package integration

import (
	"context"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// pauseReplicas stops WAL replay on every replica until t ends: new rows on
// the primary stay invisible there.
func pauseReplicas(t *testing.T, ctx context.Context) {
	t.Helper()
	replicas := testcluster.Cluster().Nodes[1:]
	// One cleanup, registered before the first pause: resume every replica
	// (even one whose pause failed), then wait until they caught up, so the
	// next test starts with replicas that have everything.
	t.Cleanup(func() {
		// Not ctx: it may be cancelled by the time cleanups run.
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, n := range replicas {
			if err := n.ResumeReplay(cctx); err != nil {
				t.Errorf("resume replay: %v", err)
			}
		}
		if err := testcluster.Cluster().WaitReplayed(cctx); err != nil {
			t.Errorf("replicas did not catch up after resuming replay: %v", err)
		}
	})
	for _, n := range replicas {
		if err := n.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// read_your_writes=off: a sql.Conn reads its own writes even while both
// replicas lag without bound, because after its first write it reads from
// the primary; other callers keep reading from the (stale) replicas unless
// they ask for the primary with UsePrimary or a hint. (In the default mode
// the connector's session would send them to the primary too: what the
// pinned sql.Conn does on its own would not show.)
//
// max_replica_lag=off keeps the paused replicas usable: with the default
// 1s limit the monitor would take them out of routing once the insert is
// over a second old, and plain reads would fall back to the primary, which
// would no longer show that the replicas lag.
//
// Hedging is off: each read's route reason is checked, and on a busy
// machine a plain read was hedged ("route reason hedge, want read", a
// concurrent CI pair); a hedge may also be answered by the primary, which
// has the row. Routing is what is tested here, not hedging.
func TestReadYourWritesOnConnWhileReplicasLag(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "ryw", "id int PRIMARY KEY, v text")
	db := openDB(t, "max_replica_lag=off", "read_your_writes=off", "hedge_after=off")
	pauseReplicas(t, ctx)

	count := "SELECT inet_server_port(), count(*) FROM " + table + " WHERE id = 1"
	// read runs query on q and checks the server role, the row count and
	// the route's reason.
	read := func(t *testing.T, what string, ctx context.Context, q rowQuerier, query string, wantPrimary bool, wantRows int, wantReason pgreplica.Reason) {
		t.Helper()
		rctx, route := pgreplica.WithRoute(ctx)
		var port, n int
		if err := q.QueryRowContext(rctx, query).Scan(&port, &n); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if wantPrimary && port != primaryPort() || !wantPrimary && !isReplicaPort(port) {
			t.Fatalf("%s: served by %s (primary wanted: %v)", what, testcluster.Role(port), wantPrimary)
		}
		if n != wantRows {
			t.Fatalf("%s: %s sees %d rows, want %d", what, testcluster.Role(port), n, wantRows)
		}
		if route.Reason() != wantReason {
			t.Fatalf("%s: route reason %s, want %s", what, route.Reason(), wantReason)
		}
	}

	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read(t, "sql.Conn before its write", ctx, c, count, false, 0, pgreplica.ReasonRead)
	if _, err := c.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1, 'mine')"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		read(t, "sql.Conn after its write", ctx, c, count, true, 1, pgreplica.ReasonPinned)
	}
	// Prove the replicas really lag: the plain pool does not see the row.
	for range 10 {
		read(t, "plain read", ctx, db, count, false, 0, pgreplica.ReasonRead)
	}
	read(t, "UsePrimary", pgreplica.UsePrimary(ctx), db, count, true, 1, pgreplica.ReasonUsePrimary)
	read(t, "primary hint", ctx, db, "/* pgreplica:primary */ "+count, true, 1, pgreplica.ReasonHint)
	read(t, "primary hint at the end", ctx, db, count+" /* pgreplica:primary */", true, 1, pgreplica.ReasonHint)
	// The other way: txid_current_if_assigned() is on the classifier's list
	// of functions that keep a text off the standbys, yet harmless there.
	// Unhinted, the text goes to the primary and sees the row; with the
	// replica hint it runs on a replica, which does not have the row yet.
	noTxid := count + " AND txid_current_if_assigned() IS NULL"
	read(t, "classifier", ctx, db, noTxid, true, 1, pgreplica.ReasonClassifier)
	read(t, "replica hint", ctx, db, "/* pgreplica:replica */ "+noTxid, false, 0, pgreplica.ReasonHint)
	read(t, "replica hint as a line comment", ctx, db, noTxid+" -- pgreplica:replica", false, 0, pgreplica.ReasonHint)
}
