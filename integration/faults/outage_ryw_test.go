package faults

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// The default mode (read_your_writes=connector) while the primary is down
// (pg_ctl -m immediate): a *sql.DB whose writes a probe of the primary
// covered before the stop keeps reading from the replicas that replayed
// them; one whose last write no probe covered cannot tell which replica
// has it (asynchronous replication may have lost it), so its reads go to
// the primary: they wait for it up to primary_wait, as writes do, and then
// fail with ErrNoPrimary, until the primary is back. With
// read_your_writes=off both would read from the replicas.
func TestDefaultModeReadsWhilePrimaryDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	primary := cl.Nodes[0]
	table := testcluster.NewTable(t, ctx, "outage", "id int")
	// covered: probes every 200ms. uncovered: one probe round when opened,
	// the next an hour later, so no probe follows its write.
	covered := testcluster.Open(t, monitorParams, "hedge_after=off")
	// A short primary_wait: each of its reads below waits that long.
	uncovered := testcluster.Open(t, "monitor_interval=1h", "hedge_after=off", "primary_wait=1s")
	for _, c := range []*pgreplica.Connector{connector(t, covered), connector(t, uncovered)} {
		for _, n := range cl.Nodes {
			testcluster.WaitUntil(t, 30*time.Second, n.Addr()+" probed healthy", func() bool { return nodeState(c, n.Addr()) == pgreplica.StateHealthy })
		}
	}
	for id, db := range map[int]*sql.DB{1: covered, 2: uncovered} {
		if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", id); err != nil {
			t.Fatal(err)
		}
	}
	wrote := time.Now()
	cc := connector(t, covered)
	testcluster.WaitUntil(t, time.Minute, "a probe of the primary after the writes", func() bool {
		for _, n := range cc.Status().Nodes {
			if n.Addr == primary.Addr() {
				return n.LastProbe.After(wrote)
			}
		}
		return false
	})
	testcluster.WaitReplayed(t, ctx)

	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Start(context.Background()) })
	count := "SELECT inet_server_port(), count(*) FROM " + table + " WHERE id = $1"

	// covered: the replicas serve it, with its row. Liveness: the monitor
	// must first see the primary gone, which is no part of this test.
	testcluster.WaitUntil(t, time.Minute, "covered's reads on a replica", func() bool {
		var port, n int
		return covered.QueryRowContext(ctx, count, 1).Scan(&port, &n) == nil && port != primary.Port
	})
	for i := range 10 {
		var port, n int
		if err := covered.QueryRowContext(ctx, count, 1).Scan(&port, &n); err != nil || port == primary.Port || n != 1 {
			t.Fatalf("covered, read %d with the primary down: %v, %s, %d rows; want a replica with the row", i, err, testcluster.Role(port), n)
		}
	}
	// uncovered: to the primary for its session, which is down: the read
	// waits primary_wait for one, then fails.
	for i := range 3 {
		rctx, route := pgreplica.WithRoute(ctx)
		var port, n int
		err := uncovered.QueryRowContext(rctx, count, 2).Scan(&port, &n)
		if !errors.Is(err, pgreplica.ErrNoPrimary) || route.Node() != primary.Addr() || route.Reason() != pgreplica.ReasonSession {
			t.Fatalf("uncovered, read %d with the primary down: %v from %s (%s), %d rows; want ErrNoPrimary, for session, recorded against the primary", i, err, route.Node(), route.Reason(), n)
		}
	}

	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, time.Minute, "uncovered reads its row once the primary is back", func() bool {
		var port, n int
		return uncovered.QueryRowContext(ctx, count, 2).Scan(&port, &n) == nil && n == 1
	})
	testcluster.WaitReplayed(t, ctx)
}
