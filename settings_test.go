package pgreplica

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	setUser     = "SELECT set_config('app.user_id', $1, false)"
	saveOne     = "SELECT current_setting($1, true)"
	restoreOne  = "SELECT set_config($1, $2, false)"
	readT       = "SELECT x FROM t"
	setUserText = "SET app.user_id = 'bob'"
)

func settingRow(v driver.Value) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"v"}).AddRow(v)
}

// expectReplay expects a replica connection to save app.user_id (not yet
// defined there), run the conn's set_config with arg, serve n reads and
// set app.user_id back when it is released.
func expectReplay(m sqlmock.Sqlmock, arg string, reads int) {
	m.ExpectQuery(q(saveOne)).WithArgs("app.user_id").WillReturnRows(settingRow(nil))
	m.ExpectExec(q(setUser)).WithArgs(arg).WillReturnResult(sqlmock.NewResult(0, 0))
	for range reads {
		m.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	}
	m.ExpectExec(q(restoreOne)).WithArgs("app.user_id", nil).WillReturnResult(sqlmock.NewResult(0, 0))
}

func readRoute(t *testing.T, qr interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, want string, reason Reason) {
	t.Helper()
	ctx, route := WithRoute(context.Background())
	if err := qr.QueryRowContext(ctx, readT).Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if route.Node() != want || route.Reason() != reason {
		t.Fatalf("read: route = %s %s, want %s %s", route.Node(), route.Reason(), want, reason)
	}
}

// A conn's set_config(…, false) runs on the primary and is replayed, once
// per change, on the replica connection that serves its reads, which gets
// the old value back when the checkout ends; the conn's later checkouts do
// the same, and a conn without settings gets a clean connection.
func TestSettingsFollowReadsToReplicas(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.db.SetMaxOpenConns(1)
	ctx := context.Background()
	fc.mocks[0].ExpectQuery(q(setUser)).WithArgs("alice").WillReturnRows(settingRow("alice"))
	expectReplay(fc.mocks[1], "alice", 2)
	expectReplay(fc.mocks[1], "alice", 1)

	sc, err := fc.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.QueryRowContext(ctx, setUser, "alice").Scan(new(string)); err != nil {
		t.Fatal(err)
	}
	readRoute(t, sc, "node1:5432", ReasonRead)
	readRoute(t, sc, "node1:5432", ReasonRead)
	sc.Close()
	// The next checkout of the same database/sql conn (one in the pool).
	readRoute(t, fc.db, "node1:5432", ReasonRead)
	if got := fc.c.nodes[0].inFlight.Load(); got != 1 {
		t.Fatalf("primary leases held between checkouts = %d, want 1 (the conn's session)", got)
	}
	// Closed: its session goes with it; a new conn reads with none.
	fc.db.SetMaxIdleConns(0)
	fc.mocks[1].ExpectQuery(q(readT)).WillReturnRows(oneRow())
	readRoute(t, fc.db, "node1:5432", ReasonRead)
}

// A change of the settings within a checkout is replayed on the replica
// connection it already holds, saving only the names it has not saved;
// SET by text and RESET are replayed as they were written.
func TestSettingsChangeReplaysOnHeldReplica(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	ctx := context.Background()
	p, r := fc.mocks[0], fc.mocks[1]
	p.ExpectExec(q(setUserText)).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectQuery(q(saveOne)).WithArgs("app.user_id").WillReturnRows(settingRow(""))
	r.ExpectExec(q(setUserText)).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	p.ExpectExec(q("SET search_path TO app")).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectQuery(q(saveOne)).WithArgs("search_path").WillReturnRows(settingRow(`"$user", public`))
	r.ExpectExec(q(setUserText)).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectExec(q("SET search_path TO app")).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	p.ExpectExec(q("RESET app.user_id")).WillReturnResult(sqlmock.NewResult(0, 0))
	// SET app.user_id is superseded by the RESET: not replayed again.
	r.ExpectExec(q("SET search_path TO app")).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectExec(q("RESET app.user_id")).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	r.ExpectExec(q("SELECT set_config($1, $2, false), set_config($3, $4, false)")).
		WithArgs("app.user_id", "", "search_path", `"$user", public`).WillReturnResult(sqlmock.NewResult(0, 0))

	sc, err := fc.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	for _, set := range []string{setUserText, "SET search_path TO app", "RESET app.user_id"} {
		if _, err := sc.ExecContext(ctx, set); err != nil {
			t.Fatal(err)
		}
		readRoute(t, sc, "node1:5432", ReasonRead)
	}
}

// Session state that is not a plain setting, or a setting a replica must
// not get, keeps the conn's reads on the primary as before, in the
// checkout and after it.
func TestNonReplayableSettingsStayOnPrimary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		query string
		args  []any
	}{
		{"SET ROLE", "SET ROLE app", nil},
		{"SET SESSION AUTHORIZATION", "SET SESSION AUTHORIZATION app", nil},
		{"set_config role", "SELECT set_config('role', 'app', false)", nil},
		{"set_config of a named parameter", "SELECT set_config($1, $2, false)", []any{"role", "app"}},
		{"default isolation", "SET default_transaction_isolation = 'serializable'", nil},
		{"SET with an expression", "SELECT set_config('app.user_id', lower($1), false)", []any{"A"}},
		{"two statements", "SET app.a = 1; SET app.b = 2", nil},
		{"an argument of another type", setUser, []any{[]string{"x"}}},
		{"temp table", "CREATE TEMP TABLE tmp (x int)", nil},
		{"advisory lock", "SELECT pg_advisory_lock(1)", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1, defaultCfg())
			fc.db.SetMaxOpenConns(1)
			fc.mocks[0].ExpectExec(q(tc.query)).WillReturnResult(sqlmock.NewResult(0, 0))
			fc.mocks[0].ExpectQuery(q(readT)).WillReturnRows(oneRow())
			fc.mocks[0].ExpectQuery(q(readT)).WillReturnRows(oneRow())
			sc, err := fc.db.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sc.ExecContext(context.Background(), tc.query, tc.args...); err != nil {
				t.Fatal(err)
			}
			readRoute(t, sc, "node0:5432", ReasonPinned)
			sc.Close()
			readRoute(t, fc.db, "node0:5432", ReasonPinned)
		})
	}
}

// A set_config whose name is a parameter is replayed when the argument
// names a plain setting.
func TestSettingNamedByParameterIsReplayed(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	const set = "SELECT set_config($1, $2, false)"
	fc.mocks[0].ExpectExec(q(set)).WithArgs("App.User_ID", "7").WillReturnResult(sqlmock.NewResult(0, 0))
	fc.mocks[1].ExpectQuery(q(saveOne)).WithArgs("app.user_id").WillReturnRows(settingRow(nil))
	fc.mocks[1].ExpectExec(q(set)).WithArgs("App.User_ID", "7").WillReturnResult(sqlmock.NewResult(0, 0))
	fc.mocks[1].ExpectQuery(q(readT)).WillReturnRows(oneRow())
	fc.mocks[1].ExpectExec(q(restoreOne)).WithArgs("app.user_id", nil).WillReturnResult(sqlmock.NewResult(0, 0))
	sc, err := fc.db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := sc.ExecContext(context.Background(), set, "App.User_ID", "7"); err != nil {
		t.Fatal(err)
	}
	readRoute(t, sc, "node1:5432", ReasonRead)
}

// set_config(…, true) lasts for its statement outside a transaction: no
// session state, nothing replayed, and (as before) the primary serves the
// rest of that checkout only.
func TestTransactionLocalSetConfigIsNotReplayed(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.db.SetMaxOpenConns(1)
	const set = "SELECT set_config('app.user_id', $1, true)"
	fc.mocks[0].ExpectQuery(q(set)).WithArgs("alice").WillReturnRows(settingRow("alice"))
	fc.mocks[0].ExpectQuery(q(readT)).WillReturnRows(oneRow())
	fc.mocks[1].ExpectQuery(q(readT)).WillReturnRows(oneRow())
	sc, err := fc.db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.QueryRowContext(context.Background(), set, "alice").Scan(new(string)); err != nil {
		t.Fatal(err)
	}
	readRoute(t, sc, "node0:5432", ReasonPinned)
	sc.Close()
	readRoute(t, fc.db, "node1:5432", ReasonRead)
}

// A setting made inside a transaction is undone by a rollback: the conn
// keeps to the primary, as before.
func TestSettingInTransactionStaysOnPrimary(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.db.SetMaxOpenConns(1)
	p := fc.mocks[0]
	p.ExpectBegin()
	p.ExpectExec(q(setUser)).WithArgs("alice").WillReturnResult(sqlmock.NewResult(0, 0))
	p.ExpectCommit()
	p.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	tx, err := fc.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(setUser, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	readRoute(t, fc.db, "node0:5432", ReasonPinned)
}

// A replica that refuses to replay the settings (an error from the server,
// not from the connection) leaves the read and the conn's later ones to
// the primary.
func TestReplicaRefusingSettingsSendsReadsToPrimary(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.db.SetMaxOpenConns(1)
	p, r := fc.mocks[0], fc.mocks[1]
	p.ExpectExec(q(setUserText)).WillReturnResult(sqlmock.NewResult(0, 0))
	r.ExpectQuery(q(saveOne)).WithArgs("app.user_id").WillReturnRows(settingRow(nil))
	r.ExpectExec(q(setUserText)).WillReturnError(&pgconn.PgError{Code: "42501", Message: "permission denied"})
	p.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	p.ExpectQuery(q(readT)).WillReturnRows(oneRow())
	if _, err := fc.db.Exec(setUserText); err != nil {
		t.Fatal(err)
	}
	readRoute(t, fc.db, "node0:5432", ReasonPinned)
	readRoute(t, fc.db, "node0:5432", ReasonPinned)
}

// A replica connection whose settings cannot be set back is closed, not
// pooled (a fake has no connection to close: the lease says so).
func TestFailedUndoClosesReplicaConnection(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	n := fc.c.nodes[1]
	l := lease{node: n, sc: n.fake, restore: []settingRestore{{name: "app.user_id"}}}
	n.inFlight.Add(1)
	fc.mocks[1].ExpectExec(q(restoreOne)).WithArgs("app.user_id", nil).WillReturnError(driver.ErrBadConn)
	l.undoSettings()
	if !l.dirty {
		t.Fatal("a replica connection whose undo failed is not marked to be closed")
	}
	l.release()
}

// A replica marked down gets no undo: its connection is closed at once.
func TestUndoOnDownReplicaClosesWithoutWaiting(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	n := fc.c.nodes[1]
	n.up.Store(false)
	l := lease{node: n, sc: n.fake, restore: []settingRestore{{name: "app.user_id"}}}
	l.undoSettings() // no statement expected on the mock
	if !l.dirty {
		t.Fatal("a down replica's connection with settings is not marked to be closed")
	}
}
