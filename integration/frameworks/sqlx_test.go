package frameworks

import (
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// sqlx picks its placeholder style from the driver name and does not know
// "pgreplica": BindDriver tells it pgreplica speaks PostgreSQL's $1.
func init() { sqlx.BindDriver(pgreplica.DriverName, sqlx.DOLLAR) }

// sqlx on pgreplica: NamedExec on the primary, Get and Select on replicas.
func TestSqlx(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "sqlx_pets", "id bigserial PRIMARY KEY, name text NOT NULL")
	testcluster.NoLeaks(t)
	db, err := sqlx.Open(pgreplica.DriverName, testcluster.DSN(monitorInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := db.Rebind("SELECT ? WHERE ? = ?"); got != "SELECT $1 WHERE $2 = $3" {
		t.Fatalf("Rebind = %q: BindDriver did not take", got)
	}
	rctx, route := pgreplica.WithRoute(ctx)
	if _, err := db.NamedExecContext(rctx, "INSERT INTO "+table+" (name) VALUES (:name)", []map[string]any{{"name": "rex"}, {"name": "tom"}}); err != nil {
		t.Fatal(err)
	}
	if route.Node() != testcluster.Cluster().Nodes[0].Addr() {
		t.Fatalf("NamedExec ran on %s, want the primary", route.Node())
	}
	testcluster.WaitReplicaReads(t, ctx, db.DB)
	type pet struct {
		ID   int64  `db:"id"`
		Name string `db:"name"`
		Port int    `db:"port"`
	}
	var pets []pet
	if err := db.SelectContext(ctx, &pets, db.Rebind("SELECT id, name, inet_server_port() AS port FROM "+table+" WHERE name <> ? ORDER BY id"), "nobody"); err != nil {
		t.Fatal(err)
	}
	if len(pets) != 2 || pets[0].Name != "rex" || !isReplicaPort(pets[0].Port) {
		t.Fatalf("Select read %+v, want rex and tom from a replica", pets)
	}
	var one pet
	if err := db.GetContext(ctx, &one, "SELECT id, name, inet_server_port() AS port FROM "+table+" WHERE id = $1", pets[1].ID); err != nil {
		t.Fatal(err)
	}
	if one.Name != "tom" || !isReplicaPort(one.Port) {
		t.Fatalf("Get read %+v, want tom from a replica", one)
	}
}
