package sessions

import (
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// WithMaxLag sets the lag a call accepts: replicas two seconds behind serve
// a read that allows 30s, and not one that allows 100ms, nor one under the
// DSN's default limit of 1s. In the default mode, with the row written by
// another client: a write of db's own would be covered by its connector
// session, which sends the reads to the primary whatever lag they allow.
func TestWithMaxLagPerCall(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "lag", "id int")
	db := testcluster.Open(t, "monitor_interval="+interval.String())
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	pauseReplay(t, ctx, 1, 2)
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	const behind = 2 * time.Second
	lagging := func() bool {
		for _, n := range c.Status().Nodes {
			if n.Role == pgreplica.RoleReplica && n.Lag < behind {
				return false
			}
		}
		return true
	}
	if !eventually(ctx, time.Minute, lagging) {
		t.Fatalf("the replicas never showed a lag of %s: %+v", behind, c.Status().Nodes)
	}
	for _, n := range c.Status().Nodes {
		t.Logf("%s %s: lag %s, %s", n.Addr, n.Role, n.Lag.Round(time.Millisecond), n.State)
	}

	for _, tc := range []struct {
		name      string
		maxLag    time.Duration // 0: no WithMaxLag
		onReplica bool
	}{
		{"WithMaxLag(30s)", 30 * time.Second, true},
		{"WithMaxLag(100ms)", 100 * time.Millisecond, false},
		{"DSN default (1s)", 0, false},
	} {
		for range 10 {
			rctx := ctx
			if tc.maxLag != 0 {
				rctx = pgreplica.WithMaxLag(rctx, tc.maxLag)
			}
			rctx, route := pgreplica.WithRoute(rctx)
			var n int
			if err := db.QueryRowContext(rctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if tc.onReplica {
				if !testcluster.IsReplicaAddr(route.Node()) || n != 0 {
					t.Fatalf("%s: served by %s (%s), %d rows; want a lagging replica, without the row", tc.name, route.Node(), route.Reason(), n)
				}
			} else if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonFallback || n != 1 {
				t.Fatalf("%s: served by %s (%s), %d rows; want the primary as fallback, with the row", tc.name, route.Node(), route.Reason(), n)
			}
		}
	}
}

// WithMaxLag(ctx, 0) means caught up, not "no limit": a paused replica
// serves none of those reads, even with no lag limit in the DSN, and a
// negative bound is taken as 0. Such a read sees a row committed before it
// began (no replica can be known to have what was committed the instant
// the read began: the primary serves it).
func TestWithMaxLagZeroMeansCaughtUp(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "lagzero", "id int")
	db := testcluster.Open(t, dsnParams...) // max_replica_lag=off
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	paused := testcluster.Cluster().Nodes[1]
	pauseReplay(t, ctx, 1)
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	wrote := time.Now()
	behind := func() bool {
		var probed, lagging bool
		for _, n := range c.Status().Nodes {
			switch n.Addr {
			case primaryAddr():
				probed = n.LastProbe.After(wrote)
			case paused.Addr():
				lagging = n.LagBytes > 0
			}
		}
		return probed && lagging
	}
	if !eventually(ctx, time.Minute, behind) {
		t.Fatalf("replica1 never showed as behind: %+v", c.Status().Nodes)
	}
	// Without a bound the paused replica still serves: it is in routing.
	if !eventually(ctx, time.Minute, func() bool { return testcluster.Port(t, ctx, db) == paused.Port }) {
		t.Fatal("the paused replica never served a read without a lag bound")
	}
	for _, d := range []time.Duration{0, -time.Second} {
		for i := range 30 {
			rctx, route := pgreplica.WithRoute(pgreplica.WithMaxLag(ctx, d))
			var port, n int
			if err := db.QueryRowContext(rctx, "SELECT inet_server_port(), count(*) FROM "+table).Scan(&port, &n); err != nil {
				t.Fatal(err)
			}
			if port == paused.Port || n != 1 {
				t.Fatalf("WithMaxLag(%v) read %d: served by %s (%s) with %d rows; want a caught-up node, with the row",
					d, i, testcluster.Role(port), route.Reason(), n)
			}
		}
	}
}
