package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Issue 8, section 3: a standby refuses some reads that the primary serves.
// pgreplica re-runs them on the primary before their first row, with a
// route reason saying why, and counts them against the replica.
//
// The DBs here set max_replica_lag=off: a replica briefly behind on a busy
// machine would send reads to the primary as a fallback, with another
// reason, which is not what these tests are about.

// noLag keeps the replicas usable whatever their lag.
const noLag = "max_replica_lag=off"

// standbyErrors sums the replicas' standby_error reroutes.
func standbyErrors(t *testing.T, ctx context.Context, db *sql.DB) uint64 {
	t.Helper()
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, n := range c.Status().Nodes {
		if n.Role == pgreplica.RoleReplica {
			sum += n.Reroutes["standby_error"]
		}
	}
	return sum
}

// A plain read of an unlogged table (a cache table) is refused by every
// standby with 0A000; through pgreplica it succeeds, from the primary.
func TestUnloggedTableReadServedByPrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, noLag)
	name := fmt.Sprintf("cache_unlogged_%d", time.Now().UnixNano())
	direct := testcluster.Direct(t, 0)
	mustExec(t, ctx, direct, "CREATE UNLOGGED TABLE "+name+" (k int PRIMARY KEY, v text)")
	mustExec(t, ctx, direct, "INSERT INTO "+name+" VALUES (1, 'cached')")
	// The replicas know the table (its catalog rows are logged), so they
	// answer 0A000 and not "does not exist".
	testcluster.WaitReplayed(t, ctx)
	if _, err := testcluster.Direct(t, 1).ExecContext(ctx, "SELECT v FROM "+name); pgCode(err) != "0A000" {
		t.Fatalf("on replica1 directly: err = %v, want 0A000: the test would prove nothing", err)
	}

	const reads = 20
	for i := range reads {
		rctx, route := pgreplica.WithRoute(ctx)
		var v string
		if err := db.QueryRowContext(rctx, "SELECT v FROM "+name+" WHERE k = 1").Scan(&v); err != nil {
			t.Fatalf("read %d of %d: %v", i+1, reads, err)
		}
		if v != "cached" {
			t.Fatalf("read %d: v = %q", i+1, v)
		}
		if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonRecoveryError {
			t.Fatalf("read %d: served by %s for %s, want the primary for recovery_error", i+1, route.Node(), route.Reason())
		}
	}
	if got := standbyErrors(t, ctx, db); got != reads {
		t.Fatalf("replicas' standby_error reroutes = %d, want %d", got, reads)
	}
}

// pg_current_wal_lsn() forced onto a replica by a hint fails there with
// 55000 and is re-run on the primary: the answer is the primary's position.
// read_your_writes=off: the classifier does not know the function has no
// effect, so in the default mode the re-run on the primary counts as a
// possible write of the connector's session and the next call goes to the
// primary straight away (reason session), without the replica's 55000.
func TestCurrentWALLSNViaReplicaHintAnswersFromPrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, noLag, "read_your_writes=off")
	direct := testcluster.Direct(t, 0)
	lsnNow := func() string {
		var s string
		if err := direct.QueryRowContext(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if _, err := testcluster.Direct(t, 2).ExecContext(ctx, "SELECT pg_current_wal_lsn()"); pgCode(err) != "55000" {
		t.Fatalf("on replica2 directly: err = %v, want 55000", err)
	}
	for i := range 5 {
		before := lsnNow()
		rctx, route := pgreplica.WithRoute(ctx)
		var got string
		if err := db.QueryRowContext(rctx, "/* pgreplica:replica */ SELECT pg_current_wal_lsn()::text").Scan(&got); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		// Write a little WAL so that the position moves between calls.
		mustExec(t, ctx, direct, "SELECT txid_current()")
		after := lsnNow()
		var within bool
		if err := direct.QueryRowContext(ctx, "SELECT $1::pg_lsn BETWEEN $2::pg_lsn AND $3::pg_lsn", got, before, after).Scan(&within); err != nil {
			t.Fatal(err)
		}
		if !within {
			t.Fatalf("call %d: got %s, primary was at %s before and %s after", i, got, before, after)
		}
		if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonRecoveryError {
			t.Fatalf("call %d: served by %s for %s, want the primary for recovery_error", i, route.Node(), route.Reason())
		}
	}
	if got := standbyErrors(t, ctx, db); got != 5 {
		t.Fatalf("replicas' standby_error reroutes = %d, want 5", got)
	}
}

// lo_creat(-1) cannot assign an OID on a standby; forced there by a hint
// it runs on the primary instead, and the large object exists there.
func TestLoCreatViaReplicaHintRunsOnPrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, noLag)
	direct := testcluster.Direct(t, 0)
	code := pgCode(func() error { _, err := testcluster.Direct(t, 1).ExecContext(ctx, "SELECT lo_creat(-1)"); return err }())
	if code != "XX000" && code != "25006" {
		t.Fatalf("lo_creat on replica1 directly: SQLSTATE %q, want XX000 or 25006", code)
	}

	rctx, route := pgreplica.WithRoute(ctx)
	var oid uint32
	if err := db.QueryRowContext(rctx, "/* pgreplica:replica */ SELECT lo_creat(-1)").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = direct.ExecContext(context.Background(), "SELECT lo_unlink($1)", oid) })
	want := pgreplica.ReasonRecoveryError
	if code == "25006" {
		want = pgreplica.ReasonReadOnly
	}
	if route.Node() != primaryAddr() || route.Reason() != want {
		t.Fatalf("served by %s for %s, want the primary for %s", route.Node(), route.Reason(), want)
	}
	if n := queryInt(t, ctx, direct, "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $1", oid); n != 1 {
		t.Fatalf("large object %d: %d on the primary, want 1", oid, n)
	}
}

// A replica that has not replayed a DDL yet answers as if the object did
// not exist. With replay paused on both replicas, what one conn creates is
// read on another through db: each read is served by the primary, none
// fails. read_your_writes=off, as for DDL run by another process: in the
// default mode the connector's session sends every read after db's DDL to
// the primary (reason session) before a replica can refuse it, and so
// does a re-run of a text that may write (enum_range, a user function).
func TestUndefinedObjectOnLaggingReplicasServedByPrimary(t *testing.T) {
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	// No lag limit: the replicas stay usable, only their schema is old.
	db := openDB(t, noLag, "read_your_writes=off")
	// A table the replicas know, to which a column is added while paused.
	old := testcluster.NewTable(t, ctx, "undef_old", "id int")
	mustExec(t, ctx, db, "INSERT INTO "+old+" VALUES (1)")
	testcluster.WaitReplayed(t, ctx)
	for _, n := range cl.Nodes[1:] {
		if err := n.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, n := range cl.Nodes[1:] {
			if err := n.ResumeReplay(cctx); err != nil {
				t.Error(err)
			}
		}
	})

	maker, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer maker.Close()
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	tbl, typ, fn := "undef_t_"+suffix, "undef_mood_"+suffix, "undef_f_"+suffix
	cases := []struct {
		code, ddl, read string
		want            int64
	}{
		{"42P01", "CREATE TABLE " + tbl + " (id int); INSERT INTO " + tbl + " VALUES (7)", "SELECT id FROM " + tbl, 7},
		{"42703", "ALTER TABLE " + old + " ADD COLUMN extra int DEFAULT 8", "SELECT extra FROM " + old, 8},
		{"42883", "CREATE FUNCTION " + fn + "() RETURNS int LANGUAGE sql AS 'SELECT 9'", "SELECT " + fn + "()", 9},
		{"42704", "CREATE TYPE " + typ + " AS ENUM ('a', 'b')", "SELECT array_length(enum_range(NULL::" + typ + "), 1)", 2},
	}
	for i, c := range cases {
		// One statement per Exec: the extended protocol takes one.
		for _, stmt := range strings.Split(c.ddl, "; ") {
			mustExec(t, ctx, maker, stmt)
		}
		if _, err := testcluster.Direct(t, 1).ExecContext(ctx, c.read); pgCode(err) != c.code {
			t.Fatalf("%s on paused replica1 directly: err = %v, want %s", c.read, err, c.code)
		}
		rctx, route := pgreplica.WithRoute(ctx)
		var got int64
		if err := db.QueryRowContext(rctx, c.read).Scan(&got); err != nil {
			t.Fatalf("%s through db: %v", c.read, err)
		}
		if got != c.want {
			t.Fatalf("%s: %d, want %d", c.read, got, c.want)
		}
		if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonUndefinedObject {
			t.Fatalf("%s (%s): served by %s for %s, want the primary for undefined_object", c.read, c.code, route.Node(), route.Reason())
		}
		if got := standbyErrors(t, ctx, db); got != uint64(i+1) {
			t.Fatalf("after %s: replicas' standby_error reroutes = %d, want %d", c.code, got, i+1)
		}
	}
	mustExec(t, ctx, maker, "DROP TABLE "+tbl+", "+old)
	mustExec(t, ctx, maker, "DROP FUNCTION "+fn)
	mustExec(t, ctx, maker, "DROP TYPE "+typ)
}

// An error that is the statement's own fault is the application's to see:
// returned as the *pgconn.PgError itself (GORM and golang-migrate use a
// plain type assertion) and not run again anywhere.
func TestStatementErrorOnReplicaReturnedAsIsNotRetried(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, noLag)
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = db.QueryRowContext(ctx, "SELECT 1/0").Scan(&n)
	pe, ok := err.(*pgconn.PgError)
	if !ok || pe.Code != "22012" {
		t.Fatalf("err = %#v, want a bare *pgconn.PgError 22012", err)
	}
	var statements, errs, reroutes uint64
	for _, ns := range c.Status().Nodes {
		statements += ns.Statements
		errs += ns.Errors
		for _, r := range ns.Reroutes {
			reroutes += r
		}
		if ns.Role == pgreplica.RolePrimary && ns.Statements != 0 {
			t.Errorf("the primary ran %d statements, want 0", ns.Statements)
		}
	}
	if statements != 1 || errs != 1 || reroutes != 0 {
		t.Fatalf("statements %d, errors %d, reroutes %d: want one failed statement on one replica, nothing re-run", statements, errs, reroutes)
	}
}
