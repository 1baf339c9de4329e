package integration

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// A replica read whose server connection dies after the row was sent and
// before the end of the result: QueryRow returns the complete row instead
// of database/sql's Row.Scan reporting the lost connection from closing the
// rows (a standby wrote nothing, so nothing unread can be lost). The first
// two rows are larger than the server's 8 kB send buffer, so the first is
// wholly on its way before the third, which waits 30 s while the backend is
// terminated: QueryRow returning long before that (it returns once the
// backend is found and killed) shows it did not wait for the rest, with
// room for a busy machine. (Were the first row still in that buffer, the read would
// fail before its first row and be re-run on the other replica.)
func TestReplicaDyingAfterTheRowStillAnswersQueryRow(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "max_replica_lag=off")
	testcluster.WaitReplayed(t, ctx)
	const tag = "pgreplica-rows-test"
	q := "SELECT inet_server_port(), repeat('x', 20000) /* " + tag + " */ " +
		"UNION ALL SELECT 0, repeat('y', 20000) " +
		"UNION ALL SELECT (SELECT 0 FROM pg_sleep(30)), ''"
	replicas := []*sql.DB{testcluster.Direct(t, 1), testcluster.Direct(t, 2)}
	done := make(chan error, 1)
	var port int
	var big string
	start := time.Now()
	rctx, route := pgreplica.WithRoute(ctx)
	go func() { done <- db.QueryRowContext(rctx, q).Scan(&port, &big) }()

	killed := false
	for deadline := time.Now().Add(20 * time.Second); !killed && time.Now().Before(deadline); {
		for _, direct := range replicas {
			var n int64
			// The read itself: active, its text starting as sent (the kill
			// queries, which mention the tag too, do not).
			err := direct.QueryRowContext(ctx,
				"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT inet_server_port(), repeat(%"+tag+"%' AND pid <> pg_backend_pid() AND now() - query_start > interval '500 ms'").Scan(&n)
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				killed = true
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !killed {
		t.Fatal("the read's backend was not found on a replica")
	}
	if err := <-done; err != nil {
		t.Fatalf("QueryRow = %v after its row arrived, want the row", err)
	}
	if !isReplicaPort(port) || len(big) != 20000 || strings.Trim(big, "x") != "" {
		t.Fatalf("row from %s with %d bytes", testcluster.Role(port), len(big))
	}
	if took := time.Since(start); took > 25*time.Second {
		t.Fatalf("QueryRow took %v (served by %s, %s): it waited for the rest of the result", took, route.Node(), route.Reason())
	}
}
