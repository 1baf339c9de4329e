package failover

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// The zz tests run last and in order, each on the cluster the previous
// one left: TestFirstHostDownReplicaPromoted leaves Nodes[0] stopped,
// Nodes[1] the primary and Nodes[2] a standby of the stopped node.

// followAndWait points standby at primary and waits until it has replayed
// what primary has now.
func followAndWait(t *testing.T, ctx context.Context, standby, primary *sandbox.Node) {
	t.Helper()
	cl := testcluster.Cluster()
	if err := standby.Follow(ctx, primary); err != nil {
		t.Fatal(err)
	}
	lsnSQL := "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
	want, err := cl.QueryInt(ctx, primary.Index, lsnSQL)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, 2*time.Minute, fmt.Sprintf("node %d replays node %d", standby.Index, primary.Index), func() bool {
		got, err := cl.QueryInt(ctx, standby.Index, "SELECT coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)")
		return err == nil && got >= want
	})
}

// TestWriteRerunAfterDemotion demotes the primary a connector knows (a
// clean stop, a promotion, the old primary back as a standby) while its
// monitor does not probe (monitor_interval=1h): its next write, through
// Exec and through Query (INSERT … RETURNING, as sqlc and ent write), goes
// to the demoted node, which refuses it with 25006 having applied nothing,
// and must run once on the promoted node, with no error for the caller.
func TestWriteRerunAfterDemotion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	old, promoted := cl.Nodes[1], cl.Nodes[2]
	followAndWait(t, ctx, promoted, old)
	table := "rerun_" + time.Now().Format("150405")
	if _, err := testcluster.Direct(t, old.Index).ExecContext(ctx, "CREATE TABLE "+table+" (id int PRIMARY KEY, via text)"); err != nil {
		t.Fatal(err)
	}
	followAndWait(t, ctx, promoted, old) // the table too

	params := []string{"monitor_interval=1h", "max_replica_lag=off", "hedge_after=off"} // a lag bound would probe every max_replica_lag/2
	dbExec := testcluster.Open(t, params...)
	dbQuery := testcluster.Open(t, params...)
	for _, db := range []*sql.DB{dbExec, dbQuery} {
		c := connectorOf(t, db)
		testcluster.WaitUntil(t, time.Minute, "the first round finds the primary", func() bool { return c.Status().Primary == old.Addr() })
	}

	if err := old.StopClean(ctx); err != nil {
		t.Fatal(err)
	}
	if err := promoted.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := old.Rejoin(ctx, promoted); err != nil {
		t.Fatal(err)
	}
	if st := connectorOf(t, dbExec).Status(); st.Primary != old.Addr() {
		t.Fatalf("the connector already follows %q: the test needs it to believe the demoted node is primary", st.Primary)
	}

	rctx, route := pgreplica.WithRoute(ctx)
	if _, err := dbExec.ExecContext(rctx, "INSERT INTO "+table+" VALUES (1, 'exec')"); err != nil {
		t.Errorf("Exec write after the demotion: %v; want it re-run on the promoted node", err)
	} else if route.Node() != promoted.Addr() {
		t.Errorf("Exec write after the demotion reported on %s, want the promoted %s", route.Node(), promoted.Addr())
	}
	var port int
	rctx, route = pgreplica.WithRoute(ctx)
	if err := dbQuery.QueryRowContext(rctx, "INSERT INTO "+table+" VALUES (2, 'query') RETURNING inet_server_port()").Scan(&port); err != nil {
		t.Errorf("INSERT … RETURNING through QueryRow after the demotion: %v; want it re-run on the promoted node", err)
	} else if port != promoted.Port || route.Node() != promoted.Addr() {
		t.Errorf("INSERT … RETURNING after the demotion ran on port %d (reported %s), want the promoted %s", port, route.Node(), promoted.Addr())
	}

	var rows []string
	r, err := testcluster.Direct(t, promoted.Index).QueryContext(ctx, "SELECT id || ':' || via FROM "+table+" ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var s string
		if err := r.Scan(&s); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, s)
	}
	r.Close()
	t.Logf("rows on the promoted node: %v", rows)
	if fmt.Sprint(rows) != "[1:exec 2:query]" {
		t.Errorf("rows on the promoted node: %v, want [1:exec 2:query] (each write once)", rows)
	}
	testcluster.NoLeaks(t)
}
