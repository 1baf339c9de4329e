package integration

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// typedRow is one row of the types table scanned the way an application
// using pgx's stdlib would scan it.
type typedRow struct {
	ID     int64
	Ints   []int64                 // int8[] through pgtype.Map.SQLScanner
	Flat   pgtype.FlatArray[int32] // int4[] likewise
	Name   sql.NullString
	Amount pgtype.Numeric
	At     sql.NullTime
	Doc    []byte // jsonb
	UID    pgtype.UUID
	Blob   []byte
}

const typedSelect = "SELECT id, ints, flat, name, amount, at, doc, uid, blob FROM %s ORDER BY id"

func scanTyped(t *testing.T, ctx context.Context, db *sql.DB, table string) []typedRow {
	t.Helper()
	rows, err := db.QueryContext(ctx, fmt.Sprintf(typedSelect, table))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := pgtype.NewMap()
	var out []typedRow
	for rows.Next() {
		var r typedRow
		if err := rows.Scan(&r.ID, m.SQLScanner(&r.Ints), m.SQLScanner(&r.Flat), &r.Name, &r.Amount, &r.At, &r.Doc, &r.UID, &r.Blob); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Values of pgx's types go in and come out through pgreplica exactly as
// through plain pgx stdlib, and the column metadata matches.
func TestPgxTypesAsWithPlainStdlib(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	direct := testcluster.Direct(t, 0)
	table := testcluster.NewTable(t, ctx, "types", `id bigint PRIMARY KEY, ints int8[], flat int4[], name text, amount numeric(20,6),
		at timestamptz, doc jsonb, uid uuid, blob bytea`)

	var amount pgtype.Numeric
	if err := amount.Scan("12345678.901234"); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 2, 29, 13, 14, 15, 123456000, time.FixedZone("x", 5*3600+30*60))
	uid := pgtype.UUID{Bytes: [16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8}, Valid: true}
	blob := []byte{0, 1, 2, 0xfe, 0xff, '\\', 'x'}
	doc := map[string]any{"b": []any{true, nil, 1.5}, "a": "é"}

	// Written through pgreplica (the primary), with Go values as arguments.
	insert := "INSERT INTO " + table + " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
	mustExec(t, ctx, db, insert, 1, []int64{1, -2, 1 << 40}, pgtype.FlatArray[int32]{7, 8}, sql.NullString{String: "named", Valid: true},
		amount, at, doc, uid, blob)
	mustExec(t, ctx, db, insert, 2, nil, nil, sql.NullString{}, nil, nil, nil, nil, nil)
	testcluster.WaitReplicaReads(t, ctx, db) // the default mode: reads follow db's writes

	rctx, route := pgreplica.WithRoute(ctx)
	got := scanTyped(t, rctx, db, table)
	if !testcluster.IsReplicaAddr(route.Node()) {
		t.Fatalf("typed read served by %s, want a replica", route.Node())
	}
	want := scanTyped(t, ctx, direct, table)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("through pgreplica:\n%+v\nthrough pgx stdlib:\n%+v", got, want)
	}
	if len(got) != 2 {
		t.Fatalf("%d rows, want 2", len(got))
	}

	// And the values are the ones written.
	r := got[0]
	if !reflect.DeepEqual(r.Ints, []int64{1, -2, 1 << 40}) || !reflect.DeepEqual(r.Flat, pgtype.FlatArray[int32]{7, 8}) {
		t.Errorf("arrays = %v %v", r.Ints, r.Flat)
	}
	if r.Name != (sql.NullString{String: "named", Valid: true}) || got[1].Name.Valid {
		t.Errorf("names = %+v %+v", r.Name, got[1].Name)
	}
	if v, _ := r.Amount.Value(); v != "12345678.901234" {
		t.Errorf("amount = %v", v)
	}
	if !r.At.Valid || !r.At.Time.Equal(at) {
		t.Errorf("at = %v, want %v", r.At, at)
	}
	var gotDoc map[string]any
	if err := json.Unmarshal(r.Doc, &gotDoc); err != nil || !reflect.DeepEqual(gotDoc, doc) {
		t.Errorf("doc = %s (%v), want %v", r.Doc, err, doc)
	}
	if r.UID != uid {
		t.Errorf("uid = %v", r.UID)
	}
	if !reflect.DeepEqual(r.Blob, blob) {
		t.Errorf("blob = %v", r.Blob)
	}
	n := got[1]
	if n.Ints != nil || n.Amount.Valid || n.At.Valid || n.Doc != nil || n.UID.Valid || n.Blob != nil {
		t.Errorf("NULL row = %+v", n)
	}

	// Scanning into plain Go types works too (uuid as text, jsonb as string).
	var uidText, docText string
	if err := db.QueryRowContext(ctx, "SELECT uid, doc FROM "+table+" WHERE id = 1").Scan(&uidText, &docText); err != nil {
		t.Fatal(err)
	}
	if uidText != "12345678-9abc-def0-0102-030405060708" || docText != `{"a": "é", "b": [true, null, 1.5]}` {
		t.Errorf("uuid as text %q, jsonb as text %q", uidText, docText)
	}

	// Column metadata.
	cols := func(db *sql.DB) []*sql.ColumnType {
		rows, err := db.QueryContext(ctx, fmt.Sprintf(typedSelect, table))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		ct, err := rows.ColumnTypes()
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	mine, theirs := cols(db), cols(direct)
	if len(mine) != len(theirs) {
		t.Fatalf("%d columns, stdlib reports %d", len(mine), len(theirs))
	}
	for i := range mine {
		a, b := mine[i], theirs[i]
		al, aok := a.Length()
		bl, bok := b.Length()
		ap, as, adok := a.DecimalSize()
		bp, bs, bdok := b.DecimalSize()
		an, anok := a.Nullable()
		bn, bnok := b.Nullable()
		if a.Name() != b.Name() || a.DatabaseTypeName() != b.DatabaseTypeName() || a.ScanType() != b.ScanType() ||
			al != bl || aok != bok || ap != bp || as != bs || adok != bdok || an != bn || anok != bnok {
			t.Errorf("column %d: pgreplica %s %s %v, stdlib %s %s %v", i, a.Name(), a.DatabaseTypeName(), a.ScanType(),
				b.Name(), b.DatabaseTypeName(), b.ScanType())
		}
	}
	wantTypes := []string{"INT8", "_INT8", "_INT4", "TEXT", "NUMERIC", "TIMESTAMPTZ", "JSONB", "UUID", "BYTEA"}
	for i, ct := range mine {
		if ct.DatabaseTypeName() != wantTypes[i] {
			t.Errorf("column %s: DatabaseTypeName %q, want %q", ct.Name(), ct.DatabaseTypeName(), wantTypes[i])
		}
	}
	if p, s, ok := mine[4].DecimalSize(); !ok || p != 20 || s != 6 {
		t.Errorf("numeric(20,6) DecimalSize = %d %d %v", p, s, ok)
	}
}

// A statement whose context ends is abandoned at once with the context's
// error, and the *sql.DB goes on working.
func TestContextDeadlineCancelsStatement(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	testcluster.WaitReplayed(t, ctx)

	for _, tc := range []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"read on a replica", func(ctx context.Context) error {
			var s string
			return db.QueryRowContext(ctx, "SELECT pg_sleep(10)::text").Scan(&s)
		}},
		{"Exec on the primary", func(ctx context.Context) error {
			_, err := db.ExecContext(ctx, "SELECT pg_sleep(10)")
			return err
		}},
		{"in a transaction", func(ctx context.Context) error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			_, err = tx.ExecContext(ctx, "SELECT pg_sleep(10)")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := tc.run(dctx)
			elapsed := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("error %v, want context.DeadlineExceeded", err)
			}
			// Far below the 10 s the statement asked for: it was abandoned,
			// not waited for. (A bound for liveness, not a benchmark.)
			if elapsed > 5*time.Second {
				t.Fatalf("the call returned after %s", elapsed)
			}
			for range 10 {
				if p := testcluster.Port(t, ctx, db); !isReplicaPort(p) {
					t.Fatalf("read after the cancelled statement served by %s", testcluster.Role(p))
				}
			}
			if _, err := db.ExecContext(ctx, "SELECT 1"); err != nil {
				t.Fatalf("Exec after the cancelled statement: %v", err)
			}
		})
	}
}

// sql.Conn.Raw hands out pgreplica's conn, which leads to the Connector
// and its Status; db.Stats reports database/sql's pool of them.
func TestRawConnAndStats(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	connector, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}

	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testcluster.Port(t, ctx, c)
	if s := db.Stats(); s.InUse != 1 || s.OpenConnections < 1 {
		t.Fatalf("db.Stats() with one sql.Conn held: %+v", s)
	}
	err = c.Raw(func(dc any) error {
		rc, ok := dc.(interface{ Connector() *pgreplica.Connector })
		if !ok {
			return errors.New("the driver conn has no Connector() *pgreplica.Connector")
		}
		if rc.Connector() != connector {
			return errors.New("Connector() is not the one ConnectorOf returns")
		}
		if _, ok := dc.(driver.Conn); !ok {
			return errors.New("not a driver.Conn")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st := connector.Status()
	if st.Primary != primaryAddr() || !st.PrimaryUp || len(st.Nodes) != 3 {
		t.Fatalf("Status() = %+v", st)
	}
	for i, ns := range st.Nodes {
		wantRole := pgreplica.RoleReplica
		if i == 0 {
			wantRole = pgreplica.RolePrimary
		}
		if ns.Addr != testcluster.Cluster().Nodes[i].Addr() || ns.Role != wantRole {
			t.Fatalf("node %d: %s %s", i, ns.Addr, ns.Role)
		}
	}
	c.Close()
	if s := db.Stats(); s.InUse != 0 || s.Idle < 1 || s.OpenConnections != s.Idle {
		t.Fatalf("db.Stats() after the sql.Conn was closed: %+v", s)
	}
}
