package frameworks

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// A pgx QueryTracer set once in Config.Tracer sees every statement with the
// node that ran it (its *pgx.Conn) and pgreplica's reason (RouteReason);
// the monitor's probes are not traced.
func TestTracer(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "traced", "id int PRIMARY KEY, v text")
	db, rec := open(t, "monitor_interval=100ms")

	m := rec.mark()
	if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1, 'a')"); err != nil {
		t.Fatal(err)
	}
	evs := rec.since(m)
	onPrimary(t, "Exec INSERT", evs)
	wantReason(t, "Exec INSERT", evs, "INSERT INTO", pgreplica.ReasonWrite)

	m = rec.mark()
	var id int
	if err := db.QueryRowContext(ctx, "INSERT INTO "+table+" VALUES (2, 'b') RETURNING id").Scan(&id); err != nil {
		t.Fatal(err)
	}
	wantReason(t, "INSERT … RETURNING", rec.since(m), "RETURNING", pgreplica.ReasonClassifier)
	onPrimary(t, "INSERT … RETURNING", rec.since(m))

	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	evs = rec.since(m)
	onReplica(t, "SELECT", evs)
	wantReason(t, "SELECT", evs, "SELECT count(*)", pgreplica.ReasonRead)
	if n != 2 {
		t.Fatalf("read %d rows, want 2", n)
	}

	m = rec.mark()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE "+table+" SET v = 'c' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	evs = rec.since(m)
	onPrimary(t, "transaction", evs)
	for _, part := range []string{"begin", "UPDATE", "commit"} {
		wantReason(t, "transaction", evs, part, pgreplica.ReasonTransaction)
	}

	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	rtx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rtx.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := rtx.Commit(); err != nil {
		t.Fatal(err)
	}
	evs = rec.since(m)
	onReplica(t, "read-only transaction", evs)
	wantReason(t, "read-only transaction", evs, "begin", pgreplica.ReasonTransaction)

	// Probes run every 100ms on their own connections: none is traced.
	m = rec.mark()
	time.Sleep(500 * time.Millisecond)
	if evs := rec.since(m); len(evs) != 0 {
		t.Fatalf("the tracer saw statements nobody ran: %v", evs)
	}
}

// A tracer set directly on one node's ConnConfig also learns the reason.
func TestTracerOnOneNode(t *testing.T) {
	ctx := testCtx(t)
	testcluster.NoLeaks(t)
	cfg, err := pgreplica.ParseConfig(testcluster.DSN(monitorInterval))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg.Primary.ConnConfig.Tracer = rec
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := db.ExecContext(ctx, "SELECT 1 /* traced */"); err != nil {
		t.Fatal(err)
	}
	evs := rec.since(0)
	onPrimary(t, "Exec", evs)
	wantReason(t, "Exec", evs, "traced", pgreplica.ReasonWrite)
	for _, e := range evs {
		if strings.Contains(e.sql, "pg_is_in_recovery") {
			t.Fatalf("a probe was traced: %v", e)
		}
	}
}
