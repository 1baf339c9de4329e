package frameworks

import (
	"context"
	"database/sql"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/sqlgraph"
	"entgo.io/ent/schema/field"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// ent on pgreplica: entsql.OpenDB(dialect.Postgres, db). Generated ent
// clients run these same sqlgraph calls; no code generation is needed to
// exercise them.
func TestEnt(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "ent_users", "id bigserial PRIMARY KEY, name text UNIQUE NOT NULL, age int NOT NULL DEFAULT 0")
	db, rec := open(t)
	drv := entsql.OpenDB(dialect.Postgres, db)
	columns := []string{"id", "name", "age"}

	create := func(ctx context.Context, d dialect.Driver, name string, age int) (int64, error) {
		spec := sqlgraph.NewCreateSpec(table, sqlgraph.NewFieldSpec("id", field.TypeInt64))
		spec.SetField("name", field.TypeString, name)
		spec.SetField("age", field.TypeInt, age)
		if err := sqlgraph.CreateNode(ctx, d, spec); err != nil {
			return 0, err
		}
		return spec.ID.Value.(int64), nil
	}
	type user struct {
		id   int64
		name string
		age  int
	}
	query := func(ctx context.Context, d dialect.Driver, pred func(*entsql.Selector), mods ...func(*entsql.Selector)) []user {
		t.Helper()
		var users []user
		spec := sqlgraph.NewQuerySpec(table, columns, sqlgraph.NewFieldSpec("id", field.TypeInt64))
		spec.Predicate = pred
		spec.Modifiers = mods
		spec.Order = func(s *entsql.Selector) { s.OrderBy("id") }
		spec.ScanValues = func([]string) ([]any, error) {
			return []any{new(sql.NullInt64), new(sql.NullString), new(sql.NullInt64)}, nil
		}
		spec.Assign = func(_ []string, v []any) error {
			users = append(users, user{v[0].(*sql.NullInt64).Int64, v[1].(*sql.NullString).String, int(v[2].(*sql.NullInt64).Int64)})
			return nil
		}
		if err := sqlgraph.QueryNodes(ctx, d, spec); err != nil {
			t.Fatal(err)
		}
		return users
	}
	count := func(ctx context.Context, d dialect.Driver) int {
		t.Helper()
		n, err := sqlgraph.CountNodes(ctx, d, sqlgraph.NewQuerySpec(table, nil, sqlgraph.NewFieldSpec("id", field.TypeInt64)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// CreateNode: INSERT … RETURNING "id" through Query, on the primary.
	m := rec.mark()
	ada, err := create(ctx, drv, "ada", 36)
	if err != nil {
		t.Fatal(err)
	}
	evs := rec.since(m)
	onPrimary(t, "CreateNode", evs)
	wantReason(t, "CreateNode", evs, "RETURNING", pgreplica.ReasonClassifier)
	if _, err := create(ctx, drv, "grace", 85); err != nil {
		t.Fatal(err)
	}
	if _, err := create(ctx, drv, "linus", 20); err != nil {
		t.Fatal(err)
	}

	// A unique violation is ent's unique-constraint error.
	_, err = create(ctx, drv, "ada", 1)
	if !sqlgraph.IsUniqueConstraintError(err) || pgCode(err) != "23505" {
		t.Fatalf("duplicate CreateNode: %v, want IsUniqueConstraintError (23505)", err)
	}

	// Queries and counts after replay: replicas.
	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	got := query(ctx, drv, func(s *entsql.Selector) { s.Where(entsql.EQ("id", ada)) })
	if len(got) != 1 || got[0].name != "ada" || got[0].age != 36 {
		t.Fatalf("QueryNodes: %+v", got)
	}
	if n := count(ctx, drv); n != 3 {
		t.Fatalf("CountNodes = %d, want 3", n)
	}
	for _, e := range rec.since(m) {
		if !isReplicaPort(e.port) || e.reason != pgreplica.ReasonRead {
			t.Fatalf("QueryNodes/CountNodes: %v not a read on a replica", e)
		}
	}

	// UpdateNodes and DeleteNodes: the primary.
	m = rec.mark()
	upd := sqlgraph.NewUpdateSpec(table, columns, sqlgraph.NewFieldSpec("id", field.TypeInt64))
	upd.Predicate = func(s *entsql.Selector) { s.Where(entsql.EQ("name", "ada")) }
	upd.AddField("age", field.TypeInt, 1)
	if n, err := sqlgraph.UpdateNodes(ctx, drv, upd); err != nil || n != 1 {
		t.Fatalf("UpdateNodes: %d, %v", n, err)
	}
	del := sqlgraph.NewDeleteSpec(table, sqlgraph.NewFieldSpec("id", field.TypeInt64))
	del.Predicate = func(s *entsql.Selector) { s.Where(entsql.EQ("name", "linus")) }
	if n, err := sqlgraph.DeleteNodes(ctx, drv, del); err != nil || n != 1 {
		t.Fatalf("DeleteNodes: %d, %v", n, err)
	}
	onPrimary(t, "UpdateNodes/DeleteNodes", rec.since(m))

	// SELECT … FOR UPDATE: the primary.
	m = rec.mark()
	query(ctx, drv, func(s *entsql.Selector) { s.Where(entsql.EQ("id", ada)) }, func(s *entsql.Selector) { s.ForUpdate() })
	onPrimary(t, "ForUpdate", rec.since(m))
	wantReason(t, "ForUpdate", rec.since(m), "FOR UPDATE", pgreplica.ReasonClassifier)

	// A session reads its own write at once.
	sctx := pgreplica.WithSession(ctx)
	upd = sqlgraph.NewUpdateSpec(table, columns, sqlgraph.NewFieldSpec("id", field.TypeInt64))
	upd.Predicate = func(s *entsql.Selector) { s.Where(entsql.EQ("name", "grace")) }
	upd.SetField("age", field.TypeInt, 86)
	if _, err := sqlgraph.UpdateNodes(sctx, drv, upd); err != nil {
		t.Fatal(err)
	}
	if got := query(sctx, drv, func(s *entsql.Selector) { s.Where(entsql.EQ("name", "grace")) }); len(got) != 1 || got[0].age != 86 {
		t.Fatalf("session read %+v after setting age 86", got)
	}

	// A transaction (what a generated client.Tx runs): the primary.
	m = rec.mark()
	tx, err := drv.Tx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := create(ctx, entTx{tx}, "barbara", 70); err != nil {
		t.Fatal(err)
	}
	if got := query(ctx, entTx{tx}, func(s *entsql.Selector) { s.Where(entsql.EQ("name", "barbara")) }); len(got) != 1 {
		t.Fatalf("the transaction does not see its own row: %+v", got)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	evs = rec.since(m)
	onPrimary(t, "Tx", evs)
	wantReason(t, "Tx", evs, "INSERT", pgreplica.ReasonTransaction)

	// A read-only transaction: one replica.
	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	rtx, err := drv.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	n := count(ctx, entTx{rtx})
	if err := rtx.Commit(); err != nil {
		t.Fatal(err)
	}
	onReplica(t, "read-only BeginTx", rec.since(m))
	if n != 3 {
		t.Fatalf("read-only transaction counted %d, want 3", n)
	}
}

// entTx lets sqlgraph run inside a transaction, as a generated client's
// txDriver does.
type entTx struct{ tx dialect.Tx }

func (d entTx) Exec(ctx context.Context, q string, args, v any) error {
	return d.tx.Exec(ctx, q, args, v)
}
func (d entTx) Query(ctx context.Context, q string, args, v any) error {
	return d.tx.Query(ctx, q, args, v)
}
func (entTx) Dialect() string                          { return dialect.Postgres }
func (entTx) Close() error                             { return nil }
func (d entTx) Tx(context.Context) (dialect.Tx, error) { return dialect.NopTx(d), nil }
