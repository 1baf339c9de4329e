package integration

import (
	"context"
	"database/sql"
	"testing"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// wantPrimary fails t unless route says the primary served the statement
// for reason want.
func wantPrimary(t *testing.T, what string, route *pgreplica.Route, want pgreplica.Reason) {
	t.Helper()
	if route.Node() != primaryAddr() || route.Reason() != want {
		t.Fatalf("%s: route %s %s, want primary %s for reason %s", what, route.Node(), route.Reason(), primaryAddr(), want)
	}
}

// Every form of statement that writes or locks succeeds, which a hot
// standby would refuse, and its effect is on the primary afterwards. The
// statements carry inet_server_port() where they can return a row, so the
// test sees which server ran them, not only what pgreplica reports.
func TestWritesThroughEveryFormLandOnPrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	direct := testcluster.Direct(t, 0)
	table := testcluster.NewTable(t, ctx, "w", "id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0")
	// MERGE is PostgreSQL 15's: on 13 (CI's bullseye image) its cases are
	// skipped.
	var version int
	if err := direct.QueryRowContext(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	hasMerge := version >= 150000
	skipWithoutMerge := func(t *testing.T) {
		if !hasMerge {
			t.Skipf("MERGE needs PostgreSQL 15; server_version_num is %d", version)
		}
	}
	seq := table + "_seq"
	mustExec(t, ctx, direct, "CREATE SEQUENCE "+seq)
	testcluster.WaitReplayed(t, ctx)

	// primaryValue reads one column of one row of the table on the primary.
	primaryValue := func(t *testing.T, id int64) (v string, n int, found bool) {
		t.Helper()
		err := direct.QueryRowContext(ctx, "SELECT v, n FROM "+table+" WHERE id = $1", id).Scan(&v, &n)
		if err == sql.ErrNoRows {
			return "", 0, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return v, n, true
	}
	// rowOnPrimary runs a QueryRow and checks the port it reports.
	rowOnPrimary := func(t *testing.T, query string, args []any, dest ...any) {
		t.Helper()
		rctx, route := pgreplica.WithRoute(ctx)
		var port int
		if err := db.QueryRowContext(rctx, query, args...).Scan(append([]any{&port}, dest...)...); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		if port != primaryPort() {
			t.Fatalf("%s: served by %s", query, testcluster.Role(port))
		}
		wantPrimary(t, query, route, pgreplica.ReasonClassifier)
	}

	// Control: a replica refuses each of these forms as a write (SQLSTATE
	// 25006), so their success below shows where they ran. Session advisory
	// locks are the exception: a standby grants them, on the wrong server,
	// which is why pgreplica must send them to the primary; the test checks
	// pg_locks on the primary for them.
	t.Run("a replica refuses them", func(t *testing.T) {
		replica := testcluster.Direct(t, 1)
		refused := []string{
			"INSERT INTO " + table + " (id, v) VALUES (99, 'x') RETURNING id",
			"UPDATE " + table + " SET v = 'x' RETURNING id",
			"DELETE FROM " + table + " RETURNING id",
			"INSERT INTO " + table + " (id, v) VALUES (99, 'x') ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING id",
			"WITH i AS (INSERT INTO " + table + " (id, v) VALUES (99, 'x') RETURNING id) SELECT id FROM i",
			"SELECT v FROM " + table + " FOR UPDATE",
			"SELECT v FROM " + table + " FOR SHARE",
			"SELECT v FROM " + table + " FOR NO KEY UPDATE",
			"SELECT v FROM " + table + " FOR KEY SHARE",
			"SELECT nextval('" + seq + "')",
			"SELECT setval('" + seq + "', 5)",
			"SELECT 1 AS x INTO " + table + "_refused",
			"LISTEN ch_refused",
		}
		if hasMerge {
			refused = append(refused, "MERGE INTO "+table+" t USING (VALUES (99)) s(id) ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, 'x')")
		}
		for _, q := range refused {
			rows, err := replica.QueryContext(ctx, q)
			if err == nil {
				err = rows.Close()
			}
			if pgCode(err) != "25006" {
				t.Errorf("on a replica %s: %v, want SQLSTATE 25006", q, err)
			}
		}
	})

	t.Run("INSERT RETURNING via QueryRow", func(t *testing.T) {
		var id int64
		rowOnPrimary(t, "INSERT INTO "+table+" (id, v) VALUES (1, 'one') RETURNING inet_server_port(), id", nil, &id)
		if v, _, ok := primaryValue(t, 1); !ok || v != "one" || id != 1 {
			t.Fatalf("primary row 1 = %q %v, returned id %d", v, ok, id)
		}
	})
	t.Run("UPDATE RETURNING via QueryRow", func(t *testing.T) {
		var v string
		rowOnPrimary(t, "UPDATE "+table+" SET v = 'uno' WHERE id = $1 RETURNING inet_server_port(), v", []any{1}, &v)
		if got, _, _ := primaryValue(t, 1); got != "uno" || v != "uno" {
			t.Fatalf("primary row 1 = %q, returned %q, want uno", got, v)
		}
	})
	t.Run("INSERT ON CONFLICT RETURNING via QueryRow", func(t *testing.T) {
		q := "INSERT INTO " + table + " (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = " +
			table + ".n + 1 RETURNING inet_server_port(), n"
		var n int
		rowOnPrimary(t, q, []any{2, "two"}, &n) // inserts
		rowOnPrimary(t, q, []any{2, "dos"}, &n) // conflicts: updates
		if v, pn, _ := primaryValue(t, 2); v != "dos" || pn != 1 || n != 1 {
			t.Fatalf("primary row 2 = %q n=%d, returned n=%d; want dos n=1", v, pn, n)
		}
	})
	t.Run("DELETE RETURNING via QueryRow", func(t *testing.T) {
		mustExec(t, ctx, direct, "INSERT INTO "+table+" (id, v) VALUES (3, 'three')")
		var id int64
		rowOnPrimary(t, "DELETE FROM "+table+" WHERE id = 3 RETURNING inet_server_port(), id", nil, &id)
		if _, _, ok := primaryValue(t, 3); ok || id != 3 {
			t.Fatalf("row 3 still on the primary (%v) or wrong id returned (%d)", ok, id)
		}
	})
	t.Run("MERGE via Exec", func(t *testing.T) {
		skipWithoutMerge(t)
		rctx, route := pgreplica.WithRoute(ctx)
		res, err := db.ExecContext(rctx, "MERGE INTO "+table+" t USING (VALUES (1, 'merged'), (4, 'four')) s(id, v) ON t.id = s.id "+
			"WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)")
		if err != nil {
			t.Fatal(err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 2 {
			t.Fatalf("MERGE affected %d rows (%v), want 2", n, err)
		}
		wantPrimary(t, "MERGE", route, pgreplica.ReasonWrite)
		if v, _, _ := primaryValue(t, 1); v != "merged" {
			t.Fatalf("row 1 = %q after MERGE, want merged", v)
		}
		if v, _, _ := primaryValue(t, 4); v != "four" {
			t.Fatalf("row 4 = %q after MERGE, want four", v)
		}
	})
	t.Run("MERGE via Query", func(t *testing.T) {
		skipWithoutMerge(t)
		rctx, route := pgreplica.WithRoute(ctx)
		rows, err := db.QueryContext(rctx, "MERGE INTO "+table+" t USING (VALUES (4, 'cuatro')) s(id, v) ON t.id = s.id "+
			"WHEN MATCHED THEN UPDATE SET v = s.v")
		if err != nil {
			t.Fatal(err)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		wantPrimary(t, "MERGE via Query", route, pgreplica.ReasonClassifier)
		if v, _, _ := primaryValue(t, 4); v != "cuatro" {
			t.Fatalf("row 4 = %q after MERGE, want cuatro", v)
		}
	})
	t.Run("data-modifying CTE via Query", func(t *testing.T) {
		rctx, route := pgreplica.WithRoute(ctx)
		rows, err := db.QueryContext(rctx, "WITH i AS (INSERT INTO "+table+" (id, v) VALUES (5, 'five'), (6, 'six') RETURNING id) "+
			"SELECT inet_server_port(), id FROM i ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var ids []int64
		for rows.Next() {
			var port int
			var id int64
			if err := rows.Scan(&port, &id); err != nil {
				t.Fatal(err)
			}
			if port != primaryPort() {
				t.Fatalf("CTE served by %s", testcluster.Role(port))
			}
			ids = append(ids, id)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		wantPrimary(t, "CTE", route, pgreplica.ReasonClassifier)
		if len(ids) != 2 || ids[0] != 5 || ids[1] != 6 {
			t.Fatalf("CTE returned %v, want [5 6]", ids)
		}
		for _, id := range ids {
			if _, _, ok := primaryValue(t, id); !ok {
				t.Fatalf("row %d not on the primary", id)
			}
		}
	})
	// Row 1 as the steps above left it: MERGE's value, or on 13 (no
	// MERGE) the UPDATE's.
	row1 := "merged"
	if !hasMerge {
		row1 = "uno"
	}
	for _, lock := range []string{"FOR UPDATE", "FOR SHARE", "FOR NO KEY UPDATE", "FOR KEY SHARE"} {
		t.Run("SELECT "+lock, func(t *testing.T) {
			var v string
			rowOnPrimary(t, "SELECT inet_server_port(), v FROM "+table+" WHERE id = 1 "+lock, nil, &v)
			if v != row1 {
				t.Fatalf("SELECT … %s returned %q, want %s", lock, v, row1)
			}
		})
	}
	t.Run("nextval and setval", func(t *testing.T) {
		var v int64
		rowOnPrimary(t, "SELECT inet_server_port(), nextval($1)", []any{seq}, &v)
		rowOnPrimary(t, "SELECT inet_server_port(), nextval($1)", []any{seq}, &v)
		if v != 2 {
			t.Fatalf("second nextval = %d, want 2", v)
		}
		rowOnPrimary(t, "SELECT inet_server_port(), setval($1, 100)", []any{seq}, &v)
		if got := queryInt(t, ctx, direct, "SELECT last_value FROM "+seq); got != 100 || v != 100 {
			t.Fatalf("sequence last_value on the primary = %d (setval returned %d), want 100", got, v)
		}
	})
	t.Run("pg_advisory_lock and unlock", func(t *testing.T) {
		// Session locks live on one server connection: a sql.Conn keeps it.
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer discardConn(c) // it holds session state: close it, as a pgx user would
		var pid int
		rctx, route := pgreplica.WithRoute(ctx)
		if err := c.QueryRowContext(rctx, "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock(7001)) l").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		wantPrimary(t, "pg_advisory_lock", route, pgreplica.ReasonClassifier)
		held := "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7001 AND granted AND pid = $1"
		if n := queryInt(t, ctx, direct, held, pid); n != 1 {
			t.Fatalf("the primary shows %d advisory locks 7001 held by backend %d, want 1", n, pid)
		}
		var unlocked bool
		if err := c.QueryRowContext(rctx, "SELECT pg_advisory_unlock(7001)").Scan(&unlocked); err != nil || !unlocked {
			t.Fatalf("pg_advisory_unlock = %v, %v; want true", unlocked, err)
		}
		wantPrimary(t, "pg_advisory_unlock", route, pgreplica.ReasonPinned)
		if n := queryInt(t, ctx, direct, held, pid); n != 0 {
			t.Fatalf("advisory lock 7001 still held after unlock")
		}
	})
	t.Run("SELECT INTO via Query", func(t *testing.T) {
		into := table + "_into"
		rctx, route := pgreplica.WithRoute(ctx)
		rows, err := db.QueryContext(rctx, "SELECT id, v INTO "+into+" FROM "+table+" WHERE id IN (1, 2)")
		if err != nil {
			t.Fatal(err)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		wantPrimary(t, "SELECT INTO", route, pgreplica.ReasonClassifier)
		if n := queryInt(t, ctx, direct, "SELECT count(*) FROM "+into); n != 2 {
			t.Fatalf("%s has %d rows on the primary, want 2", into, n)
		}
	})
	t.Run("LISTEN via Exec and Query", func(t *testing.T) {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer discardConn(c) // it holds session state: close it, as a pgx user would
		rctx, route := pgreplica.WithRoute(ctx)
		if _, err := c.ExecContext(rctx, "LISTEN ch_exec"); err != nil {
			t.Fatal(err)
		}
		wantPrimary(t, "LISTEN via Exec", route, pgreplica.ReasonWrite)
		assertListening(t, ctx, c, direct, "ch_exec")

		c2, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer discardConn(c2)
		rows, err := c2.QueryContext(rctx, "LISTEN ch_query")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		wantPrimary(t, "LISTEN via Query", route, pgreplica.ReasonClassifier)
		assertListening(t, ctx, c2, direct, "ch_query")
	})
}

// assertListening checks that the connection behind c listens on channel,
// and that it is a connection to the primary: its backend pid is one the
// primary knows for this application role.
func assertListening(t *testing.T, ctx context.Context, c *sql.Conn, primary *sql.DB, channel string) {
	t.Helper()
	var pid int
	var listening bool
	err := c.QueryRowContext(ctx, "SELECT pg_backend_pid(), $1 = ANY (ARRAY(SELECT pg_listening_channels()))", channel).Scan(&pid, &listening)
	if err != nil {
		t.Fatal(err)
	}
	if !listening {
		t.Fatalf("the connection does not listen on %s", channel)
	}
	if n := queryInt(t, ctx, primary, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND usename = current_user", pid); n != 1 {
		t.Fatalf("backend %d that listens on %s is not on the primary", pid, channel)
	}
}

// A user function that writes looks like a plain read to the classifier,
// so pgreplica sends it to a replica; the standby refuses it with SQLSTATE
// 25006 and pgreplica runs it again on the primary. The caller sees the
// row, and the route says why. read_your_writes=off: in the default mode
// each call after the first goes straight to the primary (it reads after
// db's own write); this test is about the standby's refusal.
func TestWritingFunctionRerunsOnPrimaryAfterReadOnlyError(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "read_your_writes=off")
	direct := testcluster.Direct(t, 0)
	table := testcluster.NewTable(t, ctx, "audit", "id bigserial PRIMARY KEY, who text NOT NULL")
	fn := table + "_touch"
	mustExec(t, ctx, direct, "CREATE FUNCTION "+fn+"(who text) RETURNS bigint LANGUAGE sql AS $$ INSERT INTO "+
		table+" (who) VALUES (who) RETURNING id $$")
	// The replicas must know the function, or they answer "function does not
	// exist" instead of 25006.
	testcluster.WaitReplayed(t, ctx)
	conn, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}

	for i := range 4 {
		rctx, route := pgreplica.WithRoute(ctx)
		var id int64
		var port int
		if err := db.QueryRowContext(rctx, "SELECT "+fn+"($1), inet_server_port()", "caller").Scan(&id, &port); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if port != primaryPort() {
			t.Fatalf("call %d answered by %s", i, testcluster.Role(port))
		}
		wantPrimary(t, "writing function", route, pgreplica.ReasonReadOnly)
		if n := queryInt(t, ctx, direct, "SELECT count(*) FROM "+table+" WHERE id = $1 AND who = 'caller'", id); n != 1 {
			t.Fatalf("call %d: row %d not on the primary", i, id)
		}
	}
	if n := queryInt(t, ctx, direct, "SELECT count(*) FROM "+table); n != 4 {
		t.Fatalf("%d rows on the primary, want 4 (one per call, none lost or doubled)", n)
	}
	var refused uint64
	for _, ns := range conn.Status().Nodes[1:] {
		refused += ns.Reroutes["read_only_error"]
	}
	if refused != 4 {
		t.Fatalf("replicas report %d read_only_error reroutes, want 4", refused)
	}
}
