package frameworks

import (
	"context"
	"strings"
	"testing"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

type gormWidget struct {
	ID   uint   `gorm:"primaryKey"`
	Name string `gorm:"index"`
}

// gormWidgetV2 is gormWidget one migration later: a new column.
type gormWidgetV2 struct {
	ID    uint   `gorm:"primaryKey"`
	Name  string `gorm:"index"`
	Color string
}

func (gormWidgetV2) TableName() string { return "gorm_widgets" }

// GORM's migrator with both replicas replaying nothing (max_replica_lag
// off keeps them in routing): AutoMigrate twice, a new column, and
// drop-then-migrate, in the default mode and with read_your_writes=off.
// Its catalog reads (HasTable, HasColumn, ColumnTypes on
// information_schema and pg_catalog) follow its own DDL through the same
// *sql.DB, so they must see it in every mode; before catalog reads were
// bounded by the DDL record, they read the paused replicas and the second
// AutoMigrate failed (42P07), as did the drop-then-migrate.
func TestGORMAutoMigrateWhileReplicasPaused(t *testing.T) {
	for _, mode := range []string{"default", "off"} {
		t.Run(mode, func(t *testing.T) {
			params := []string{"max_replica_lag=off", "hedge_after=off"}
			if mode != "default" {
				params = append(params, "read_your_writes="+mode)
			}
			gormMigrateWhileReplicasPaused(t, params)
		})
	}
}

func gormMigrateWhileReplicasPaused(t *testing.T, params []string) {
	ctx := testCtx(t)
	dsn := freshDatabase(t, ctx, "gorm_ddl", params...)
	db, rec := openDSN(t, dsn)
	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	g := gdb.WithContext(ctx)
	for _, n := range testcluster.Cluster().Nodes[1:] {
		t.Cleanup(func() {
			if err := n.ResumeReplay(context.Background()); err != nil {
				t.Error(err)
			}
		})
		if err := n.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// changedSchema fails t if the statements since m include DDL.
	changedSchema := func(what string, m int) {
		t.Helper()
		for _, e := range rec.since(m) {
			s := strings.ToUpper(strings.TrimSpace(e.sql))
			if strings.HasPrefix(s, "CREATE") || strings.HasPrefix(s, "ALTER") {
				t.Fatalf("%s changed the schema again: %v", what, e)
			}
		}
	}

	for i, model := range []any{&gormWidget{}, &gormWidget{}, &gormWidgetV2{}, &gormWidgetV2{}} {
		m := rec.mark()
		if err := g.AutoMigrate(model); err != nil {
			t.Fatalf("AutoMigrate %d: %v (SQLSTATE %s); statements: %v", i+1, err, pgCode(err), rec.since(m))
		}
		if i == 1 || i == 3 {
			changedSchema("an AutoMigrate with nothing to do", m)
		}
	}
	if !g.Migrator().HasColumn(&gormWidgetV2{}, "Color") {
		t.Fatal("HasColumn after AutoMigrate added it: false")
	}
	if err := g.Migrator().DropTable(&gormWidgetV2{}); err != nil {
		t.Fatal(err)
	}
	if g.Migrator().HasTable(&gormWidgetV2{}) {
		t.Fatal("HasTable after DropTable: true")
	}
	m := rec.mark()
	if err := g.AutoMigrate(&gormWidgetV2{}); err != nil {
		t.Fatalf("AutoMigrate after DropTable: %v (SQLSTATE %s); statements: %v", err, pgCode(err), rec.since(m))
	}
	if err := g.Create(&gormWidgetV2{Name: "w", Color: "red"}).Error; err != nil {
		t.Fatal(err)
	}
}
