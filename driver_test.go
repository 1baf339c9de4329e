package pgreplica

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

// fakeCluster is a Connector whose nodes are go-sqlmock connections: each
// expectation says which node must receive which statement.
type fakeCluster struct {
	c     *Connector
	db    *sql.DB
	mocks []sqlmock.Sqlmock
}

func newFakeCluster(t *testing.T, replicas int, cfg Config) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{}
	if cfg.Policy == nil {
		cfg.Policy = RoundRobin()
	}
	c := &Connector{driver: &Driver{}, cfg: cfg, policy: cfg.Policy, log: slog.New(slog.DiscardHandler)}
	for i := 0; i <= replicas; i++ {
		dsn := fmt.Sprintf("%s-node%d", t.Name(), i)
		mdb, mock, err := sqlmock.NewWithDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		dc, err := mdb.Driver().Open(dsn)
		if err != nil {
			t.Fatal(err)
		}
		n := &node{index: i, addr: fmt.Sprintf("node%d:5432", i), fake: dc.(nodeConn)}
		n.up.Store(true)
		n.standby.Store(i != 0)
		n.setBehind(-time.Hour) // caught up, for as long as a test runs
		c.nodes = append(c.nodes, n)
		fc.mocks = append(fc.mocks, mock)
		t.Cleanup(func() { mdb.Close() })
	}
	c.topo.Store(&topology{primary: c.nodes[0], replicas: c.nodes[1:], nodes: c.nodes})
	if cfg.ReadYourWrites == ReadYourWritesConnector { // as NewConnector does
		c.ryw = &session{}
	}
	fc.c = c
	fc.db = sql.OpenDB(c)
	t.Cleanup(func() {
		fc.db.Close()
		for i, m := range fc.mocks {
			if err := m.ExpectationsWereMet(); err != nil {
				t.Errorf("node %d: %v", i, err)
			}
		}
	})
	return fc
}

// defaultCfg is the fake cluster's Config: the routing rules are tested
// with read_your_writes=off, so that a read after a write shows the rule
// under test rather than the connector's session (ryw_test.go tests that).
func defaultCfg() Config {
	return Config{MaxReplicaLag: time.Second, HedgeAfter: HedgeOff, ReadYourWrites: ReadYourWritesOff}
}

func q(s string) string { return regexp.QuoteMeta(s) }

func oneRow() *sqlmock.Rows { return sqlmock.NewRows([]string{"x"}).AddRow(1) }

func TestExecGoesToPrimary(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.mocks[0].ExpectExec(q("UPDATE t SET x = 1")).WillReturnResult(sqlmock.NewResult(0, 3))
	res, err := fc.db.Exec("UPDATE t SET x = 1")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 3 {
		t.Fatalf("rows affected = %d, want 3", n)
	}
}

func TestPlainReadsGoToReplicasInTurn(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	for range 2 {
		fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
		fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	}
	for range 4 {
		var x int
		if err := fc.db.QueryRow("SELECT x FROM t").Scan(&x); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStatementsThatMayWriteGoToPrimary(t *testing.T) {
	writes := []string{
		"INSERT INTO t (x) VALUES (1) RETURNING id",
		"UPDATE t SET x = 2 RETURNING id",
		"DELETE FROM t WHERE x = 1 RETURNING id",
		"INSERT INTO t (x) VALUES (1) ON CONFLICT DO NOTHING RETURNING id",
		"WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
		"SELECT x FROM t WHERE id = 1 FOR UPDATE",
		"SELECT x FROM t FOR NO KEY UPDATE",
		"SELECT x FROM t FOR SHARE",
		"SELECT x FROM t FOR KEY SHARE",
		"SELECT nextval('s')",
		"SELECT setval('s', 10)",
		"SELECT pg_advisory_lock(1)",
		"SELECT * INTO t2 FROM t",
		"SET search_path TO app",
		"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
		"select 1; delete from t",
	}
	fc := newFakeCluster(t, 2, defaultCfg())
	for _, w := range writes {
		fc.mocks[0].ExpectQuery(q(w)).WillReturnRows(oneRow())
	}
	for _, w := range writes {
		rows, err := fc.db.Query(w)
		if err != nil {
			t.Fatalf("%s: %v", w, err)
		}
		rows.Close()
	}
}

func TestReadOnlyViolationOnReplicaReRunsOnPrimary(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	query := "SELECT my_function_that_writes()"
	fc.mocks[1].ExpectQuery(q(query)).WillReturnError(&pgconn.PgError{Code: "25006", Message: "cannot execute INSERT in a read-only transaction"})
	fc.mocks[0].ExpectQuery(q(query)).WillReturnRows(oneRow())
	ctx, route := WithRoute(context.Background())
	var x int
	if err := fc.db.QueryRowContext(ctx, query).Scan(&x); err != nil {
		t.Fatal(err)
	}
	if route.Node() != "node0:5432" || route.Reason() != ReasonReadOnly {
		t.Fatalf("route = %s %s, want node0:5432 read_only_error", route.Node(), route.Reason())
	}
	if got := fc.c.nodes[1].reroutes[rerouteReadOnly].Load(); got != 1 {
		t.Fatalf("read_only_error reroutes on the replica = %d, want 1", got)
	}
}

func TestTransactionStaysOnPrimary(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	m := fc.mocks[0]
	m.ExpectBegin()
	m.ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	m.ExpectExec(q("UPDATE t SET x = 2")).WillReturnResult(sqlmock.NewResult(0, 1))
	m.ExpectCommit()
	tx, err := fc.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var x int
	if err := tx.QueryRow("SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE t SET x = 2"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyTransactionOnOneReplica(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	m := fc.mocks[1]
	m.ExpectBegin()
	m.ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	m.ExpectQuery(q("SELECT y FROM u")).WillReturnRows(oneRow())
	m.ExpectCommit()
	tx, err := fc.db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var x int
	for _, s := range []string{"SELECT x FROM t", "SELECT y FROM u"} {
		if err := tx.QueryRow(s).Scan(&x); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestSerializableReadOnlyTransactionGoesToPrimary(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.mocks[0].ExpectBegin()
	fc.mocks[0].ExpectRollback()
	tx, err := fc.db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelSerializable})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
}

func TestConnReadsItsOwnWritesOnPrimary(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	ctx := context.Background()
	// Before any write the sql.Conn reads from a replica; after it, from the primary.
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (2)")).WillReturnResult(sqlmock.NewResult(0, 1))
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	sc, err := fc.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var x int
	if err := sc.QueryRowContext(ctx, "SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := sc.QueryRowContext(ctx, "SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	// The pin ends with the checkout.
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRow("SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
}

func TestUsePrimaryAndHints(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[0].ExpectQuery(q("/* pgreplica:primary */ SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[1].ExpectQuery(q("-- pgreplica:replica\nSELECT count(*) FROM t FOR UPDATE")).WillReturnRows(oneRow())
	var x int
	ctx, route := WithRoute(UsePrimary(context.Background()))
	if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if route.Reason() != ReasonUsePrimary {
		t.Fatalf("reason = %s, want use_primary", route.Reason())
	}
	ctx, route = WithRoute(context.Background())
	if err := fc.db.QueryRowContext(ctx, "/* pgreplica:primary */ SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if route.Reason() != ReasonHint || route.Node() != "node0:5432" {
		t.Fatalf("route = %s %s, want node0 hint", route.Node(), route.Reason())
	}
	if err := fc.db.QueryRowContext(ctx, "-- pgreplica:replica\nSELECT count(*) FROM t FOR UPDATE").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if route.Reason() != ReasonHint || route.Node() != "node1:5432" {
		t.Fatalf("route = %s %s, want node1 hint", route.Node(), route.Reason())
	}
}

func TestPreparedStatementsRouteLikePlainCalls(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t WHERE id = $1")).WithArgs(7).WillReturnRows(oneRow())
	fc.mocks[0].ExpectExec(q("UPDATE t SET x = $1")).WithArgs(3).WillReturnResult(sqlmock.NewResult(0, 1))
	fc.mocks[0].ExpectQuery(q("INSERT INTO t (x) VALUES ($1) RETURNING id")).WithArgs(4).WillReturnRows(oneRow())
	read, err := fc.db.Prepare("SELECT x FROM t WHERE id = $1")
	if err != nil {
		t.Fatal(err)
	}
	defer read.Close()
	var x int
	if err := read.QueryRow(int64(7)).Scan(&x); err != nil {
		t.Fatal(err)
	}
	upd, err := fc.db.Prepare("UPDATE t SET x = $1")
	if err != nil {
		t.Fatal(err)
	}
	defer upd.Close()
	if _, err := upd.Exec(int64(3)); err != nil {
		t.Fatal(err)
	}
	ins, err := fc.db.Prepare("INSERT INTO t (x) VALUES ($1) RETURNING id")
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	if err := ins.QueryRow(int64(4)).Scan(&x); err != nil {
		t.Fatal(err)
	}
}

func TestDownReplicaIsSkippedAndReadRetried(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.c.nodes[1].fakeErr = &pgconn.ConnectError{}
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	var x int
	for range 2 {
		if err := fc.db.QueryRow("SELECT x FROM t").Scan(&x); err != nil {
			t.Fatal(err)
		}
	}
	if fc.c.nodes[1].up.Load() {
		t.Fatal("replica 1 still up after its connection failed")
	}
}

func TestReadFailingBeforeFirstRowIsRetriedElsewhere(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnError(io.ErrUnexpectedEOF)
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnError(&pgconn.PgError{Code: "40001", Message: "canceling statement due to conflict with recovery"})
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	ctx, route := WithRoute(context.Background())
	var x int
	if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if route.Node() != "node0:5432" || route.Reason() != ReasonRetry {
		t.Fatalf("route = %s %s, want node0 retry", route.Node(), route.Reason())
	}
	if !fc.c.nodes[1].up.Load() || !fc.c.nodes[2].up.Load() {
		t.Fatal("one broken connection or a recovery conflict took its node out of routing")
	}
}

func TestStatementErrorsAreNotRetried(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.mocks[1].ExpectQuery(q("SELECT 1/0")).WillReturnError(&pgconn.PgError{Code: "22012", Message: "division by zero"})
	err := fc.db.QueryRow("SELECT 1/0").Scan(new(int))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "22012" {
		t.Fatalf("err = %v, want the server's 22012 unwrapped", err)
	}
}

// Errors by which a standby refuses a read that the primary can serve
// re-run it there, with their own route reason; the primary then serves
// the rest of the checkout (a replica may not have what the read saw).
func TestStandbyRefusalsReRunOnPrimary(t *testing.T) {
	for _, tc := range []struct {
		code string
		want Reason
	}{
		{"0A000", ReasonRecoveryError}, // unlogged table
		{"55000", ReasonRecoveryError}, // recovery is in progress
		{"XX000", ReasonRecoveryError}, // cannot assign OIDs during recovery
		{"42P01", ReasonUndefinedObject},
		{"42703", ReasonUndefinedObject},
		{"42883", ReasonUndefinedObject},
		{"42704", ReasonUndefinedObject},
		{"3F000", ReasonUndefinedObject},
	} {
		t.Run(tc.code, func(t *testing.T) {
			fc := newFakeCluster(t, 1, defaultCfg())
			fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnError(&pgconn.PgError{Code: tc.code})
			fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
			fc.mocks[0].ExpectQuery(q("SELECT y FROM t")).WillReturnRows(oneRow())
			ctx, route := WithRoute(context.Background())
			sc, err := fc.db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			if err := sc.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err != nil {
				t.Fatal(err)
			}
			if route.Node() != "node0:5432" || route.Reason() != tc.want {
				t.Fatalf("route = %s %s, want node0:5432 %s", route.Node(), route.Reason(), tc.want)
			}
			if err := sc.QueryRowContext(ctx, "SELECT y FROM t").Scan(new(int)); err != nil {
				t.Fatal(err)
			}
			if route.Node() != "node0:5432" || route.Reason() != ReasonPinned {
				t.Fatalf("the next read went to %s (%s); want the primary, pinned", route.Node(), route.Reason())
			}
			if got := fc.c.nodes[1].reroutes[rerouteStandbyError].Load(); got != 1 {
				t.Fatalf("standby_error reroutes = %d, want 1", got)
			}
		})
	}
}

// A replica that refuses a new connection for want of a slot (53300) is
// full, not down: reads go elsewhere for a while, and it stays up.
func TestFullReplicaIsSkippedNotDown(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.c.cfg.MonitorInterval = time.Hour
	fc.c.nodes[1].fakeErr = fmt.Errorf("connect: %w", &pgconn.PgError{Code: "53300", Message: "sorry, too many clients already"})
	for range 3 {
		fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	}
	for range 3 {
		if err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
	}
	n := fc.c.nodes[1]
	if !n.up.Load() || !n.serverFull() {
		t.Fatalf("up=%v full=%v, want up and full", n.up.Load(), n.serverFull())
	}
	if got := n.reroutes[rerouteFull].Load(); got != 3 {
		t.Fatalf("full reroutes = %d, want 3 (one refusal, then skipped twice)", got)
	}
	if st := n.status(false, time.Second); st.State != StateFull {
		t.Fatalf("state = %s, want %s", st.State, StateFull)
	}
}

type panickyPolicy struct{}

func (panickyPolicy) Choose([]Candidate) int { panic("boom") }

// A Policy that panics fails the read with an error naming it, and
// database/sql gets its connection back.
func TestPanickingPolicyReturnsAnError(t *testing.T) {
	cfg := defaultCfg()
	cfg.Policy = panickyPolicy{}
	fc := newFakeCluster(t, 2, cfg)
	for range 5 {
		err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int))
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "panickyPolicy") || !strings.Contains(err.Error(), "boom") {
			t.Fatalf("err = %v, want ErrPolicy naming panickyPolicy", err)
		}
	}
	if st := fc.db.Stats(); st.InUse != 0 || st.OpenConnections > 1 {
		t.Fatalf("db stats %+v: connections leaked", st)
	}
}

// Session state stays with the database/sql connection that made it: its
// later statements go to the primary, on the same physical connection,
// across checkouts; another connection does not get it.
// Session state that is more than plain settings (here a temporary table;
// plain settings follow the reads to replicas: settings_test.go) keeps the
// conn's reads on the primary across checkouts.
func TestSessionStateStaysWithItsConn(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.db.SetMaxOpenConns(1)
	fc.mocks[0].ExpectExec(q("CREATE TEMP TABLE tmp (x int)")).WillReturnResult(sqlmock.NewResult(0, 0))
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if _, err := fc.db.Exec("CREATE TEMP TABLE tmp (x int)"); err != nil {
		t.Fatal(err)
	}
	ctx, route := WithRoute(context.Background())
	for range 2 {
		if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
		if route.Node() != "node0:5432" || route.Reason() != ReasonPinned {
			t.Fatalf("route = %s %s, want node0:5432 pinned", route.Node(), route.Reason())
		}
	}
	if got := fc.c.nodes[0].inFlight.Load(); got != 1 {
		t.Fatalf("primary leases held between checkouts = %d, want 1", got)
	}
	fc.db.SetMaxIdleConns(0) // closes the idle conn
	if got := fc.c.nodes[0].inFlight.Load(); got != 0 {
		t.Fatalf("primary leases held after the conn closed = %d, want 0", got)
	}
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if route.Node() != "node1:5432" {
		t.Fatalf("a new conn read from %s, want the replica", route.Node())
	}
}

// A statement that changes session state goes to the primary even when a
// hint asks for a replica.
func TestSessionStateIgnoresReplicaHint(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	const set = "/* pgreplica:replica */ SELECT set_config('search_path', 'app', false)"
	fc.mocks[0].ExpectQuery(q(set)).WillReturnRows(oneRow())
	if err := fc.db.QueryRow(set).Scan(new(int)); err != nil {
		t.Fatal(err)
	}
}

func TestNoRetryAfterFirstStatementOfAConn(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	ctx := context.Background()
	fc.mocks[1].ExpectQuery(q("SELECT 1")).WillReturnRows(oneRow())
	fc.mocks[1].ExpectQuery(q("SELECT 2")).WillReturnError(io.ErrUnexpectedEOF)
	sc, err := fc.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.QueryRowContext(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if err := sc.QueryRowContext(ctx, "SELECT 2").Scan(new(int)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want the replica's error, not a silent switch", err)
	}
}

func TestAllReplicasDown(t *testing.T) {
	for _, fallback := range []bool{true, false} {
		t.Run(fmt.Sprint("fallback=", fallback), func(t *testing.T) {
			cfg := defaultCfg()
			cfg.DisableFallback = !fallback
			fc := newFakeCluster(t, 2, cfg)
			fc.c.nodes[1].up.Store(false)
			fc.c.nodes[2].up.Store(false)
			ctx, route := WithRoute(context.Background())
			err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int))
			if !fallback {
				if !errors.Is(err, ErrNoReplica) {
					t.Fatalf("err = %v, want ErrNoReplica", err)
				}
				return
			}
			fc.mocks[0].ExpectQuery(q("SELECT y FROM t")).WillReturnRows(oneRow())
			if err := fc.db.QueryRowContext(ctx, "SELECT y FROM t").Scan(new(int)); err != nil {
				t.Fatal(err)
			}
			if route.Reason() != ReasonFallback {
				t.Fatalf("reason = %s, want fallback", route.Reason())
			}
		})
	}
}

func TestLaggingReplicaIsAvoidedUnlessTheCallAllowsIt(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.c.nodes[1].setBehind(2 * time.Second)
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	for range 2 {
		if err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
	}
	// Allowing 30s, both replicas qualify again; allowing 100ms only node 2.
	fc.c.nodes[2].setBehind(50 * time.Millisecond)
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	for range 2 {
		if err := fc.db.QueryRowContext(WithMaxLag(context.Background(), 30*time.Second), "SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
	}
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRowContext(WithMaxLag(context.Background(), 100*time.Millisecond), "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
}

func TestWeightedPolicy(t *testing.T) {
	cfg := defaultCfg()
	cfg.Policy = Weighted(0, 1)
	fc := newFakeCluster(t, 2, cfg)
	for range 20 {
		fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	}
	for range 20 {
		if err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
	}
}

// After a failover the node listed first can serve reads as a replica: its
// Candidate.Index is 0, and Weighted gives it no weight instead of
// panicking.
func TestWeightedPolicyWithFormerPrimaryAsCandidate(t *testing.T) {
	w := Weighted(2, 1)
	cands := []Candidate{{Index: 0}, {Index: 2}}
	for range 100 {
		if got := w.Choose(cands); got != 1 {
			t.Fatalf("Weighted chose %d: the node listed first has no weight", got)
		}
	}
	if got := w.Choose([]Candidate{{Index: 0}}); got != 0 {
		t.Fatalf("Weighted chose %d of one candidate", got)
	}
}

func TestPolicies(t *testing.T) {
	cands := []Candidate{{Index: 1, InFlight: 5}, {Index: 2, InFlight: 1}, {Index: 3, InFlight: 3}}
	if got := LeastBusy().Choose(cands); got != 1 {
		t.Fatalf("LeastBusy chose %d, want 1", got)
	}
	rr := RoundRobin()
	for i := range 6 {
		if got := rr.Choose(cands); got != i%3 {
			t.Fatalf("RoundRobin call %d chose %d", i, got)
		}
	}
	seen := map[int]int{}
	w := Weighted(1, 0, 3)
	for range 4000 {
		seen[w.Choose(cands)]++
	}
	if seen[1] != 0 || seen[2] < 2500 || seen[0] < 700 {
		t.Fatalf("Weighted(1,0,3) spread = %v", seen)
	}
	r := Random()
	seen = map[int]int{}
	for range 3000 {
		seen[r.Choose(cands)]++
	}
	for i := range 3 {
		if seen[i] < 800 {
			t.Fatalf("Random spread = %v", seen)
		}
	}
}

func TestSessionReadsFollowItsWrites(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	ctx := WithSession(context.Background())
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	// No probe of the primary since the write: only the primary is safe.
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	ctx2, route := WithRoute(ctx)
	if err := fc.db.QueryRowContext(ctx2, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if route.Reason() != ReasonSession {
		t.Fatalf("reason = %s, want session", route.Reason())
	}
	// A probe after the write says the primary is at 100; the replica at 90
	// does not qualify, at 100 it does.
	fc.c.primarySample.Store(&lsnSample{at: monoNow(), lsn: 100})
	fc.c.nodes[1].replayLSN.Store(90)
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRowContext(ctx2, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	fc.c.nodes[1].replayLSN.Store(100)
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRowContext(ctx2, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	// A read without the session never waited for anything.
	fc.c.nodes[1].replayLSN.Store(0)
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
}

func TestClosedConnectorRefusesConnections(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.c.Close()
	if _, err := fc.c.Connect(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestSessionWriteThroughQueryCountsWhenTheCheckoutEnds(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	sess := WithSession(context.Background())
	ctx := context.Background()
	fc.c.nodes[1].replayLSN.Store(1000)

	// INSERT … RETURNING on a held sql.Conn: the row is back, the commit
	// may not be (pgx returns the first row before the implicit commit).
	fc.mocks[0].ExpectQuery(q("INSERT INTO t (x) VALUES (1) RETURNING id")).WillReturnRows(oneRow())
	sc, err := fc.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.QueryRowContext(sess, "INSERT INTO t (x) VALUES (1) RETURNING id").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	// A probe after the first row must not settle the write.
	fc.c.primarySample.Store(&lsnSample{at: monoNow(), lsn: 100})
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	rctx, route := WithRoute(sess)
	if err := fc.db.QueryRowContext(rctx, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if route.Reason() != ReasonSession {
		t.Fatalf("reason = %s while the write's checkout is open, want session", route.Reason())
	}
	sc.Close()
	// The checkout ended: the first probe that starts after it settles it.
	fc.c.primarySample.Store(&lsnSample{at: monoNow(), lsn: 500})
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRowContext(rctx, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if route.Reason() != ReasonRead {
		t.Fatalf("reason = %s after the probe, want read", route.Reason())
	}
}

func TestSessionBehindReplicasIsNotAFallback(t *testing.T) {
	cfg := defaultCfg()
	cfg.DisableFallback = true
	fc := newFakeCluster(t, 1, cfg)
	sess := WithSession(context.Background())
	fc.mocks[0].ExpectExec(q("UPDATE t SET x = 1")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(sess, "UPDATE t SET x = 1"); err != nil {
		t.Fatal(err)
	}
	fc.c.primarySample.Store(&lsnSample{at: monoNow(), lsn: 100})
	fc.c.nodes[1].replayLSN.Store(50)
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	ctx, route := WithRoute(sess)
	if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatalf("a healthy replica behind the session's write: err = %v, want the primary to answer", err)
	}
	if route.Reason() != ReasonSession {
		t.Fatalf("reason = %s, want session", route.Reason())
	}
	// A read-only transaction in the session goes to the primary too.
	fc.mocks[0].ExpectBegin()
	fc.mocks[0].ExpectCommit()
	tx, err := fc.db.BeginTx(sess, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestLastRecordEnd(t *testing.T) {
	for _, c := range []struct{ in, want uint64 }{
		{8192*5 + 24, 8192 * 5},       // short page header
		{16<<20*3 + 40, 16 << 20 * 3}, // long header at a segment start
		{8192*5 + 100, 8192*5 + 100},
		{8192 * 5, 8192 * 5},
	} {
		if got := lastRecordEnd(c.in); got != c.want {
			t.Errorf("lastRecordEnd(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}

// A new connection to a replica that is terminated while it starts up
// (pg_terminate_backend, 57P01) is that connection's failure: the read
// goes to another replica and the node stays up; the monitor decides.
func TestTerminatedNewConnectionIsNotNodeDown(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.c.nodes[1].fakeErr = fmt.Errorf("connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})
	fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	n := fc.c.nodes[1]
	if !n.up.Load() || n.serverFull() {
		t.Fatalf("up=%v full=%v, want up and not full", n.up.Load(), n.serverFull())
	}
	if got := n.reroutes[rerouteRetry].Load(); got != 1 || n.reroutes[rerouteDown].Load() != 0 {
		t.Fatalf("reroutes retry=%d down=%d, want 1 and 0", got, n.reroutes[rerouteDown].Load())
	}
}

// A probe refused with 53300 (the node has no free slot for the monitor's
// new connection) reports the node full, not down.
func TestProbeRefusedForWantOfASlotIsFull(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	m := &monitor{c: fc.c, interval: time.Second, lagging: make([]bool, len(fc.c.nodes))}
	results := make([]probeResult, len(fc.c.nodes))
	results[0] = probeResult{lsn: 100, flushLSN: 100}
	results[1] = probeResult{err: fmt.Errorf("connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "sorry, too many clients already"})}
	results[2] = probeResult{standby: true, lsn: 100}
	m.apply(fc.c.nodes, results)
	n := fc.c.nodes[1]
	if !n.up.Load() || !n.serverFull() {
		t.Fatalf("up=%v full=%v, want up and full", n.up.Load(), n.serverFull())
	}
	if st := n.status(false, time.Second); st.State != StateFull {
		t.Fatalf("state = %s, want %s", st.State, StateFull)
	}
	if fc.c.topo.Load().primary != fc.c.nodes[0] {
		t.Fatal("the primary changed")
	}
}
