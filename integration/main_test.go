package integration

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }

// testCtx is a context bounded well inside go test's own timeout, so a
// hung statement fails the test that ran it instead of the whole binary.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openDB opens a pgreplica *sql.DB on the cluster with testcluster.Open
// (closed, and checked for leaked goroutines, when t ends). Its monitor
// probes every 2s rather than every second: a probe that takes longer than
// its timeout (the interval, at least 500ms) takes the node out of routing
// until it answers again, and on a loaded machine running -race a slow
// answer happens, which would send reads elsewhere and make the routing
// assertions flaky. No test here depends on how fast the monitor notices
// anything.
func openDB(t *testing.T, params ...string) *sql.DB {
	t.Helper()
	return testcluster.Open(t, append([]string{monitorInterval}, params...)...)
}

const monitorInterval = "monitor_interval=2s"

func primaryPort() int    { return testcluster.Cluster().Nodes[0].Port }
func primaryAddr() string { return testcluster.Cluster().Nodes[0].Addr() }

// isReplicaPort reports whether port is one of the streaming replicas.
func isReplicaPort(port int) bool {
	for _, n := range testcluster.Cluster().Nodes[1:] {
		if n.Port == port {
			return true
		}
	}
	return false
}

// waitReplayed waits until every running, unpaused replica has replayed
// what the primary has written so far.

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func mustExec(t *testing.T, ctx context.Context, db execer, query string, args ...any) sql.Result {
	t.Helper()
	res, err := db.ExecContext(ctx, query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return res
}

type rowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// queryInt scans the single int64 that query returns.
func queryInt(t *testing.T, ctx context.Context, q rowQuerier, query string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// pgCode is the SQLSTATE of a server error, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// replicaRead says whether a read was routed as a plain replica read: by
// the policy, or by a hedge that another replica answered first (hedging is
// on by default, and a busy machine makes a replica slow enough for one).
func replicaRead(r pgreplica.Reason) bool {
	return r == pgreplica.ReasonRead || r == pgreplica.ReasonHedge
}
