package integration

import (
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// sqlx picks its placeholder style (?, $1, :name, @p1) from the driver
// name passed to sqlx.Open, and knows only the names of common drivers
// ("postgres", "pgx", …). For "pgreplica" it would keep '?' placeholders,
// which PostgreSQL rejects, and NamedExec would compile :name to '?'.
// BindDriver tells it that pgreplica speaks PostgreSQL's $1 style.
func init() { sqlx.BindDriver(pgreplica.DriverName, sqlx.DOLLAR) }

type sqlxAuthor struct {
	ID   int64  `db:"id"`
	Name string `db:"name"`
	Port int    `db:"port"`
}

// sqlx over pgreplica: Get and Select are plain reads served by replicas,
// NamedExec and a NamedQuery INSERT … RETURNING run on the primary.
func TestSqlx(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "sqlx_authors", "id bigserial PRIMARY KEY, name text NOT NULL")
	testcluster.NoLeaks(t)
	db, err := sqlx.Open(pgreplica.DriverName, testcluster.DSN(monitorInterval))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	if got := db.Rebind("SELECT ? WHERE ? = ?"); got != "SELECT $1 WHERE $2 = $3" {
		t.Fatalf("Rebind = %q: BindDriver did not take", got)
	}

	rctx, route := pgreplica.WithRoute(ctx)
	res, err := db.NamedExecContext(rctx, "INSERT INTO "+table+" (name) VALUES (:name)",
		[]map[string]any{{"name": "Ursula"}, {"name": "Italo"}})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Fatalf("NamedExec inserted %d rows, want 2", n)
	}
	wantPrimary(t, "NamedExec", route, pgreplica.ReasonWrite)

	rows, err := sqlx.NamedQueryContext(rctx, db, "INSERT INTO "+table+" (name) VALUES (:name) RETURNING id, name, inet_server_port() AS port",
		sqlxAuthor{Name: "Octavia"})
	if err != nil {
		t.Fatal(err)
	}
	var created sqlxAuthor
	if !rows.Next() {
		t.Fatalf("NamedQuery returned no row: %v", rows.Err())
	}
	defer rows.Close()
	if err := rows.StructScan(&created); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if created.Port != primaryPort() || created.Name != "Octavia" || created.ID == 0 {
		t.Fatalf("NamedQuery INSERT … RETURNING gave %+v on %s", created, testcluster.Role(created.Port))
	}
	wantPrimary(t, "NamedQuery", route, pgreplica.ReasonClassifier)
	direct := testcluster.Direct(t, 0)
	if n := queryInt(t, ctx, direct, "SELECT count(*) FROM "+table); n != 3 {
		t.Fatalf("the primary has %d authors, want 3", n)
	}
	testcluster.WaitReplicaReads(t, ctx, db.DB) // the default mode: reads follow db's writes

	var one sqlxAuthor
	if err := db.GetContext(rctx, &one, db.Rebind("SELECT id, name, inet_server_port() AS port FROM "+table+" WHERE id = ?"), created.ID); err != nil {
		t.Fatal(err)
	}
	if one.Name != "Octavia" || !isReplicaPort(one.Port) {
		t.Fatalf("Get = %+v from %s, want Octavia from a replica", one, testcluster.Role(one.Port))
	}
	if !replicaRead(route.Reason()) {
		t.Fatalf("Get routed for reason %s", route.Reason())
	}

	var all []sqlxAuthor
	if err := db.SelectContext(ctx, &all, "SELECT id, name, inet_server_port() AS port FROM "+table+" ORDER BY name"); err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].Name != "Italo" || all[1].Name != "Octavia" || all[2].Name != "Ursula" {
		t.Fatalf("Select = %+v", all)
	}
	for _, a := range all {
		if !isReplicaPort(a.Port) {
			t.Fatalf("Select served by %s", testcluster.Role(a.Port))
		}
	}

	// A transaction through sqlx stays on the primary.
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.NamedExecContext(ctx, "UPDATE "+table+" SET name = :name WHERE id = :id", sqlxAuthor{ID: created.ID, Name: "Octavia E."}); err != nil {
		t.Fatal(err)
	}
	var inTx sqlxAuthor
	if err := tx.GetContext(ctx, &inTx, "SELECT id, name, inet_server_port() AS port FROM "+table+" WHERE id = $1", created.ID); err != nil {
		t.Fatal(err)
	}
	if inTx.Port != primaryPort() || inTx.Name != "Octavia E." {
		t.Fatalf("read in the sqlx transaction: %+v on %s", inTx, testcluster.Role(inTx.Port))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var name string
	if err := direct.QueryRowContext(ctx, "SELECT name FROM "+table+" WHERE id = $1", created.ID).Scan(&name); err != nil || name != "Octavia E." {
		t.Fatalf("after commit the primary has %q (%v)", name, err)
	}
}
