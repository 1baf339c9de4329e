// Package testcluster gives an integration test package one real primary
// with streaming replicas (from internal/sandbox) for all of its tests.
//
//	func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }
//
// When neither local PostgreSQL binaries nor Docker are available the
// package's tests are skipped with a message saying how to run them, unless
// PGREPLICA_INTEGRATION=require (set by .ci/run), which makes it fail.
package testcluster

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx", for direct connections to one node
	"go.uber.org/goleak"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
)

var cluster *sandbox.Cluster

// Required reports whether integration tests must run (not skip).
func Required() bool { return os.Getenv("PGREPLICA_INTEGRATION") == "require" }

// Run starts the cluster, runs the tests and tears the cluster down.
func Run(m *testing.M, opts sandbox.Options) int {
	// A liveness bound, not a speed one: on two cores shared with other
	// test runs, the Docker backend's docker execs took over 2 minutes to
	// start a cluster that starts in 20 s on an idle machine.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c, err := sandbox.Start(ctx, opts)
	if err != nil {
		if errors.Is(err, sandbox.ErrUnavailable) && !Required() {
			fmt.Println("SKIP integration tests: no PostgreSQL server binaries (apt-get install postgresql) and no Docker daemon.",
				"Install either and run go test ./... again; set PGREPLICA_INTEGRATION=require to make this an error.")
			return 0
		}
		fmt.Fprintln(os.Stderr, "integration cluster:", err)
		return 1
	}
	cluster = c
	code := m.Run()
	if err := c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "closing the integration cluster:", err)
	}
	return code
}

// Cluster is the package's running cluster.
func Cluster() *sandbox.Cluster { return cluster }

// DSN is the cluster's pgreplica DSN with extra query parameters (a=b&c=d).
func DSN(params ...string) string {
	return withParams(cluster.DSN(), params)
}

func withParams(dsn string, params []string) string {
	for _, p := range params {
		sep := "&"
		if !strings.Contains(dsn, "?") {
			sep = "?"
		}
		dsn += sep + p
	}
	return dsn
}

// Open opens a pgreplica *sql.DB on the cluster, closed when t ends; when
// t ends it also checks that db.Close left no goroutine of pgreplica's.
func Open(t testing.TB, params ...string) *sql.DB {
	t.Helper()
	NoLeaks(t)
	db, err := sql.Open("pgreplica", DSN(params...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// OpenVia is Open with addrs (host:port, one per node, primary first)
// listed in the DSN in place of the nodes' own addresses: a node behind a
// sandbox.LatencyProxy, say. Close such a proxy in a cleanup registered
// after OpenVia returns, so that it closes before the leak check runs.
func OpenVia(t testing.TB, addrs []string, params ...string) *sql.DB {
	t.Helper()
	NoLeaks(t)
	db, err := sql.Open("pgreplica", withParams(cluster.DSNVia(addrs...), params))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// OpenConfig opens a pgreplica *sql.DB on the cluster like Open, from the
// Config that the DSN parses to, changed by edit first (a Policy of the
// test's, pool hooks such as AfterConnect).
func OpenConfig(t testing.TB, edit func(*pgreplica.Config), params ...string) *sql.DB {
	t.Helper()
	cfg, err := pgreplica.ParseConfig(DSN(params...))
	if err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	NoLeaks(t)
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db
}

// NoLeaks makes t fail if goroutines started after its first call in t are
// still running once t's later cleanups (such as db.Close) have run. A test
// that opens two DBs checks once, after closing both: checked after the
// first close, the other DB's monitor, still running by design, would count
// as a leak (a probe round's goroutines are short-lived, but a probe stuck
// in a connect on a loaded machine outlasts goleak's retries: seen in
// TestReplicaAtMaxConnections and TestBothReplicasDown).
func NoLeaks(t testing.TB) {
	t.Helper()
	checkedMu.Lock()
	first := !checked[t]
	checked[t] = true
	checkedMu.Unlock()
	if !first {
		return
	}
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		checkedMu.Lock()
		delete(checked, t)
		checkedMu.Unlock()
		if err := goleak.Find(ignore); err != nil {
			t.Errorf("goroutines left after db.Close: %v", err)
		}
	})
}

var (
	checkedMu sync.Mutex
	checked   = map[testing.TB]bool{} // tests whose leak check is registered
)

// Direct opens a plain pgx stdlib *sql.DB on node i alone, closed when t
// ends: what an application would use without pgreplica.
func Direct(t testing.TB, i int) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", cluster.NodeDSN(i))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Querier is what Port needs: a *sql.DB, *sql.Conn or *sql.Tx.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Port returns the port of the server that answered a plain read on q.
func Port(t testing.TB, ctx context.Context, q Querier) int {
	t.Helper()
	var port int
	if err := q.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatal(err)
	}
	return port
}

// IsReplicaAddr reports whether addr (host:port) is one of the replicas the
// cluster started with.
func IsReplicaAddr(addr string) bool {
	for _, n := range cluster.Nodes[1:] {
		if n.Addr() == addr {
			return true
		}
	}
	return false
}

var tableSeq atomic.Int64

// NewTable creates a table named after prefix (unique per call) on the
// primary through a plain pgx connection, waits until the replicas have
// replayed it, and returns its name. columns is the text inside CREATE
// TABLE's parentheses.
func NewTable(t testing.TB, ctx context.Context, prefix, columns string) string {
	t.Helper()
	name := strings.ToLower(prefix) + "_" + time.Now().Format("150405") + "_" + strconv.FormatInt(tableSeq.Add(1), 10)
	if _, err := Direct(t, 0).ExecContext(ctx, "CREATE TABLE "+name+" ("+columns+")"); err != nil {
		t.Fatal(err)
	}
	WaitReplayed(t, ctx)
	return name
}

// WaitReplayed waits until every running replica has replayed the
// primary's current WAL position.
func WaitReplayed(t testing.TB, ctx context.Context) {
	t.Helper()
	if err := cluster.WaitReplayed(ctx); err != nil {
		t.Fatal(err)
	}
}

// WaitReplicaReads waits until every running replica has replayed the
// primary's current WAL position and a plain read of db is served by a
// replica (route reason read). In the default mode (read_your_writes=
// connector) a read after db's own writes goes to the primary until a
// replica is known to have them: a probe tells, or the read asks a replica,
// whose replay may still be short of the primary's insert position (after
// a rollback, whose WAL the primary flushes in its own time). Tests call it
// before checking that a read after such writes goes to a replica; it waits
// as long as that takes, bounded only by ctx.
func WaitReplicaReads(t testing.TB, ctx context.Context, db *sql.DB) {
	t.Helper()
	WaitReplayed(t, ctx)
	for {
		rctx, route := pgreplica.WithRoute(ctx)
		var one int
		if err := db.QueryRowContext(rctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		if route.Reason() == pgreplica.ReasonRead {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("reads of db never returned to the replicas (last: %s for %s)", route.Node(), route.Reason())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// WaitUntil polls cond every 20ms until it holds, failing t after timeout,
// and returns how long it took.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// SyncBuffer is a bytes.Buffer that one goroutine (a logger, a command's
// output) may write while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Role names the node listening on port: "primary", "replica1", …
func Role(port int) string {
	for i, n := range cluster.Nodes {
		if n.Port == port {
			if i == 0 {
				return "primary"
			}
			return fmt.Sprintf("replica%d", i)
		}
	}
	return fmt.Sprintf("unknown port %d", port)
}

// EstablishedClientPorts lists, comma-separated, the local ports of this
// machine's established IPv4 TCP connections to port: with a
// pg_stat_activity count filtered by client_port, it counts only the
// backends whose client still holds its socket (a backend whose client
// closed during a partition lives on until the FIN gets through). Both
// sandbox backends qualify: a Docker node's clients are this machine's
// sockets too, to the container's address and the node's port.
func EstablishedClientPorts(port int) (string, error) {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return "", err
	}
	var ports []string
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "01" { // 01: ESTABLISHED
			continue
		}
		_, remote, _ := strings.Cut(f[2], ":")
		_, local, _ := strings.Cut(f[1], ":")
		if rp, err := strconv.ParseUint(remote, 16, 16); err == nil && int(rp) == port {
			if lp, err := strconv.ParseUint(local, 16, 16); err == nil {
				ports = append(ports, strconv.FormatUint(lp, 10))
			}
		}
	}
	return strings.Join(ports, ","), nil
}
