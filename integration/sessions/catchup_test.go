package sessions

import (
	"context"
	"database/sql"
	"testing"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// A session read right after its write is served by a replica that has
// replayed the write, even though no probe of the monitor has seen that
// yet (its interval here is an hour): the read asks the primary for the
// write's position and a replica for its replay position. With replay
// paused on both replicas the read goes to the primary, and every read
// sees the session's write.
func TestSessionReadServedByCaughtUpReplica(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "catchup", "id bigint PRIMARY KEY")
	db := testcluster.Open(t, "monitor_interval=1h", "max_replica_lag=off")
	// The monitor's first round has run once a plain read reaches a
	// replica: from then on its known positions are an hour old at most.
	if !eventually(ctx, returnBound, func() bool { return readPort(t, ctx, db, table, 0) != primaryPort() }) {
		t.Fatal("plain reads never reached a replica")
	}

	sctx := pgreplica.WithSession(ctx)
	read := func(id int) (found bool, port int) {
		t.Helper()
		rctx, route := pgreplica.WithRoute(sctx)
		var n int
		if err := db.QueryRowContext(rctx, "SELECT count(*), inet_server_port() FROM "+table+" WHERE id = $1", id).Scan(&n, &port); err != nil {
			t.Fatal(err)
		}
		t.Logf("read of %d: %d rows from %d (%v)", id, n, port, route.Reason())
		return n == 1, port
	}

	// Right away: whoever serves it, the read sees the write.
	if _, err := db.ExecContext(sctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if found, _ := read(1); !found {
		t.Fatal("the session's read right after its write did not see it")
	}

	// Replication keeps up (both replicas replayed the write, checked on
	// the servers): a replica serves the read.
	if _, err := db.ExecContext(sctx, "INSERT INTO "+table+" VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	if found, port := read(2); !found || port == primaryPort() {
		t.Fatalf("read after a replayed write: found %v on port %d; want it found on a replica (primary %d)", found, port, primaryPort())
	}

	// Replay paused everywhere: the primary serves it, and it sees it.
	pauseReplay(t, ctx, 1, 2)
	if _, err := db.ExecContext(sctx, "INSERT INTO "+table+" VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	if found, port := read(3); !found || port != primaryPort() {
		t.Fatalf("read with replay paused: found %v on port %d; want it found on the primary %d", found, port, primaryPort())
	}
}

// readPort is the port of the server that serves a plain read of table.
func readPort(t *testing.T, ctx context.Context, db *sql.DB, table string, id int) int {
	t.Helper()
	var n, port int
	if err := db.QueryRowContext(ctx, "SELECT count(*), inet_server_port() FROM "+table+" WHERE id = $1", id).Scan(&n, &port); err != nil {
		t.Fatal(err)
	}
	return port
}
