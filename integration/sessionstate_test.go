package integration

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// backendState is what one checkout may leave on a server connection.
type backendState struct {
	pid         int
	appName     string
	searchPath  string
	tempTable   bool // leak_tmp is visible
	listening   int  // channels listened on
	preparedSQL int  // statements prepared with SQL PREPARE
}

const backendStateSQL = `SELECT pg_backend_pid(), current_setting('application_name'), current_setting('search_path'),
	to_regclass('pg_temp.leak_tmp') IS NOT NULL,
	(SELECT count(*) FROM pg_listening_channels()),
	(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)`

func readBackendState(t *testing.T, ctx context.Context, q rowQuerier) backendState {
	t.Helper()
	var s backendState
	err := q.QueryRowContext(ctx, backendStateSQL).Scan(&s.pid, &s.appName, &s.searchPath, &s.tempTable, &s.listening, &s.preparedSQL)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// lastStatement is the text of the latest statement the backend pid
// received, as the primary's pg_stat_activity shows it.
func lastStatement(t *testing.T, ctx context.Context, direct *sql.DB, pid int) string {
	t.Helper()
	var q, state string
	if err := direct.QueryRowContext(ctx, "SELECT query, state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&q, &state); err != nil {
		t.Fatalf("backend %d on the primary: %v", pid, err)
	}
	if state != "idle" {
		t.Fatalf("backend %d is %q after its checkout ended, want idle", pid, state)
	}
	return q
}

// advisoryHolders counts the sessions holding advisory lock key on the
// primary, seen from another connection.
func advisoryHolders(t *testing.T, ctx context.Context, direct *sql.DB, key int) int64 {
	t.Helper()
	return queryInt(t, ctx, direct, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid = 0 AND objid = $1 AND objsubid = 1 AND granted`, key)
}

// discardConn ends a sql.Conn and makes database/sql close its driver
// connection instead of pooling it: with pgx as with pgreplica, a
// connection returned to the pool keeps its session state.
func discardConn(c *sql.Conn) {
	_ = c.Raw(func(any) error { return driver.ErrBadConn })
	_ = c.Close()
}

// Session state stays with the database/sql connection that made it, as
// with pgx's own driver: a temporary table created by one db.Exec is there
// at the next db call when the pool has one connection, with one host and
// with replicas (its reads follow it to the primary).
func TestSessionStateStaysWithItsConnAcrossCalls(t *testing.T) {
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		open func(t *testing.T) *sql.DB
	}{
		{"one host", func(t *testing.T) *sql.DB {
			testcluster.NoLeaks(t)
			db, err := sql.Open("pgreplica", testcluster.Cluster().NodeDSN(0))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return db
		}},
		{"with replicas", func(t *testing.T) *sql.DB { return openDB(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := tc.open(t)
			db.SetMaxOpenConns(1)
			mustExec(t, ctx, db, "CREATE TEMP TABLE tmp_kept (x int)")
			mustExec(t, ctx, db, "INSERT INTO tmp_kept VALUES (1), (2)")
			mustExec(t, ctx, db, "SET application_name = 'kept'")
			for i := range 5 {
				rctx, route := pgreplica.WithRoute(ctx)
				var n int
				var app string
				if err := db.QueryRowContext(rctx, "SELECT count(*), current_setting('application_name') FROM tmp_kept").Scan(&n, &app); err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if n != 2 || app != "kept" {
					t.Fatalf("read %d: %d rows, application_name %q; want 2 and kept", i, n, app)
				}
				if route.Node() != primaryAddr() {
					t.Fatalf("read %d went to %s, want the primary that holds the temp table", i, route.Node())
				}
			}
			var pid1, pid2 int
			if err := db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid1); err != nil {
				t.Fatal(err)
			}
			rows, err := db.QueryContext(ctx, "SELECT x FROM tmp_kept ORDER BY x")
			if err != nil {
				t.Fatal(err)
			}
			rows.Close()
			if err := db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
				t.Fatal(err)
			}
			if pid1 != pid2 {
				t.Fatalf("backend changed from %d to %d between calls", pid1, pid2)
			}
		})
	}
}

// A SET, a temp table, a lock or LISTEN on one database/sql connection is
// never seen by another, while it lives or after it is closed; when
// database/sql closes it, its server connection is closed too.
func TestSessionStateIsNeverSeenByAnotherConn(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "primary_max_conns=2")
	direct := testcluster.Direct(t, 0)
	onPrimary := pgreplica.UsePrimary(ctx)

	base := readBackendState(t, onPrimary, db)
	a, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, s := range []string{
		"SET application_name = 'leak'",
		"SET search_path TO leak_schema, public",
		"CREATE TEMP TABLE leak_tmp (x int)",
		"LISTEN leak_ch",
		"PREPARE leak_stmt AS SELECT 1",
	} {
		if _, err := a.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if _, err := a.ExecContext(ctx, "SELECT pg_advisory_lock(42)"); err != nil {
		t.Fatal(err)
	}
	dirty := readBackendState(t, ctx, a)
	if dirty.appName != "leak" || !dirty.tempTable || dirty.listening != 1 || dirty.preparedSQL != 1 {
		t.Fatalf("the session state did not take: %+v", dirty)
	}

	// Another conn, while a lives: the other primary connection, clean.
	b, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	other := readBackendState(t, onPrimary, b)
	b.Close()
	if other.pid == dirty.pid || other.appName == "leak" || other.tempTable || other.listening != 0 || other.preparedSQL != 0 {
		t.Fatalf("another conn sees %+v while the first holds %+v", other, dirty)
	}
	// a's state survives its own later checkouts... (a sql.Conn is one)
	if again := readBackendState(t, ctx, a); again != dirty {
		t.Fatalf("a's own state changed to %+v, was %+v", again, dirty)
	}
	if n := advisoryHolders(t, ctx, direct, 42); n != 1 {
		t.Fatalf("advisory lock 42 held by %d sessions, want 1", n)
	}

	// ... and is gone with it: database/sql closes the conn, pgreplica closes
	// its server connection (lock released, backend gone).
	discardConn(a)
	testcluster.WaitUntil(t, 5*time.Second, "the dirty backend to disconnect", func() bool {
		return queryInt(t, ctx, direct, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", dirty.pid) == 0
	})
	if n := advisoryHolders(t, ctx, direct, 42); n != 0 {
		t.Fatalf("advisory lock 42 still held by %d sessions", n)
	}
	for i := range 5 {
		st := readBackendState(t, onPrimary, db)
		if st.appName == "leak" || st.tempTable || st.listening != 0 || st.preparedSQL != 0 || st.searchPath != base.searchPath {
			t.Fatalf("read %d after the conn closed sees %+v", i, st)
		}
	}
}

// A clean checkout pays nothing: no statement follows the user's own on
// the server connection (pg_stat_activity.query keeps the last one).
func TestCleanCheckoutsCostNoExtraRoundTrip(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "primary_max_conns=1")
	direct := testcluster.Direct(t, 0)
	onPrimary := pgreplica.UsePrimary(ctx)
	for i := range 5 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		q := "SELECT pg_backend_pid(), 'clean checkout " + strconv.Itoa(i) + "'"
		var pid int
		var tag string
		if err := c.QueryRowContext(onPrimary, q).Scan(&pid, &tag); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if last := lastStatement(t, ctx, direct, pid); last != q {
			t.Fatalf("after a clean checkout the backend's last statement is %q, want the user's own %q", last, q)
		}
	}
}

// What the node pool's AfterConnect set up (here a role under row-level
// security) is never undone: before, a checkout that took and released an
// advisory lock made pgreplica reset the connection with SET SESSION
// AUTHORIZATION DEFAULT, and the next user read every row as the login
// role.
func TestAfterConnectStateIsNeverLost(t *testing.T) {
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	user := sandbox.DefaultUser
	if err := cl.Exec(ctx, 0, `DO $$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_restricted') THEN CREATE ROLE app_restricted NOLOGIN; END IF;
	END $$; GRANT app_restricted TO `+user); err != nil {
		t.Fatal(err)
	}
	owner := openDB(t)
	table := testcluster.NewTable(t, ctx, "rls", "owner text, v int")
	mustExec(t, ctx, owner, "INSERT INTO "+table+" VALUES ('restricted', 1), ('other', 2), ('other', 3)")
	mustExec(t, ctx, owner, "ALTER TABLE "+table+" ENABLE ROW LEVEL SECURITY")
	mustExec(t, ctx, owner, "CREATE POLICY restricted_rows ON "+table+" TO app_restricted USING (owner = 'restricted')")
	mustExec(t, ctx, owner, "GRANT SELECT ON "+table+" TO app_restricted")
	testcluster.WaitReplayed(t, ctx)

	db := testcluster.OpenConfig(t, func(cfg *pgreplica.Config) {
		for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
			pc.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
				_, err := c.Exec(ctx, "SET ROLE app_restricted")
				return err
			}
		}
	}, monitorInterval, "primary_max_conns=1", "replica_max_conns=1")

	visible := func(what string, q testcluster.Querier, ctx context.Context) {
		t.Helper()
		var n int
		var role string
		if err := q.QueryRowContext(ctx, "SELECT count(*), current_user FROM "+table).Scan(&n, &role); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if n != 1 || role != "app_restricted" {
			t.Fatalf("%s: %d rows visible as %s, want 1 as app_restricted", what, n, role)
		}
	}
	visible("first read", db, ctx)
	visible("first primary read", db, pgreplica.UsePrimary(ctx))

	// A dirty checkout: a session advisory lock, taken and released.
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, "SELECT pg_advisory_lock(7)"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, "SELECT pg_advisory_unlock(7)"); err != nil {
		t.Fatal(err)
	}
	visible("on the dirty conn", c, ctx)
	c.Close() // back to database/sql's pool, as with pgx
	for i := range 10 {
		visible("after the dirty checkout (primary) "+strconv.Itoa(i), db, pgreplica.UsePrimary(ctx))
		visible("after the dirty checkout "+strconv.Itoa(i), db, ctx)
	}
	// Closed for good: the next user of the primary gets a new connection,
	// set up by AfterConnect again.
	c, err = db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	discardConn(c)
	for i := range 10 {
		visible("after the dirty conn closed (primary) "+strconv.Itoa(i), db, pgreplica.UsePrimary(ctx))
	}
}

// Many conns holding session state: the primary pool's cap holds, and a
// statement never waits forever for a connection that an idle conn holds
// for its session (database/sql keeps up to SetMaxIdleConns of them), at
// any pool size, nor does SessionToken asking the primary for a position.
func TestPoolCapHoldsWithManyDirtyConns(t *testing.T) {
	// With one connection every SET waits for another conn's: fewer rounds.
	for _, tc := range []struct{ poolCap, rounds int }{{1, 3}, {3, 8}} {
		t.Run("primary_max_conns="+strconv.Itoa(tc.poolCap), func(t *testing.T) { testPoolCapWithDirtyConns(t, tc.poolCap, tc.rounds) })
	}
}

func testPoolCapWithDirtyConns(t *testing.T, poolCap, rounds int) {
	ctx := testCtx(t)
	// A monitor interval beyond the test: a session's write stays pending
	// until SessionToken asks the primary.
	db := openDB(t, "primary_max_conns="+strconv.Itoa(poolCap), "application_name=dirty_cap", "monitor_interval=1h")
	db.SetMaxIdleConns(20)
	direct := testcluster.Direct(t, 0)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	var maxSeen atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var n int64
			if err := direct.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dirty_cap' AND query NOT LIKE 'SELECT pg_is_in_recovery()%' AND query <> ''" /* not the monitor's probe, nor a probe connection being opened again */).Scan(&n); err == nil {
				for {
					cur := maxSeen.Load()
					if n <= cur || maxSeen.CompareAndSwap(cur, n) {
						break
					}
				}
			}
		}
	}()
	for g := range 12 {
		wg.Go(func() {
			for i := range rounds {
				// Generous: with one connection, each SET waits for the
				// others' on a loaded machine; a deadlock waits forever.
				sctx, cancel := context.WithTimeout(ctx, time.Minute)
				c, err := db.Conn(sctx)
				if err != nil {
					errs <- err
					cancel()
					return
				}
				tag := fmt.Sprintf("g%d-%d", g, i)
				if _, err := c.ExecContext(sctx, "SET search_path TO \""+tag+"\", public"); err != nil {
					errs <- fmt.Errorf("%s: SET: %w", tag, err)
				} else {
					var sp string
					if err := c.QueryRowContext(sctx, "SELECT current_setting('search_path')").Scan(&sp); err != nil {
						errs <- fmt.Errorf("%s: read: %w", tag, err)
					} else if !strings.Contains(sp, tag) {
						errs <- fmt.Errorf("%s: search_path %q", tag, sp)
					}
				}
				c.Close()
				cancel()
			}
		})
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := maxSeen.Load(); m > int64(poolCap) {
		t.Fatalf("%d server connections seen on the primary, pool cap is %d", m, poolCap)
	}
	// Plain statements still run, while idle conns hold sessions.
	for i := range 10 {
		if _, err := db.ExecContext(ctx, "SELECT 1"); err != nil {
			t.Fatalf("exec %d: %v", i, err)
		}
	}

	// SessionToken for a session whose write is pending asks the primary,
	// while idle conns hold every primary connection for their sessions: it
	// takes one of them too, instead of waiting in vain and handing out a
	// token that sends the session's reads to the primary.
	table := testcluster.NewTable(t, ctx, "dirty_tok", "id int")
	sctx := pgreplica.WithSession(ctx)
	if _, err := db.ExecContext(sctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	parkDirtyConns(t, ctx, db, poolCap)
	tctx, cancel := context.WithTimeout(sctx, 20*time.Second)
	defer cancel()
	if tok := pgreplica.SessionToken(tctx); tok == "" || tok == "1.ffffffffffffffff" {
		t.Fatalf("SessionToken with every primary connection held by idle sessions = %q, want a WAL position", tok)
	}
}

// parkDirtyConns leaves n database/sql connections idle, each holding a
// primary connection for its session.
func parkDirtyConns(t *testing.T, ctx context.Context, db *sql.DB, n int) {
	t.Helper()
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		if _, err := c.ExecContext(ctx, "SET application_name = 'dirty_cap'"); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

// db.Prepare reports invalid SQL at once, as pgx does; valid statements
// prepare without pinning, and still route per execution.
func TestPrepareReportsErrorsAtPrepare(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	for _, bad := range []struct{ sql, code string }{
		{"SELEC 1", "42601"},
		{"SELECT no_such_column FROM pg_class", "42703"},
		{"SELECT * FROM no_such_table_xyz", "42P01"},
		{"INSERT INTO no_such_table_xyz VALUES (1)", "42P01"},
	} {
		st, err := db.PrepareContext(ctx, bad.sql)
		if err == nil {
			st.Close()
			t.Fatalf("Prepare(%q) succeeded, want %s", bad.sql, bad.code)
		}
		if got := pgCode(err); got != bad.code {
			t.Fatalf("Prepare(%q) = %v, want SQLSTATE %s", bad.sql, err, bad.code)
		}
	}
	st, err := db.PrepareContext(ctx, "SELECT inet_server_port()")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	testcluster.WaitReplayed(t, ctx)
	replicas := 0
	for range 10 {
		var port int
		if err := st.QueryRowContext(ctx).Scan(&port); err != nil {
			t.Fatal(err)
		}
		if isReplicaPort(port) {
			replicas++
		}
	}
	if replicas != 10 {
		t.Fatalf("%d of 10 executions of a prepared read ran on a replica", replicas)
	}
	// Inside a transaction, Prepare checks on the transaction's node.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	mustExec(t, ctx, tx, "CREATE TEMP TABLE prep_tmp (x int)")
	if _, err := tx.PrepareContext(ctx, "SELECT x FROM prep_tmp"); err != nil {
		t.Fatalf("Prepare in the transaction that created the table: %v", err)
	}
}

// A statement that changes session state runs on the primary, where the
// conn keeps it, even when a hint asks for a replica: pooled replica
// connections never carry one user's settings to the next.
func TestSessionStateIgnoresReplicaHint(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "replica_max_conns=1")
	testcluster.WaitReplayed(t, ctx)
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rctx, route := pgreplica.WithRoute(ctx)
	var port int
	var app string
	err = c.QueryRowContext(rctx, "/* pgreplica:replica */ SELECT coalesce(inet_server_port(), 0), "+
		"set_config('application_name', 'replica-leak', false)").Scan(&port, &app)
	if err != nil {
		t.Fatal(err)
	}
	if port != primaryPort() || app != "replica-leak" || route.Reason() != pgreplica.ReasonClassifier {
		t.Fatalf("hinted set_config ran on %s (%s), returned %q; want the primary for reason classifier", testcluster.Role(port), route.Reason(), app)
	}
	discardConn(c)
	for i := range 40 {
		var p int
		var name string
		if err := db.QueryRowContext(ctx, "SELECT inet_server_port(), current_setting('application_name')").Scan(&p, &name); err != nil {
			t.Fatal(err)
		}
		if name == "replica-leak" {
			t.Fatalf("read %d on %s sees application_name set by an earlier conn", i, testcluster.Role(p))
		}
	}
}
