package failover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestWriteAfterIdleBackendsTerminated: the primary's backends of idle
// pooled connections are terminated (pg_terminate_backend: FATAL 57P01
// and a close, as a switchover's shutdown does to them). The next writes
// must not be sent on those connections, where each would fail with its
// outcome unknown to the caller: they are replaced.
func TestWriteAfterIdleBackendsTerminated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	primary, table := writableTable(t, ctx, "idle")
	db := testcluster.Open(t, "hedge_after=off")
	db.SetMaxIdleConns(4)
	failed := 0
	for round := range 5 {
		// Four idle pooled connections to the primary.
		conns := make(chan struct{})
		done := make(chan error, 4)
		for range 4 {
			go func() {
				tx, err := db.BeginTx(ctx, nil)
				if err == nil {
					_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (0)")
					<-conns
					if err == nil {
						err = tx.Commit()
					}
				}
				done <- err
			}()
		}
		close(conns)
		for range 4 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		// Those backends, not the ones the monitor's probes open after.
		ts, err := cl.QueryInt(ctx, primary, "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
		if err != nil {
			t.Fatal(err)
		}
		old := fmt.Sprintf("FROM pg_stat_activity WHERE usename = 'pgreplica' AND backend_type = 'client backend' AND backend_start < to_timestamp(%d / 1000000.0)", ts)
		if err := cl.Exec(ctx, primary, "SELECT pg_terminate_backend(pid) "+old); err != nil {
			t.Fatal(err)
		}
		testcluster.WaitUntil(t, time.Minute, "the backends are gone", func() bool {
			n, err := cl.QueryInt(ctx, primary, "SELECT count(*) "+old)
			return err == nil && n == 0
		})
		for i := range 4 {
			if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", round*10+i+1); err != nil {
				failed++
				t.Logf("round %d, write %d after the idle backends were terminated: %v", round, i, err)
			}
		}
	}
	t.Logf("writes failing after their idle pooled backends were terminated: %d/20", failed)
	if failed != 0 {
		t.Errorf("%d/20 writes were sent on pooled connections whose backend was gone", failed)
	}
	testcluster.NoLeaks(t)
}
