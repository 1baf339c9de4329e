package pgreplica

import (
	"context"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

// decide and hedgeScope, the one place that says where a read goes and
// where its hedge may go.
func TestDecideHedgeScope(t *testing.T) {
	c := &conn{c: &Connector{cfg: Config{HedgeAfter: HedgeAuto}}}
	for _, tc := range []struct {
		query   string
		replica bool
		reason  Reason
		hedge   hedgeScope
	}{
		{"SELECT x FROM t WHERE id = $1", true, ReasonRead, hedgeAny},
		{"SELECT count(*), now() FROM t", true, ReasonRead, hedgeAny},
		{"SELECT my_write_fn()", true, ReasonRead, hedgeStandbys},
		{"SELECT * FROM t WHERE x = app.f(1)", true, ReasonRead, hedgeStandbys},
		{"/* pgreplica:replica */ SELECT x FROM t", true, ReasonHint, hedgeAny},
		{"/* pgreplica:replica */ SELECT my_fn()", true, ReasonHint, hedgeStandbys},
		{"/* pgreplica:replica */ SELECT pg_wal_replay_pause()", true, ReasonHint, hedgeNever},
		{"/* pgreplica:replica */ SELECT pg_terminate_backend(1)", true, ReasonHint, hedgeNever},
		{"/* pgreplica:replica */ SELECT pg_stat_reset()", true, ReasonHint, hedgeNever},
		{"/* pgreplica:primary */ SELECT 1", false, ReasonHint, hedgeNever},
		{"SELECT nextval('s')", false, ReasonClassifier, hedgeNever},
		{"SELECT set_config('a', 'b', false)", false, ReasonClassifier, hedgeNever},
	} {
		p := c.decide(nil, classify(tc.query))
		if p.replica != tc.replica || p.reason != tc.reason || p.hedge != tc.hedge {
			t.Errorf("decide(%q) = %+v; want replica %v, reason %s, hedge %d", tc.query, p, tc.replica, tc.reason, tc.hedge)
		}
	}

	pure := classify("SELECT 1")
	if p := c.decide(usePrimaryOptions(), pure); p.replica || p.reason != ReasonUsePrimary {
		t.Errorf("UsePrimary: %+v", p)
	}
	// A conn holding a primary connection (a Ping, a Prepare) hedges
	// only among standbys: it would hold two.
	c.primary.sc = fakeConn{}
	if p := c.decide(nil, pure); p.hedge != hedgeStandbys {
		t.Errorf("with a primary connection held: hedge %d; want standbys only", p.hedge)
	}
	c.primary.sc = nil
	c.statements = 1
	if p := c.decide(nil, pure); p.hedge != hedgeNever {
		t.Errorf("a checkout's second read: hedge %d; want never", p.hedge)
	}
	c.statements = 0
	c.c.cfg.HedgeAfter = HedgeOff
	if p := c.decide(nil, pure); p.hedge != hedgeNever {
		t.Errorf("hedging off: hedge %d", p.hedge)
	}
}

// usePrimaryOptions are the options of a UsePrimary context.
func usePrimaryOptions() *routeOptions { return optionsFrom(UsePrimary(context.Background())) }

type fakeConn struct{ nodeConn }

// A SELECT of a function that may write, answered by the primary however
// it got there, counts as a write of the session: a UsePrimary context, a
// primary hint, a pinned conn. A pure read there does not.
func TestPrimaryAnsweredFunctionCountsAsSessionWrite(t *testing.T) {
	const fn = "SELECT my_write_fn()"
	for _, tc := range []struct {
		name  string
		query string
		ctx   func(context.Context) context.Context
		pin   bool
		wrote bool
	}{
		{"use_primary", fn, UsePrimary, false, true},
		{"hint", "/* pgreplica:primary */ " + fn, nil, false, true},
		{"pinned", fn, nil, true, true},
		{"use_primary pure", "SELECT x FROM t", UsePrimary, false, false},
		{"pinned pure", "SELECT count(*) FROM t", nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 2, defaultCfg())
			ctx := WithSession(context.Background())
			s := optionsFrom(ctx).session
			sc, err := fc.db.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tc.pin {
				// Pinned by a write made without the session.
				fc.mocks[0].ExpectExec(q("UPDATE t SET x = 1")).WillReturnResult(sqlmock.NewResult(0, 1))
				if _, err := sc.ExecContext(context.Background(), "UPDATE t SET x = 1"); err != nil {
					t.Fatal(err)
				}
			}
			if tc.ctx != nil {
				ctx = tc.ctx(ctx)
			}
			fc.mocks[0].ExpectQuery(q(tc.query)).WillReturnRows(oneRow())
			if err := sc.QueryRowContext(ctx, tc.query).Scan(new(int)); err != nil {
				t.Fatal(err)
			}
			sc.Close()
			if s.wrote.Load() != tc.wrote {
				t.Fatalf("session wrote = %v; want %v", s.wrote.Load(), tc.wrote)
			}
			if tc.wrote && s.pending.Load() == 0 {
				t.Fatal("the write is not pending for the session's next reads")
			}
		})
	}
}

// WithRoute reports the node that refused a statement, not only the one
// that served it.
func TestRouteOfAFailedStatement(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnError(&pgconn.PgError{Code: "23505"})
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnError(&pgconn.PgError{Code: "22012"})
	ctx, route := WithRoute(context.Background())
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("INSERT succeeded")
	}
	if route.Node() != "node0:5432" || route.Reason() != ReasonWrite {
		t.Fatalf("route of the refused INSERT = %q %s; want node0:5432 write", route.Node(), route.Reason())
	}
	ctx, route = WithRoute(context.Background())
	if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err == nil {
		t.Fatal("read succeeded")
	}
	if route.Node() != "node1:5432" || route.Reason() != ReasonRead {
		t.Fatalf("route of the failed read = %q %s; want node1:5432 read", route.Node(), route.Reason())
	}
}

// A write refused by the server did not happen: no session write. A lost
// connection leaves it unknown: the session counts it.
func TestSessionWriteOfFailedExec(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	ctx := WithSession(context.Background())
	s := optionsFrom(ctx).session
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnError(&pgconn.PgError{Code: "23505"})
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("INSERT succeeded")
	}
	if s.wrote.Load() {
		t.Fatal("a refused INSERT counted as a session write")
	}
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (2)")).WillReturnError(context.DeadlineExceeded)
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err == nil {
		t.Fatal("INSERT succeeded")
	}
	if !s.wrote.Load() {
		t.Fatal("an INSERT that may have committed did not count as a session write")
	}
}

// set_config(…, true) outside a transaction lasts for its statement: it
// does not make the conn keep its primary connection, and later reads on
// the same database/sql conn go to replicas.
func TestSetConfigLocalIsNotSessionState(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	fc.db.SetMaxOpenConns(1)
	const set = "SELECT set_config('app.user', 'u1', true)"
	fc.mocks[0].ExpectQuery(q(set)).WillReturnRows(oneRow())
	for range 3 {
		fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	}
	if err := fc.db.QueryRow(set).Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ctx, route := WithRoute(context.Background())
		if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
		if route.Node() != "node1:5432" || route.Reason() != ReasonRead {
			t.Fatalf("read after set_config(…, true): %s %s; want node1:5432 read", route.Node(), route.Reason())
		}
	}
}
