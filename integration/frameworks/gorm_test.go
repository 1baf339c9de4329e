package frameworks

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

type gormProduct struct {
	ID    uint   `gorm:"primaryKey"`
	Code  string `gorm:"uniqueIndex;not null"`
	Price int
}

// GORM on pgreplica: every everyday operation, checked by the node each of
// its statements ran on (the tracer) and by data.
func TestGORM(t *testing.T) {
	ctx := testCtx(t)
	dsn := freshDatabase(t, ctx, "gorm")
	db, rec := openDSN(t, dsn)
	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{
		TranslateError: true, // needs the unwrapped *pgconn.PgError
		Logger:         logger.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	g := gdb.WithContext(ctx)

	// AutoMigrate on a fresh database: the catalogue reads may run on a
	// replica, CREATE TABLE on the primary. Once replayed, running it again
	// finds the table and changes nothing.
	m := rec.mark()
	if err := g.AutoMigrate(&gormProduct{}); err != nil {
		t.Fatal(err)
	}
	wantReason(t, "AutoMigrate", rec.since(m), "CREATE TABLE", pgreplica.ReasonWrite)
	testcluster.WaitReplayed(t, ctx)
	m = rec.mark()
	if err := g.AutoMigrate(&gormProduct{}); err != nil {
		t.Fatalf("second AutoMigrate: %v", err)
	}
	for _, e := range rec.since(m) {
		if e.port == primaryPort() && e.reason == pgreplica.ReasonWrite {
			t.Fatalf("second AutoMigrate changed the schema: %v", e)
		}
	}

	// Create: INSERT … RETURNING "id" in GORM's default transaction.
	m = rec.mark()
	lamp := gormProduct{Code: "lamp", Price: 30}
	if err := g.Create(&lamp).Error; err != nil {
		t.Fatal(err)
	}
	evs := rec.since(m)
	onPrimary(t, "Create", evs)
	wantReason(t, "Create", evs, `RETURNING "id"`, pgreplica.ReasonTransaction)
	if lamp.ID == 0 {
		t.Fatal("Create did not fill the ID from RETURNING")
	}
	batch := []gormProduct{{Code: "desk", Price: 200}, {Code: "chair", Price: 90}}
	if err := g.Create(&batch).Error; err != nil {
		t.Fatal(err)
	}

	// A unique violation is GORM's own error.
	m = rec.mark()
	err = g.Create(&gormProduct{Code: "lamp", Price: 1}).Error
	if !errors.Is(err, gorm.ErrDuplicatedKey) || pgCode(err) != "23505" {
		t.Fatalf("duplicate Create: %v, want gorm.ErrDuplicatedKey wrapping 23505", err)
	}
	onPrimary(t, "duplicate Create", rec.since(m))

	// Reads once the replicas caught up: a replica.
	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	var got gormProduct
	if err := g.First(&got, lamp.ID).Error; err != nil {
		t.Fatal(err)
	}
	if got.Code != "lamp" || got.Price != 30 {
		t.Fatalf("First read %+v", got)
	}
	onReplica(t, "First", rec.since(m))
	wantReason(t, "First", rec.since(m), "SELECT", pgreplica.ReasonRead)

	m = rec.mark()
	var count int64
	if err := g.Model(&gormProduct{}).Where("price > ?", 50).Count(&count).Error; err != nil {
		t.Fatal(err)
	}
	var all []gormProduct
	if err := g.Order("id").Find(&all).Error; err != nil {
		t.Fatal(err)
	}
	if count != 2 || len(all) != 3 {
		t.Fatalf("Count = %d, Find = %d rows; want 2 and 3", count, len(all))
	}
	for _, e := range rec.since(m) {
		if !isReplicaPort(e.port) {
			t.Fatalf("Count/Find: %v not on a replica", e)
		}
	}

	// A missing row is gorm.ErrRecordNotFound, from a replica.
	if err := g.First(&gormProduct{}, 999999).Error; !errors.Is(err, gorm.ErrRecordNotFound) {
		t.Fatalf("First of a missing row: %v", err)
	}

	// Update and delete: the primary.
	m = rec.mark()
	if err := g.Model(&lamp).Update("price", 35).Error; err != nil {
		t.Fatal(err)
	}
	if err := g.Where("code = ?", "chair").Delete(&gormProduct{}).Error; err != nil {
		t.Fatal(err)
	}
	onPrimary(t, "Update/Delete", rec.since(m))
	wantReason(t, "Update", rec.since(m), "UPDATE", pgreplica.ReasonTransaction)
	wantReason(t, "Delete", rec.since(m), "DELETE", pgreplica.ReasonTransaction)

	// A read in a session sees the write just made, with no wait.
	sctx := pgreplica.WithSession(ctx)
	gs := gdb.WithContext(sctx)
	if err := gs.Model(&lamp).Update("price", 40).Error; err != nil {
		t.Fatal(err)
	}
	var fresh gormProduct
	if err := gs.First(&fresh, lamp.ID).Error; err != nil {
		t.Fatal(err)
	}
	if fresh.Price != 40 {
		t.Fatalf("session read price %d after writing 40", fresh.Price)
	}

	// Transaction with a nested one (a savepoint) that rolls back.
	m = rec.mark()
	errInner := errors.New("inner gives up")
	err = g.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&gormProduct{Code: "shelf", Price: 60}).Error; err != nil {
			return err
		}
		if err := tx.Transaction(func(tx2 *gorm.DB) error {
			if err := tx2.Create(&gormProduct{Code: "rug", Price: 80}).Error; err != nil {
				return err
			}
			return errInner
		}); !errors.Is(err, errInner) {
			t.Errorf("nested transaction: %v", err)
		}
		// SELECT … FOR UPDATE inside: the transaction's node.
		var locked gormProduct
		return tx.Clauses(clause.Locking{Strength: "UPDATE"}).First(&locked, lamp.ID).Error
	})
	if err != nil {
		t.Fatal(err)
	}
	evs = rec.since(m)
	onPrimary(t, "Transaction", evs)
	wantReason(t, "Transaction", evs, "SAVEPOINT", pgreplica.ReasonTransaction)
	wantReason(t, "Transaction", evs, "ROLLBACK TO SAVEPOINT", pgreplica.ReasonTransaction)
	var codes []string
	if err := gdb.WithContext(pgreplica.UsePrimary(ctx)).Model(&gormProduct{}).Order("code").Pluck("code", &codes).Error; err != nil {
		t.Fatal(err)
	}
	if want := "desk lamp shelf"; joinStrings(codes) != want {
		t.Fatalf("after the transaction the products are %q, want %q (the savepoint's rug rolled back)", joinStrings(codes), want)
	}

	// A locking read outside a transaction: the primary.
	m = rec.mark()
	var locked gormProduct
	if err := g.Clauses(clause.Locking{Strength: "UPDATE"}).First(&locked, lamp.ID).Error; err != nil {
		t.Fatal(err)
	}
	onPrimary(t, "FOR UPDATE", rec.since(m))
	wantReason(t, "FOR UPDATE", rec.since(m), "FOR UPDATE", pgreplica.ReasonClassifier)
	m = rec.mark()
	if err := g.Clauses(clause.Locking{Strength: "SHARE"}).Find(&all).Error; err != nil {
		t.Fatal(err)
	}
	onPrimary(t, "FOR SHARE", rec.since(m))

	// A read-only transaction: one replica.
	testcluster.WaitReplicaReads(t, ctx, db)
	m = rec.mark()
	err = g.Transaction(func(tx *gorm.DB) error {
		return tx.Model(&gormProduct{}).Count(&count).Error
	}, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	onReplica(t, "read-only Transaction", rec.since(m))
	if count != 3 {
		t.Fatalf("read-only transaction counted %d, want 3", count)
	}
}

// gorm.Open with DriverName "pgreplica" and the DSN, as the README shows.
func TestGORMDriverName(t *testing.T) {
	ctx := testCtx(t)
	testcluster.NoLeaks(t)
	gdb, err := gorm.Open(postgres.New(postgres.Config{
		DriverName: pgreplica.DriverName,
		DSN:        testcluster.DSN(monitorInterval),
	}), &gorm.Config{TranslateError: true, Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := gdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	table := newTable(t, ctx, "gorm_dn", "id bigserial PRIMARY KEY, code text UNIQUE NOT NULL, price int")
	g := gdb.WithContext(ctx).Table(table)
	p := gormProduct{Code: "lamp", Price: 3}
	if err := g.Create(&p).Error; err != nil {
		t.Fatal(err)
	}
	if err := g.Create(&gormProduct{Code: "lamp"}).Error; !errors.Is(err, gorm.ErrDuplicatedKey) {
		t.Fatalf("duplicate: %v, want gorm.ErrDuplicatedKey", err)
	}
	testcluster.WaitReplicaReads(t, ctx, sqlDB)
	var port int
	if err := gdb.WithContext(ctx).Raw("SELECT inet_server_port() FROM "+table+" WHERE id = ?", p.ID).Scan(&port).Error; err != nil {
		t.Fatal(err)
	}
	if !isReplicaPort(port) {
		t.Fatalf("a read through GORM ran on %s, want a replica", testcluster.Role(port))
	}
	if _, err := pgreplica.ConnectorOf(context.Background(), sqlDB); err != nil {
		t.Fatalf("gorm's *sql.DB is not pgreplica's: %v", err)
	}
}

func joinStrings(s []string) string {
	out := ""
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out
}
