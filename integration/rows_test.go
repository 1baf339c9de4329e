package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// A replica read whose server connection dies after the row was sent and
// before the end of the result: QueryRow returns the complete row instead
// of database/sql's Row.Scan reporting the lost connection from closing the
// rows (a standby wrote nothing, so nothing unread can be lost). The first
// row is larger than the server's send buffer, so it reaches the client at
// once; the second waits 5 s, during which the backend is terminated.
func TestReplicaDyingAfterTheRowStillAnswersQueryRow(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "max_replica_lag=off")
	testcluster.WaitReplayed(t, ctx)
	const tag = "pgreplica-rows-test"
	q := "SELECT inet_server_port(), repeat('x', 20000) /* " + tag + " */ " +
		"UNION ALL SELECT (SELECT 0 FROM pg_sleep(5)), ''"
	replicas := []int{1, 2}
	done := make(chan error, 1)
	var port int
	var big string
	start := time.Now()
	go func() { done <- db.QueryRowContext(ctx, q).Scan(&port, &big) }()

	killed := false
	for deadline := time.Now().Add(4 * time.Second); !killed && time.Now().Before(deadline); {
		for _, i := range replicas {
			var n int64
			err := testcluster.Direct(t, i).QueryRowContext(ctx,
				"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%"+tag+"%' AND pid <> pg_backend_pid() AND now() - query_start > interval '500 ms'").Scan(&n)
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
	if took := time.Since(start); took > 4500*time.Millisecond {
		t.Fatalf("QueryRow took %v: it waited for the rest of the result", took)
	}
}
