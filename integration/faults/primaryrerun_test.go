package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestPrimaryReadRunsAgainWhenItsBackendIsKilled: a read the primary
// serves (here UsePrimary; the default mode's reads after a write take the
// same path) whose backend is terminated before its first row is run again
// on the primary, because its text has no effect wherever it runs; a read
// that may call a function of the user's is not (it may have written), and
// gets the error.
func TestPrimaryReadRunsAgainWhenItsBackendIsKilled(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	db := testcluster.Open(t, killParams)
	admin := adminConn(t, ctx, 0)
	var k killed

	// killWhile runs query on the primary and terminates its backend once
	// pg_stat_activity shows it running; it returns what the read got.
	killWhile := func(query, marker string) (int, error) {
		type result struct {
			port int
			err  error
		}
		done := make(chan result, 1)
		go func() {
			rctx, cancel := context.WithTimeout(pgreplica.UsePrimary(ctx), time.Minute)
			defer cancel()
			var r result
			r.err = db.QueryRowContext(rctx, query).Scan(new(any), &r.port)
			done <- r
		}()
		testcluster.WaitUntil(t, time.Minute, "the read running on the primary", func() bool {
			return terminate(t, ctx, admin, &k, "query LIKE '%"+marker+"%' AND query NOT LIKE '%pg_stat_activity%'") > 0
		})
		r := <-done
		return r.port, r.err
	}

	port, err := killWhile("SELECT pg_sleep(2) /* rerun-pure */, inet_server_port()", "rerun-pure")
	if err != nil || port != cl.Nodes[0].Port {
		t.Fatalf("a pure read whose primary backend was terminated: port %d, err %v; want it run again on the primary", port, err)
	}

	// A function of the user's: it may have written before the kill.
	if err := cl.Exec(ctx, 0, "CREATE OR REPLACE FUNCTION rerun_sleep() RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(2)'; GRANT EXECUTE ON FUNCTION rerun_sleep() TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	_, err = killWhile("SELECT rerun_sleep() /* rerun-fn */, inet_server_port()", "rerun-fn")
	if err == nil || !strings.Contains(err.Error(), "57P01") {
		t.Fatalf("a read calling a user function whose backend was terminated got %v; want the termination (57P01), not a re-run", err)
	}
}
