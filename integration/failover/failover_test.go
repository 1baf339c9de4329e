package failover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestStandbyListedFirst lists a standby first, where an old primary that
// rejoined as a standby stays in a DSN nobody edited: each fresh
// connector's first write must go to the real primary, not to the node only
// the DSN's order calls primary (which refuses it with 25006). It runs
// before the failover test, which changes the cluster for good.
func TestStandbyListedFirst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	table := testcluster.NewTable(t, ctx, "sf", "id int PRIMARY KEY")
	addrs := []string{cl.Nodes[1].Addr(), cl.Nodes[0].Addr(), cl.Nodes[2].Addr()}
	failed := 0
	for i := range 10 {
		db := testcluster.OpenVia(t, addrs)
		if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", i); err != nil {
			failed++
			t.Logf("connector %d: %v", i, err)
		}
		db.Close()
	}
	t.Logf("fresh connectors failing their first write with a standby listed first: %d/10", failed)
	if failed != 0 {
		t.Errorf("%d/10 fresh connectors' first write failed with a standby listed first", failed)
	}
}

// TestFirstHostDownReplicaPromoted stops the primary the DSN lists first
// and promotes a replica: fresh connectors, opened with the same DSN, must
// write to the promoted replica and Ping it, without an error, instead of
// taking the DSN's order for the roles.
func TestFirstHostDownReplicaPromoted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	table := testcluster.NewTable(t, ctx, "fo", "id int PRIMARY KEY")
	if err := cl.Nodes[0].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cl.Nodes[1].Promote(ctx); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for i := range 10 {
		db := testcluster.Open(t)
		_, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", i)
		if err == nil {
			err = db.PingContext(ctx)
		}
		if err != nil {
			failed++
			t.Logf("connector %d: %v", i, err)
		}
		db.Close()
	}
	t.Logf("fresh connectors failing a write then Ping: %d/10", failed)
	if failed != 0 {
		t.Errorf("%d/10 fresh connectors failed a write or Ping after the first host went down and a replica was promoted", failed)
	}
	direct := testcluster.Direct(t, 1)
	var n int
	if err := direct.QueryRowContext(ctx, fmt.Sprintf("SELECT count(*) FROM %s", table)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 10-failed {
		t.Errorf("the promoted replica has %d rows, want %d", n, 10-failed)
	}
	testcluster.NoLeaks(t)
}
