package faults

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// badSQL are texts whose errors pgx's driver reports at Prepare.
func badSQL(table string) map[string]string {
	return map[string]string{
		"42601": "SELEC 1",
		"42P01": "SELECT * FROM no_such_table_prepare",
		"42703": "SELECT no_such_column FROM " + table,
	}
}

func checkBadSQL(t *testing.T, ctx context.Context, db *sql.DB, table, when string) {
	t.Helper()
	for code, q := range badSQL(table) {
		st, err := db.PrepareContext(ctx, q)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != code {
			if st != nil {
				st.Close()
			}
			t.Fatalf("%s: Prepare(%q) = %v, want SQLSTATE %s", when, q, err, code)
		}
	}
}

// TestPreparedReadsWithoutThePrimary stops the primary (immediate): plain
// reads go on on the replicas, and so must the same read through a
// *sql.Stmt, whether it was prepared before the stop (database/sql prepares
// it again on every new connection) or while the primary is down. Invalid
// SQL still fails at Prepare, with the server's SQLSTATE, while the primary
// is up and while it is down.
func TestPreparedReadsWithoutThePrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	primary := cl.Nodes[0]
	table := testcluster.NewTable(t, ctx, "prep", "id int")
	db := testcluster.Open(t, monitorParams)
	// The row comes from another client: in the default mode a write of
	// db's own that no probe of the primary covered before the stop would
	// keep db's reads on the (stopped) primary, which
	// TestDefaultModeReadsWhilePrimaryDown tests; this test is about Stmts.
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	checkBadSQL(t, ctx, db, table, "primary up")
	read := "SELECT inet_server_port(), count(*) FROM " + table
	early, err := db.PrepareContext(ctx, read)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	// Every statement on a new database/sql connection: the Stmt is
	// prepared again for each one.
	db.SetMaxIdleConns(0)

	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Start(context.Background()) })
	testcluster.WaitUntil(t, time.Minute, "plain reads served without the primary", func() bool {
		var port, n int
		err := db.QueryRowContext(ctx, read).Scan(&port, &n)
		return err == nil && testcluster.IsReplicaAddr(cl.Nodes[testIndex(port)].Addr())
	})
	late, err := db.PrepareContext(ctx, read)
	if err != nil {
		t.Fatalf("Prepare of a read while the primary is down: %v", err)
	}
	defer late.Close()
	for i := range 20 {
		for name, st := range map[string]*sql.Stmt{"prepared before the stop": early, "prepared during it": late} {
			var port, n int
			if err := st.QueryRowContext(ctx).Scan(&port, &n); err != nil {
				t.Fatalf("Stmt %s, read %d, primary down: %v", name, i, err)
			}
			if port == primary.Port || n != 1 {
				t.Fatalf("Stmt %s, read %d: served by %s with %d rows", name, i, testcluster.Role(port), n)
			}
		}
	}
	checkBadSQL(t, ctx, db, table, "primary down")

	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, time.Minute, "writes work again", func() bool {
		_, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)")
		return err == nil
	})
	testcluster.WaitReplayed(t, ctx)
}

// testIndex is the index in the cluster of the node listening on port.
func testIndex(port int) int {
	for i, n := range testcluster.Cluster().Nodes {
		if n.Port == port {
			return i
		}
	}
	return 0
}
