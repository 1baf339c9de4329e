package timeline

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

const interval = 100 * time.Millisecond

func connector(t *testing.T, db *sql.DB) *pgreplica.Connector {
	t.Helper()
	c, err := pgreplica.ConnectorOf(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func nodeStatus(c *pgreplica.Connector, addr string) pgreplica.NodeStatus {
	for _, n := range c.Status().Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return pgreplica.NodeStatus{}
}

// waitRounds returns once the monitor finished two probe rounds that began
// after the call: what one round learnt is then applied everywhere.
func waitRounds(t *testing.T, c *pgreplica.Connector, addr string) {
	t.Helper()
	for range 2 {
		since := time.Now()
		testcluster.WaitUntil(t, time.Minute, "a probe round", func() bool {
			return nodeStatus(c, addr).LastProbe.After(since)
		})
	}
}

// TestReplicaLeftOnTheOldTimeline fails the primary over to replica2 while
// replica1 keeps following the stopped primary: its WAL position looks
// close to the new primary's, but it is on the old timeline and will never
// receive another write. No read may be served by it, whatever the lag
// bound (there is none here), until it follows the new primary; the
// connector that watched the failover and one opened after it agree.
func TestReplicaLeftOnTheOldTimeline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	r1, r2 := cl.Nodes[1], cl.Nodes[2]
	params := []string{"monitor_interval=" + interval.String(), "max_replica_lag=off"}
	db := testcluster.Open(t, params...)
	c := connector(t, db)
	table := testcluster.NewTable(t, ctx, "tl", "id int")
	if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	testcluster.WaitUntil(t, time.Minute, "replica1 serves reads before the failover", func() bool {
		return testcluster.Port(t, ctx, db) == r1.Port
	})

	if err := cl.Nodes[0].StopClean(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, time.Minute, "the connector follows the promoted replica2", func() bool {
		return c.Status().Primary == r2.Addr()
	})
	waitRounds(t, c, r2.Addr())
	sctx := pgreplica.WithSession(ctx)
	if _, err := db.ExecContext(sctx, "INSERT INTO "+table+" VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	// A connector opened after the failover never saw replica1 stream.
	late := testcluster.Open(t, params...)
	lc := connector(t, late)
	testcluster.WaitUntil(t, time.Minute, "a new connector finds the promoted replica2", func() bool {
		return lc.Status().Primary == r2.Addr()
	})
	waitRounds(t, lc, r2.Addr())

	for _, tc := range []struct {
		name string
		db   *sql.DB
		c    *pgreplica.Connector
	}{{"watched the failover", db, c}, {"opened after it", late, lc}} {
		for i := range 30 {
			if port := testcluster.Port(t, ctx, tc.db); port == r1.Port {
				t.Fatalf("%s: plain read %d served by replica1, on the dead primary's timeline", tc.name, i)
			}
			if port := testcluster.Port(t, pgreplica.WithMaxLag(ctx, time.Hour), tc.db); port == r1.Port {
				t.Fatalf("%s: read %d allowing an hour of lag served by replica1, on the dead primary's timeline", tc.name, i)
			}
			var port, n int
			if err := tc.db.QueryRowContext(sctx, "SELECT inet_server_port(), (SELECT count(*) FROM "+table+")").Scan(&port, &n); err != nil {
				t.Fatal(err)
			}
			if port == r1.Port || n != 2 {
				t.Fatalf("%s: session read %d served by %s with %d rows, want 2 rows and not replica1", tc.name, i, testcluster.Role(port), n)
			}
		}
		if st := nodeStatus(tc.c, r1.Addr()); st.State != pgreplica.StateLagging {
			t.Fatalf("%s: replica1 on the old timeline has state %s (lag %v), want %s", tc.name, st.State, st.Lag, pgreplica.StateLagging)
		}
	}

	// Once it follows the new primary it is on its timeline and serves again.
	if err := r1.Follow(ctx, r2); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		db   *sql.DB
		c    *pgreplica.Connector
	}{{"watched the failover", db, c}, {"opened after it", late, lc}} {
		took := testcluster.WaitUntil(t, time.Minute, tc.name+": replica1 serves reads again", func() bool {
			return testcluster.Port(t, ctx, tc.db) == r1.Port
		})
		t.Logf("%s: replica1 serves reads %v after it was pointed at the new primary", tc.name, took)
		if st := nodeStatus(tc.c, r1.Addr()); st.State != pgreplica.StateHealthy {
			t.Fatalf("%s: replica1 following the new primary has state %s", tc.name, st.State)
		}
	}
	var n int
	if err := testcluster.Direct(t, 1).QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("replica1 has %d rows (%v), want the new primary's 2", n, err)
	}
}
