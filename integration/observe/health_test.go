package observe

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// nodeDSN is the one-host DSN of node i with the package's parameters,
// changed by edit.
func nodeDSN(t *testing.T, i int, edit func(u *url.URL)) string {
	t.Helper()
	u, err := url.Parse(testcluster.Cluster().NodeDSN(i))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for _, p := range dsnParams {
		k, v, _ := strings.Cut(p, "=")
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	if edit != nil {
		edit(u) // after dsnParams: a test's own keys win
	}
	return u.String()
}

// openDSN opens dsn with plain sql.Open and returns it with its Connector.
func openDSN(t *testing.T, dsn string) *observed {
	t.Helper()
	testcluster.NoLeaks(t)
	db, err := sql.Open("pgreplica", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := pgreplica.ConnectorOf(ctxT(t, 30*time.Second), db)
	if err != nil {
		t.Fatal(err)
	}
	return &observed{db: db, c: c}
}

// serve serves h once and checks the body shows no password.
func serve(t *testing.T, h http.Handler) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	noSecret(t, "the health JSON", rec.Body.String())
	return rec.Code, rec.Body.String()
}

// TestOneHostPrimaryIsHealthy: a DSN naming only the primary is a
// single-node deployment working as designed: healthy, 200, exit 0, and
// its reads are primary reads, not fallbacks.
func TestOneHostPrimaryIsHealthy(t *testing.T) {
	dsn := nodeDSN(t, 0, nil)
	o := openDSN(t, dsn)
	s := o.waitStates(t, healthy)
	if s.Primary != addr(0) || !s.PrimaryUp || s.Degraded || s.Nodes[0].Role != pgreplica.RolePrimary {
		t.Errorf("status = %+v, want the primary up, not degraded", s)
	}
	h, err := pgreplica.HealthHandlerOf(ctxT(t, 30*time.Second), o.db)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := serve(t, h); code != http.StatusOK || !strings.Contains(body, `"status":"healthy"`) {
		t.Errorf("health: %d %s", code, body)
	}
	ctx, route := pgreplica.WithRoute(ctxT(t, 30*time.Second))
	if port := testcluster.Port(t, ctx, o.db); port != testcluster.Cluster().Nodes[0].Port {
		t.Errorf("a read answered by port %d, want the primary", port)
	}
	if route.Reason() != pgreplica.ReasonPrimaryOnly {
		t.Errorf("a read's reason is %s, want %s", route.Reason(), pgreplica.ReasonPrimaryOnly)
	}
	code, out := cliDSN(t, dsn, "status")
	t.Logf("pgreplica status (exit %d):\n%s", code, out)
	if code != 0 || !strings.HasPrefix(out, "cluster healthy") || !strings.Contains(out, "reads go to primary (the DSN names no replica)") {
		t.Errorf("pgreplica status: exit %d\n%s", code, out)
	}
}

// TestOneHostStandbyHasNoPrimary: a DSN naming only a standby has no
// primary, and says so: no_primary, 503, a non-zero exit, the node shown as
// a replica. Writes fail with ErrNoPrimary. With no primary to measure it
// against, nothing bounds how stale the standby is: it is lagging, and a
// read under max_replica_lag fails with ErrNoPrimary too; with
// max_replica_lag=off the standby serves it.
func TestOneHostStandbyHasNoPrimary(t *testing.T) {
	// A short primary_wait: the write and the bounded read wait that long
	// for a primary.
	withKeys := func(kv ...string) func(u *url.URL) {
		return func(u *url.URL) {
			q := u.Query()
			for i := 0; i < len(kv); i += 2 {
				q.Set(kv[i], kv[i+1])
			}
			u.RawQuery = q.Encode()
		}
	}
	dsn := nodeDSN(t, 1, withKeys("primary_wait", "1s"))
	o := openDSN(t, dsn)
	var s pgreplica.Status
	testcluster.WaitUntil(t, 30*time.Second, "the standby is probed and no primary known", func() bool {
		s = o.c.Status()
		return !s.Nodes[0].LastProbe.IsZero() && s.Primary == ""
	})
	if s.PrimaryUp || s.Nodes[0].Role != pgreplica.RoleReplica || s.Nodes[0].State != lagging {
		t.Errorf("status = %+v, want no primary and a lagging replica (its staleness is unknown)", s)
	}
	if code, body := serve(t, pgreplica.HealthHandler(o.c)); code != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"no_primary"`) {
		t.Errorf("health: %d %s, want 503 no_primary", code, body)
	}
	ctx := ctxT(t, 30*time.Second)
	if _, err := o.db.ExecContext(ctx, "CREATE TABLE never_written (x int)"); !errors.Is(err, pgreplica.ErrNoPrimary) {
		t.Errorf("a write got %v, want ErrNoPrimary", err)
	}
	var port int
	if err := o.db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); !errors.Is(err, pgreplica.ErrNoPrimary) {
		t.Errorf("a read under max_replica_lag got port %d, err %v; want ErrNoPrimary", port, err)
	}
	code, out := cliDSN(t, dsn, "status")
	t.Logf("pgreplica status (exit %d):\n%s", code, out)
	if code != 1 || !strings.HasPrefix(out, "cluster no_primary") || !strings.Contains(out, "no node answers as writable") {
		t.Errorf("pgreplica status: exit %d\n%s", code, out)
	}
	rows := strings.Split(out, "\n")
	if len(rows) < 3 {
		t.Fatalf("pgreplica status printed:\n%s", out)
	}
	if col := slices.Index(strings.Fields(rows[1]), "ROLE"); col < 0 || len(strings.Fields(rows[2])) <= col || strings.Fields(rows[2])[col] != pgreplica.RoleReplica {
		t.Errorf("the standby's row does not show role replica:\n%s", out)
	}

	unbounded := openDSN(t, nodeDSN(t, 1, withKeys("primary_wait", "1s", "max_replica_lag", "off")))
	rctx, route := pgreplica.WithRoute(ctx)
	if err := unbounded.db.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&port); err != nil || port != testcluster.Cluster().Nodes[1].Port || route.Reason() != pgreplica.ReasonRead {
		t.Errorf("with max_replica_lag=off a read answered by port %d (%s), err %v; want the standby (read)", port, route.Reason(), err)
		t.Logf("status: %+v", unbounded.c.Status())
	}
}

// closedPort is an address nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// TestDownCauses: Status, the health JSON and `pgreplica status` say why a
// node is down, in a SQLSTATE and a short reason, and never show the
// password, the right one or a wrong one.
func TestDownCauses(t *testing.T) {
	const wrongPassword = "wr0ng-Pa55:w@rd"
	for _, tc := range []struct {
		name, want string
		edit       func(u *url.URL)
	}{
		{"wrong password", "authentication failed (28P01)", func(u *url.URL) {
			u.User = url.UserPassword(u.User.Username(), wrongPassword)
		}},
		{"missing database", "database does not exist (3D000)", func(u *url.URL) { u.Path = "/no_such_database" }},
		{"nobody listens", "connection refused", func(u *url.URL) { u.Host = closedPort(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := nodeDSN(t, 0, tc.edit)
			o := openDSN(t, dsn)
			var s pgreplica.Status
			testcluster.WaitUntil(t, 30*time.Second, "the node is down with a cause", func() bool {
				s = o.c.Status()
				return s.Nodes[0].State == down && s.Nodes[0].Cause != nil
			})
			if got := s.Nodes[0].Cause.String(); got != tc.want {
				t.Errorf("cause = %q, want %q", got, tc.want)
			}
			code, body := serve(t, pgreplica.HealthHandler(o.c))
			if code != http.StatusServiceUnavailable || !strings.Contains(body, fmt.Sprintf(`"reason":%q`, strings.SplitN(tc.want, " (", 2)[0])) {
				t.Errorf("health: %d %s", code, body)
			}
			code, out := cliDSN(t, dsn, "status")
			t.Logf("pgreplica status (exit %d):\n%s", code, out)
			if code != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("pgreplica status: exit %d, want 1 and the cause %q\n%s", code, tc.want, out)
			}
			_, js := cliDSN(t, dsn, "status", "--json")
			for _, text := range []string{body, out, js} {
				if strings.Contains(text, wrongPassword) || strings.Contains(text, url.QueryEscape(wrongPassword)) || strings.Contains(text, "Pa55") {
					t.Errorf("the wrong password is shown:\n%s", text)
				}
			}
		})
	}
}

// TestStoppedReplicaCause: a replica shut down in immediate mode is shown
// down with its cause: its port refuses connections (or, while it shuts
// down, 57P03).
func TestStoppedReplicaCause(t *testing.T) {
	o := open(t)
	o.waitStates(t, healthy, healthy, healthy)
	stop(t, o, 2)
	var s pgreplica.Status
	testcluster.WaitUntil(t, 30*time.Second, "replica 2 is down, refusing connections", func() bool {
		s = o.c.Status()
		return s.Nodes[2].State == down && s.Nodes[2].Cause != nil && s.Nodes[2].Cause.Reason == "connection refused"
	})
	if s.Nodes[0].Cause != nil || s.Nodes[1].Cause != nil {
		t.Errorf("healthy nodes show a cause: %+v %+v", s.Nodes[0].Cause, s.Nodes[1].Cause)
	}
	code, out := cli(t, "status")
	t.Logf("pgreplica status (exit %d):\n%s", code, out)
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, addr(2)+" ") {
			row = l
		}
	}
	if code != 0 || !strings.Contains(row, " down ") || !strings.HasSuffix(row, "connection refused") {
		t.Errorf("pgreplica status: exit %d, row of replica 2 %q", code, row)
	}
}

// TestFullNodeCause: a server that refuses new connections with 53300 (here
// a role's CONNECTION LIMIT 0) is full, not down, and says why.
func TestFullNodeCause(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	cl := testcluster.Cluster()
	const role, rolePassword = "obs_limited", "L1mited-pw"
	if err := cl.Exec(ctx, 0, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' CONNECTION LIMIT 0", role, rolePassword)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Exec(context.Background(), 0, "DROP ROLE IF EXISTS "+role) })
	dsn := nodeDSN(t, 0, func(u *url.URL) { u.User = url.UserPassword(role, rolePassword) })
	o := openDSN(t, dsn)
	var s pgreplica.Status
	testcluster.WaitUntil(t, 30*time.Second, "the node is full with a cause", func() bool {
		s = o.c.Status()
		return s.Nodes[0].State == pgreplica.StateFull && s.Nodes[0].Cause != nil
	})
	if got := s.Nodes[0].Cause.String(); got != "too many connections (53300)" {
		t.Errorf("cause = %q", got)
	}
	_, out := cliDSN(t, dsn, "status")
	t.Logf("pgreplica status:\n%s", out)
	if !strings.Contains(out, " full ") || !strings.Contains(out, "too many connections (53300)") {
		t.Errorf("pgreplica status does not show the node full, with its cause:\n%s", out)
	}
	if strings.Contains(out, rolePassword) {
		t.Errorf("the password is shown:\n%s", out)
	}
}

// TestConnectorOfNeedsNoConnection: with the pool at SetMaxOpenConns(1)
// and its one connection checked out, ConnectorOf and HealthHandlerOf
// still answer (a health check under load must not wait for a connection).
func TestConnectorOfNeedsNoConnection(t *testing.T) {
	db := testcluster.Open(t, dsnParams...)
	db.SetMaxOpenConns(1)
	ctx := ctxT(t, 30*time.Second)
	held, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	testcluster.Port(t, ctx, held)
	// Generous: a ConnectorOf that waits for the connection fails with the
	// deadline; one that needs none returns long before.
	wait := ctxT(t, 10*time.Second)
	c, err := pgreplica.ConnectorOf(wait, db)
	if err != nil {
		t.Fatalf("ConnectorOf with the pool exhausted: %v", err)
	}
	h, err := pgreplica.HealthHandlerOf(wait, db)
	if err != nil {
		t.Fatalf("HealthHandlerOf with the pool exhausted: %v", err)
	}
	o := &observed{db: db, c: c}
	o.waitStates(t, healthy, healthy, healthy)
	if code, body := serve(t, h); code != http.StatusOK {
		t.Errorf("health: %d %s", code, body)
	}
	held.Close()
	db.Close()
	if _, err := pgreplica.ConnectorOf(context.Background(), db); !errors.Is(err, pgreplica.ErrClosed) {
		t.Errorf("ConnectorOf after db.Close: %v, want ErrClosed", err)
	}
}

// TestCrashedReplicaLogsThroughSlogDefault: with plain sql.Open and no
// Logger configured, a replica that crashes (pg_ctl -m immediate) is
// logged through slog.Default(), with its cause and no password.
func TestCrashedReplicaLogsThroughSlogDefault(t *testing.T) {
	logs := &testcluster.SyncBuffer{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewJSONHandler(logs, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })

	db := testcluster.Open(t, dsnParams...)
	c, err := pgreplica.ConnectorOf(ctxT(t, 30*time.Second), db)
	if err != nil {
		t.Fatal(err)
	}
	o := &observed{db: db, c: c}
	o.waitStates(t, healthy, healthy, healthy)
	stop(t, o, 2)
	o.waitStates(t, healthy, healthy, down)
	testcluster.WaitUntil(t, 30*time.Second, "slog.Default() received the node down line", func() bool {
		return strings.Contains(logs.String(), `"msg":"pgreplica: node down","node":"`+addr(2)+`"`)
	})
	t.Logf("logs:\n%s", logs.String())
	noSecret(t, "the logs", logs.String())
}
