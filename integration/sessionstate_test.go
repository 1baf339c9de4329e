package integration

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"testing"

	"github.com/pgreplica/pgreplica"
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

// Session state set by one checkout does not reach the next user of the
// same physical connection: with primary_max_conns=1 every checkout gets
// the one server connection to the primary, so the next user would see
// whatever the last left behind. pgreplica resets it (the backend pid stays
// the same: no reconnect) because the checkout ran statements that change
// session state.
//
// How the cost of that reset is measured: pg_stat_statements needs
// shared_preload_libraries, which the sandbox does not load, and counters
// such as pg_stat_database.xact_commit are unsound here: PostgreSQL 15
// flushes backend statistics in batches up to a second or more late, and
// the monitor's probes (and other tests' connections) commit transactions
// in the same database at any time. Instead the test reads pg_stat_activity.query of the backend from
// another connection once the checkout has ended: it holds the text of the
// last statement that backend received, and it is set synchronously when
// the statement starts. After a clean checkout it must still be the
// user's own last statement (no statement followed: no extra round trip);
// after a dirty one it is the reset.
func TestSessionStateDoesNotLeakToNextCheckout(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "primary_max_conns=1")
	direct := testcluster.Direct(t, 0)
	onPrimary := pgreplica.UsePrimary(ctx)

	// A baseline from a clean checkout.
	base := readBackendState(t, onPrimary, db)
	if base.tempTable || base.listening != 0 || base.preparedSQL != 0 || base.appName == "leak" {
		t.Fatalf("a fresh connection already has state: %+v", base)
	}

	t.Run("clean checkouts cost no extra round trip", func(t *testing.T) {
		for i := range 5 {
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close() // a no-op once closed below
			q := "SELECT pg_backend_pid(), 'clean checkout " + strconv.Itoa(i) + "'"
			var pid int
			var tag string
			if err := c.QueryRowContext(onPrimary, q).Scan(&pid, &tag); err != nil {
				t.Fatal(err)
			}
			if pid != base.pid {
				t.Fatalf("checkout %d got backend %d, want the pool's only connection %d", i, pid, base.pid)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if last := lastStatement(t, ctx, direct, pid); last != q {
				t.Fatalf("after a clean checkout the backend's last statement is %q, want the user's own %q", last, q)
			}
		}
	})

	t.Run("dirty checkout is reset, not reconnected", func(t *testing.T) {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // a no-op once closed below
		for _, s := range []string{
			"SET application_name = 'leak'",
			"SET search_path TO leak_schema, public",
			"CREATE TEMP TABLE leak_tmp (x int)",
			"LISTEN leak_ch",
		} {
			if _, err := c.ExecContext(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
		var locked string
		if err := c.QueryRowContext(ctx, "SELECT pg_advisory_lock(42)::text").Scan(&locked); err != nil {
			t.Fatal(err)
		}
		dirty := readBackendState(t, ctx, c)
		if dirty.pid != base.pid || dirty.appName != "leak" || !strings.HasPrefix(dirty.searchPath, "leak_schema") ||
			!dirty.tempTable || dirty.listening != 1 {
			t.Fatalf("the session state did not take: %+v", dirty)
		}
		if n := advisoryHolders(t, ctx, direct, 42); n != 1 {
			t.Fatalf("advisory lock 42 held by %d sessions, want 1", n)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		last := lastStatement(t, ctx, direct, base.pid)
		if last == backendStateSQL {
			t.Fatal("no statement followed the dirty checkout: its session state was not reset")
		}
		t.Logf("statement run after the dirty checkout: %s", last)

		// The lock is free for others at once.
		if n := advisoryHolders(t, ctx, direct, 42); n != 0 {
			t.Fatalf("advisory lock 42 still held by %d sessions after the checkout ended", n)
		}
		other, err := direct.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		var got bool
		if err := other.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(42)").Scan(&got); err != nil || !got {
			t.Fatalf("another session could not take advisory lock 42: %v %v", got, err)
		}
		if _, err := other.ExecContext(ctx, "SELECT pg_advisory_unlock(42)"); err != nil {
			t.Fatal(err)
		}

		// The next user, through a sql.Conn and through the plain pool.
		c2, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		next := readBackendState(t, onPrimary, c2)
		c2.Close()
		if next != base {
			t.Fatalf("next checkout sees %+v, want the fresh state %+v", next, base)
		}
		if again := readBackendState(t, onPrimary, db); again != base {
			t.Fatalf("next plain read sees %+v, want %+v", again, base)
		}
	})

	t.Run("SQL PREPARE closes the connection", func(t *testing.T) {
		// A reset cannot drop statements prepared in SQL without breaking
		// pgx's own cache (DEALLOCATE ALL), so such a connection is closed.
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.ExecContext(ctx, "PREPARE leak_stmt AS SELECT 1"); err != nil {
			t.Fatal(err)
		}
		before := readBackendState(t, ctx, c)
		if before.preparedSQL != 1 {
			t.Fatalf("PREPARE did not take: %+v", before)
		}
		c.Close()
		after := readBackendState(t, onPrimary, db)
		if after.preparedSQL != 0 || after.pid == before.pid {
			t.Fatalf("next checkout sees %d SQL-prepared statements on backend %d (was %d)", after.preparedSQL, after.pid, before.pid)
		}
		if n := queryInt(t, ctx, direct, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", before.pid); n != 0 {
			t.Fatalf("backend %d that held the prepared statement is still connected", before.pid)
		}
	})
}

// Session state set on a replica (a hinted set_config) is reset too.
func TestReplicaSessionStateDoesNotLeak(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "replica_max_conns=1")
	testcluster.WaitReplayed(t, ctx)

	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rctx, route := pgreplica.WithRoute(ctx)
	var port, pid int
	var app string
	err = c.QueryRowContext(rctx, "/* pgreplica:replica */ SELECT inet_server_port(), pg_backend_pid(), "+
		"set_config('application_name', 'replica-leak', false)").Scan(&port, &pid, &app)
	if err != nil {
		t.Fatal(err)
	}
	if !isReplicaPort(port) || app != "replica-leak" || route.Reason() != pgreplica.ReasonHint {
		t.Fatalf("hinted set_config ran on %s (%s), returned %q", testcluster.Role(port), route.Reason(), app)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// With one connection per replica, reads on that replica reach the same
	// server connection (same backend pid: it was reset, not replaced).
	sameReplica := 0
	for i := 0; sameReplica < 3; i++ {
		if i == 200 {
			t.Fatalf("200 reads and only %d reached %s", sameReplica, testcluster.Role(port))
		}
		var p, bpid int
		var name string
		if err := db.QueryRowContext(ctx, "SELECT inet_server_port(), pg_backend_pid(), current_setting('application_name')").Scan(&p, &bpid, &name); err != nil {
			t.Fatal(err)
		}
		if name == "replica-leak" {
			t.Fatalf("read %d on %s sees application_name set by an earlier checkout", i, testcluster.Role(p))
		}
		if p == port {
			sameReplica++
			if bpid != pid {
				t.Fatalf("%s: backend %d, want the reset connection %d", testcluster.Role(p), bpid, pid)
			}
		}
	}
}
