package frameworks

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

type bunBook struct {
	bun.BaseModel `bun:"table:bun_books"`
	ID            int64  `bun:"id,pk,autoincrement"`
	Title         string `bun:"title,unique,notnull"`
	Pages         int    `bun:"pages"`
}

// bun on pgreplica: bun.NewDB(db, pgdialect.New()).
func TestBun(t *testing.T) {
	ctx := testCtx(t)
	db, rec := openDSN(t, freshDatabase(t, ctx, "bun"))
	bdb := bun.NewDB(db, pgdialect.New())

	m := rec.mark()
	if _, err := bdb.NewCreateTable().Model((*bunBook)(nil)).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	onPrimary(t, "CreateTable", rec.since(m))
	testcluster.WaitReplayed(t, ctx)

	// Insert fills the ID through RETURNING (a query): the primary.
	m = rec.mark()
	dune := &bunBook{Title: "Dune", Pages: 412}
	if _, err := bdb.NewInsert().Model(dune).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	evs := rec.since(m)
	onPrimary(t, "Insert", evs)
	wantReason(t, "Insert", evs, "RETURNING", pgreplica.ReasonClassifier)
	if dune.ID == 0 {
		t.Fatal("Insert did not fill the ID")
	}
	more := []bunBook{{Title: "Solaris", Pages: 204}, {Title: "Ubik", Pages: 202}}
	if _, err := bdb.NewInsert().Model(&more).Exec(ctx); err != nil {
		t.Fatal(err)
	}

	// A unique violation is pgx's own, unwrapped error.
	_, err := bdb.NewInsert().Model(&bunBook{Title: "Dune"}).Exec(ctx)
	if _, ok := err.(*pgconn.PgError); !ok || pgCode(err) != "23505" {
		t.Fatalf("duplicate insert: %T %v, want an unwrapped *pgconn.PgError 23505", err, err)
	}

	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	var got bunBook
	if err := bdb.NewSelect().Model(&got).Where("id = ?", dune.ID).Scan(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := bdb.NewSelect().Model((*bunBook)(nil)).Where("pages > ?", 203).Count(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Title != "Dune" || n != 2 {
		t.Fatalf("Select read %+v and counted %d, want Dune and 2", got, n)
	}
	for _, e := range rec.since(m) {
		if !isReplicaPort(e.port) || e.reason != pgreplica.ReasonRead {
			t.Fatalf("Select/Count: %v not a read on a replica", e)
		}
	}

	m = rec.mark()
	if _, err := bdb.NewUpdate().Model(dune).Set("pages = ?", 500).WherePK().Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bdb.NewDelete().Model((*bunBook)(nil)).Where("title = ?", "Ubik").Exec(ctx); err != nil {
		t.Fatal(err)
	}
	onPrimary(t, "Update/Delete", rec.since(m))

	// A locking select: the primary.
	m = rec.mark()
	if err := bdb.NewSelect().Model(&got).Where("id = ?", dune.ID).For("UPDATE").Scan(ctx); err != nil {
		t.Fatal(err)
	}
	onPrimary(t, "For UPDATE", rec.since(m))

	// Session: the write just made is read back.
	sctx := pgreplica.WithSession(ctx)
	if _, err := bdb.NewUpdate().Model(dune).Set("pages = ?", 600).WherePK().Exec(sctx); err != nil {
		t.Fatal(err)
	}
	if err := bdb.NewSelect().Model(&got).Where("id = ?", dune.ID).Scan(sctx); err != nil || got.Pages != 600 {
		t.Fatalf("session read %+v (%v) after writing 600 pages", got, err)
	}

	// RunInTx with a nested RunInTx (a savepoint) that rolls back.
	m = rec.mark()
	errInner := errors.New("inner gives up")
	err = bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewInsert().Model(&bunBook{Title: "Roadside Picnic"}).Exec(ctx); err != nil {
			return err
		}
		if err := tx.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.NewInsert().Model(&bunBook{Title: "Hard to Be a God"}).Exec(ctx); err != nil {
				return err
			}
			return errInner
		}); !errors.Is(err, errInner) {
			t.Errorf("nested RunInTx: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	evs = rec.since(m)
	onPrimary(t, "RunInTx", evs)
	wantReason(t, "RunInTx", evs, "ROLLBACK TO SAVEPOINT", pgreplica.ReasonTransaction)
	var titles []string
	if err := bdb.NewSelect().Model((*bunBook)(nil)).Column("title").Order("title").Scan(pgreplica.UsePrimary(ctx), &titles); err != nil {
		t.Fatal(err)
	}
	if joinStrings(titles) != "Dune Roadside Picnic Solaris" {
		t.Fatalf("titles after RunInTx: %q", titles)
	}

	// A read-only transaction: one replica.
	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	err = bdb.RunInTx(ctx, &sql.TxOptions{ReadOnly: true}, func(ctx context.Context, tx bun.Tx) error {
		n, err = tx.NewSelect().Model((*bunBook)(nil)).Count(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	onReplica(t, "read-only RunInTx", rec.since(m))
	if n != 3 {
		t.Fatalf("read-only transaction counted %d, want 3", n)
	}
}
