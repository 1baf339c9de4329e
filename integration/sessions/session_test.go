package sessions

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// item is a row of the tables these tests write, for sqlx.
type item struct {
	ID   int64  `db:"id"`
	V    string `db:"v"`
	Port int    `db:"port"`
}

// A session reads its own writes while both replicas replay nothing:
// through QueryRow, Query, a read-only transaction and sqlx, every read
// with the session's context finds the row, on the primary. A read without
// the session goes to a replica and does not find it. Once replay resumes,
// the session's reads return to the replicas within a few monitor
// intervals. read_your_writes=off, so that a read without the session
// shows what WithSession alone does.
func TestSessionReadsItsWritesWhileReplicasLag(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "sess", "id bigint PRIMARY KEY, v text")
	db := testcluster.Open(t, append([]string{rywOff}, dsnParams...)...)
	xdb := sqlx.NewDb(db, "pgreplica")
	resume := pauseReplay(t, ctx, 1, 2)

	sctx := pgreplica.WithSession(ctx)
	if _, err := db.ExecContext(sctx, "INSERT INTO "+table+" (id, v) VALUES (1, 'exec')"); err != nil {
		t.Fatal(err)
	}
	if _, err := xdb.NamedExecContext(sctx, "INSERT INTO "+table+" (id, v) VALUES (:id, :v)", item{ID: 2, V: "sqlx"}); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(sctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(sctx, "INSERT INTO "+table+" (id, v) VALUES (3, 'tx')"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	count := "SELECT count(*), inet_server_port() FROM " + table
	// Each read reports the rows it saw and the node that served it.
	reads := map[string]func(ctx context.Context) (n int, port int){
		"QueryRow": func(ctx context.Context) (int, int) {
			var n, port int
			if err := db.QueryRowContext(ctx, count).Scan(&n, &port); err != nil {
				t.Fatal(err)
			}
			return n, port
		},
		"Query": func(ctx context.Context) (int, int) {
			rows, err := db.QueryContext(ctx, "SELECT id, inet_server_port() FROM "+table)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			n, port := 0, 0
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id, &port); err != nil {
					t.Fatal(err)
				}
				n++
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				port = testcluster.Port(t, ctx, db)
			}
			return n, port
		},
		"read-only tx": func(ctx context.Context) (int, int) {
			tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			var n, port int
			if err := tx.QueryRowContext(ctx, count).Scan(&n, &port); err != nil {
				t.Fatal(err)
			}
			return n, port
		},
		"sqlx Select": func(ctx context.Context) (int, int) {
			var items []item
			if err := xdb.SelectContext(ctx, &items, xdb.Rebind("SELECT id, v, inet_server_port() AS port FROM "+table+" WHERE id > ?"), 0); err != nil {
				t.Fatal(err)
			}
			if len(items) == 0 {
				return 0, testcluster.Port(t, ctx, db)
			}
			return len(items), items[0].Port
		},
		"sqlx Get": func(ctx context.Context) (int, int) {
			var got struct {
				N    int `db:"n"`
				Port int `db:"port"`
			}
			if err := xdb.GetContext(ctx, &got, xdb.Rebind("SELECT count(*) AS n, inet_server_port() AS port FROM "+table+" WHERE v <> ?"), ""); err != nil {
				t.Fatal(err)
			}
			return got.N, got.Port
		},
	}

	for name, read := range reads {
		rctx, route := pgreplica.WithRoute(sctx)
		n, port := read(rctx)
		if n != 3 || port != primaryPort() {
			t.Fatalf("%s in the session: %d rows on %s, want 3 on the primary", name, n, testcluster.Role(port))
		}
		// session while no probe of the primary covers the writes yet,
		// fallback once one does and no replica has replayed them.
		switch route.Reason() {
		case pgreplica.ReasonSession, pgreplica.ReasonFallback, pgreplica.ReasonTransaction:
		default:
			t.Fatalf("%s in the session: reason %s", name, route.Reason())
		}
		// Without the session: a replica, which has none of the rows.
		rctx, route = pgreplica.WithRoute(ctx)
		n, port = read(rctx)
		if n != 0 || port == primaryPort() || !testcluster.IsReplicaAddr(route.Node()) {
			t.Fatalf("%s without the session: %d rows on %s, want 0 on a replica", name, n, testcluster.Role(port))
		}
	}

	// The monitor keeps probing while replay is paused: once a probe of the
	// primary has covered the writes, the session still stays on the
	// primary, as no replica has replayed them.
	waitPrimaryProbed(t, ctx, db)
	for name, read := range reads {
		if n, port := read(sctx); n != 3 || port != primaryPort() {
			t.Fatalf("%s in the session after probes: %d rows on %s, want 3 on the primary", name, n, testcluster.Role(port))
		}
	}

	start := time.Now() // from the first ResumeReplay call on
	resume()
	var back time.Duration
	ok := eventually(ctx, returnBound, func() bool {
		rctx, route := pgreplica.WithRoute(sctx)
		n, port := reads["QueryRow"](rctx)
		if n != 3 {
			t.Fatalf("the session read %d rows on %s after resume, want 3", n, testcluster.Role(port))
		}
		if testcluster.IsReplicaAddr(route.Node()) {
			back = time.Since(start)
			return true
		}
		return false
	})
	if !ok {
		t.Fatalf("the session's reads did not return to a replica within %s of resuming replay", returnBound)
	}
	t.Logf("the session's reads returned to a replica %s after replay resumed (monitor interval %s, bound %s)", back.Round(time.Millisecond), interval, returnBound)
	for name, read := range reads {
		if n, port := read(sctx); n != 3 {
			t.Fatalf("%s in the session after resume: %d rows on %s, want 3", name, n, testcluster.Role(port))
		}
	}
}

// waitPrimaryProbed returns once the monitor of db has finished a probe
// of the primary that started after waitPrimaryProbed was called.
func waitPrimaryProbed(t *testing.T, ctx context.Context, db *sql.DB) {
	t.Helper()
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	lastProbe := func() time.Time { return c.Status().Nodes[0].LastProbe }
	// The first probe to end after now may have started before; the one
	// after it started after the first ended.
	for range 2 {
		before := time.Now()
		if !eventually(ctx, time.Minute, func() bool { return lastProbe().After(before) }) {
			t.Fatal("the monitor does not probe the primary")
		}
	}
}
