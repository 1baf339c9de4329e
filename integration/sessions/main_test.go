package sessions

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) {
	sqlx.BindDriver("pgreplica", sqlx.DOLLAR)
	os.Exit(testcluster.Run(m, sandbox.Options{}))
}

// interval is the monitor interval of every *sql.DB these tests open: the
// time a session needs to return to the replicas is a few of them.
const interval = 100 * time.Millisecond

// dsnParams are the DSN options of the tests that pause replay: without a
// lag limit a paused replica stays usable for reads outside a session, so
// only the session keeps its reads away from it.
var dsnParams = []string{"monitor_interval=" + interval.String(), "max_replica_lag=off"}

// rywOff is the DSN key of the tests whose point is what a read does
// outside the connector's session (the default, read_your_writes=connector):
// with it off, a read without WithSession, token or cookie goes to a replica
// whatever this *sql.DB wrote, so what the session alone carries shows.
const rywOff = "read_your_writes=off"

// returnBound is how long a session may take to read from a replica again
// once one has replayed its writes: a probe of the primary must start
// after the write and a probe of the replica must see it replayed, each at
// most an interval away. What is tested is that the reads come back, not
// how fast (the tests log how long it took): the 10 s of room is for a
// machine whose other tests delay the probes (a second was not always
// enough with two cores shared by several test runs).
const returnBound = 5*interval + 10*time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func primaryAddr() string { return testcluster.Cluster().Nodes[0].Addr() }
func primaryPort() int    { return testcluster.Cluster().Nodes[0].Port }

// pauseReplay stops WAL replay on the given replicas (1-based, as in
// Cluster.Nodes) until resume is called or t ends, whichever is first.
func pauseReplay(t *testing.T, ctx context.Context, replicas ...int) (resume func()) {
	t.Helper()
	nodes := testcluster.Cluster().Nodes
	resumed := false
	resume = func() {
		if resumed {
			return
		}
		resumed = true
		// Not ctx: it may be over by the time cleanups run.
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, i := range replicas {
			if err := nodes[i].ResumeReplay(cctx); err != nil {
				t.Errorf("resume replay: %v", err)
			}
		}
	}
	t.Cleanup(func() {
		resume()
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := testcluster.Cluster().WaitReplayed(cctx); err != nil {
			t.Errorf("replicas did not catch up after resuming replay: %v", err)
		}
	})
	for _, i := range replicas {
		if err := nodes[i].PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return resume
}

// eventually polls check every 10ms until it returns true or d has passed
// (false).
func eventually(ctx context.Context, d time.Duration, check func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if check() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}
