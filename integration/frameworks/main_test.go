package frameworks

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }

// monitorInterval is slower than the default: on a loaded 2-core machine
// running -race, a probe slower than its timeout would take a node out of
// routing and make routing assertions flaky. Nothing here depends on how
// fast the monitor notices anything.
const monitorInterval = "monitor_interval=2s"

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func primaryPort() int { return testcluster.Cluster().Nodes[0].Port }

func isReplicaPort(port int) bool {
	for _, n := range testcluster.Cluster().Nodes[1:] {
		if n.Port == port {
			return true
		}
	}
	return false
}

// event is one statement a node ran, as pgx's tracer saw it.
type event struct {
	port   int // the node's port
	reason pgreplica.Reason
	routed bool // pgreplica gave a reason (RouteReason)
	sql    string
}

func (e event) String() string {
	return fmt.Sprintf("%s (%s) %q", testcluster.Role(e.port), e.reason, e.sql)
}

// recorder is a pgx.QueryTracer that records every statement with the
// node that ran it and pgreplica's reason. Tests open their *sql.DB with
// it (Config.Tracer) to check where each statement of a framework call
// went, not only the last one.
type recorder struct {
	mu     sync.Mutex
	events []event
}

var _ pgx.QueryTracer = (*recorder)(nil)

func (r *recorder) TraceQueryStart(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	reason, ok := pgreplica.RouteReason(ctx)
	r.mu.Lock()
	r.events = append(r.events, event{port: int(c.Config().Port), reason: reason, routed: ok, sql: d.SQL})
	r.mu.Unlock()
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// mark is a position in the record; since(mark) is what ran after it.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *recorder) since(i int) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.events[i:]...)
}

// open opens a pgreplica *sql.DB on the cluster with a recorder as its
// tracer; both are closed, and checked for leaked goroutines, when t ends.
func open(t *testing.T, params ...string) (*sql.DB, *recorder) {
	t.Helper()
	return openDSN(t, testcluster.DSN(append([]string{monitorInterval}, params...)...))
}

func openDSN(t *testing.T, dsn string) (*sql.DB, *recorder) {
	t.Helper()
	testcluster.NoLeaks(t)
	cfg, err := pgreplica.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg.Tracer = rec
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, rec
}

// onPrimary fails t unless evs is not empty and every statement in it ran
// on the primary.
func onPrimary(t *testing.T, what string, evs []event) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatalf("%s: no statement ran", what)
	}
	for _, e := range evs {
		if e.port != primaryPort() {
			t.Fatalf("%s: %v ran off the primary; all: %v", what, e, evs)
		}
	}
}

// onReplica fails t unless evs is not empty and every statement in it ran
// on one and the same replica.
func onReplica(t *testing.T, what string, evs []event) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatalf("%s: no statement ran", what)
	}
	for _, e := range evs {
		if !isReplicaPort(e.port) || e.port != evs[0].port {
			t.Fatalf("%s: %v is not on one replica; all: %v", what, e, evs)
		}
	}
}

// wantReason fails t unless some statement in evs that contains sqlPart
// was routed for reason.
func wantReason(t *testing.T, what string, evs []event, sqlPart string, reason pgreplica.Reason) {
	t.Helper()
	for _, e := range evs {
		if strings.Contains(e.sql, sqlPart) && e.routed && e.reason == reason {
			return
		}
	}
	t.Fatalf("%s: no statement containing %q routed for %s; all: %v", what, sqlPart, reason, evs)
}

// pgCode is the SQLSTATE of a server error, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// newTable creates a table through a plain connection to the primary and
// waits until the replicas have it.
func newTable(t *testing.T, ctx context.Context, prefix, columns string) string {
	t.Helper()
	return testcluster.NewTable(t, ctx, prefix, columns)
}

// freshDatabase creates an empty database owned by the application role
// and returns a DSN on it listing every node; it is dropped when t ends.
// CREATE DATABASE replicates, so the replicas have it once replayed.
func freshDatabase(t *testing.T, ctx context.Context, prefix string, params ...string) string {
	t.Helper()
	c := testcluster.Cluster()
	name := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano()%1e9)
	if err := c.Exec(ctx, 0, "CREATE DATABASE "+name+" OWNER "+sandbox.DefaultUser); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Exec(ctx, 0, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop %s: %v", name, err)
		}
	})
	testcluster.WaitReplayed(t, ctx)
	u, err := url.Parse(testcluster.DSN(append([]string{monitorInterval}, params...)...))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// queryPort is the port of the node that answers a read on q.
func queryPort(t *testing.T, ctx context.Context, q testcluster.Querier) int {
	t.Helper()
	return testcluster.Port(t, ctx, q)
}
