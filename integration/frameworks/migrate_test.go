package frameworks

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

var migrateGood = fstest.MapFS{
	"1_create_orders.up.sql":   {Data: []byte("CREATE TABLE orders (id bigserial PRIMARY KEY, total int NOT NULL);")},
	"1_create_orders.down.sql": {Data: []byte("DROP TABLE orders;")},
	"2_seed.up.sql":            {Data: []byte("INSERT INTO orders (total) VALUES (10), (20), (30);")},
	"2_seed.down.sql":          {Data: []byte("DELETE FROM orders;")},
}

// newMigrate opens golang-migrate on its own pgreplica *sql.DB through
// the pgx/v5 database driver's WithInstance (m.Close closes that *sql.DB).
func newMigrate(t *testing.T, dsn string, fsys fstest.MapFS) (*migrate.Migrate, *recorder) {
	t.Helper()
	db, rec := openDSN(t, dsn)
	drv, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := iofs.New(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, rec
}

// golang-migrate on pgreplica: Up, Version, a failed migration leaving the
// database dirty, Force, and the "table does not exist" detection that
// relies on the unwrapped *pgconn.PgError.
func TestMigrate(t *testing.T) {
	ctx := testCtx(t)
	dsn := freshDatabase(t, ctx, "migrate")

	m, rec := newMigrate(t, dsn, migrateGood)
	if _, _, err := m.Version(); !errors.Is(err, migrate.ErrNilVersion) {
		t.Fatalf("Version on a fresh database: %v, want ErrNilVersion", err)
	}
	mark := rec.mark()
	if err := m.Up(); err != nil {
		t.Fatal(err)
	}
	evs := rec.since(mark)
	onPrimary(t, "Up", evs)
	wantReason(t, "Up", evs, "pg_advisory_lock", pgreplica.ReasonWrite)
	if v, dirty, err := m.Version(); err != nil || v != 2 || dirty {
		t.Fatalf("Version after Up = %d, dirty %v, %v; want 2, clean", v, dirty, err)
	}
	if err := m.Up(); !errors.Is(err, migrate.ErrNoChange) {
		t.Fatalf("second Up: %v, want ErrNoChange", err)
	}

	testcluster.WaitReplayed(t, ctx)
	appDB, _ := openDSN(t, dsn)
	var n, port int
	if err := appDB.QueryRowContext(ctx, "SELECT count(*), inet_server_port() FROM orders").Scan(&n, &port); err != nil {
		t.Fatal(err)
	}
	if n != 3 || !isReplicaPort(port) {
		t.Fatalf("after Up the application read %d orders on %s, want 3 on a replica", n, testcluster.Role(port))
	}

	// A broken migration: the error carries the server's message and
	// position (migrate reads them from the unwrapped *pgconn.PgError),
	// and the database is left dirty at that version.
	broken := fstest.MapFS{"3_broken.up.sql": {Data: []byte("ALTER TABLE orders ADD COLUMN note text;\nSELEC 1;")}, "3_broken.down.sql": {Data: []byte("")}}
	for k, v := range migrateGood {
		broken[k] = v
	}
	m2, _ := newMigrate(t, dsn, broken)
	err := m2.Up()
	if err == nil || !strings.Contains(err.Error(), `migration failed: syntax error at or near "SELEC"`) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("broken migration: %v; want migrate's message built from the PgError (syntax error, line 2)", err)
	}
	if v, dirty, err := m2.Version(); err != nil || v != 3 || !dirty {
		t.Fatalf("Version after the broken migration = %d, dirty %v, %v; want 3, dirty", v, dirty, err)
	}
	var dirtyErr migrate.ErrDirty
	if err := m2.Up(); !errors.As(err, &dirtyErr) || dirtyErr.Version != 3 {
		t.Fatalf("Up on a dirty database: %v, want ErrDirty{3}", err)
	}
	if err := m2.Force(2); err != nil {
		t.Fatal(err)
	}
	if v, dirty, err := m2.Version(); err != nil || v != 2 || dirty {
		t.Fatalf("Version after Force(2) = %d, dirty %v, %v; want 2, clean", v, dirty, err)
	}

	// Drop removes every table, schema_migrations too: Version must
	// recognise 42P01 (a plain type assertion on *pgconn.PgError) and say
	// there is no version rather than fail.
	if err := m2.Drop(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m2.Version(); !errors.Is(err, migrate.ErrNilVersion) {
		t.Fatalf("Version after Drop: %v, want ErrNilVersion (table does not exist)", err)
	}
}

// golang-migrate while both replicas replay nothing, in the default mode
// and with read_your_writes=off: Up, Version, Up again (no change), Drop,
// then Up on the emptied database through a new instance (golang-migrate
// creates its version table in WithInstance only, on pgx alone too), every
// step seeing the previous one. WithInstance's sql.Conn takes its advisory
// lock first, so the version table's catalog check and every read after
// it run on the primary: this holds on the pinned conn, not on the DDL
// record.
func TestMigrateWhileReplicasPaused(t *testing.T) {
	for _, mode := range []string{"default", "off"} {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t)
			params := []string{"max_replica_lag=off", "hedge_after=off"}
			if mode != "default" {
				params = append(params, "read_your_writes="+mode)
			}
			dsn := freshDatabase(t, ctx, "migrate_paused", params...)
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
			for _, step := range []string{"Up", "Up after Drop"} {
				m, rec := newMigrate(t, dsn, migrateGood)
				mark := rec.mark()
				if err := m.Up(); err != nil {
					t.Fatalf("%s: %v (SQLSTATE %s); statements: %v", step, err, pgCode(err), rec.since(mark))
				}
				onPrimary(t, step, rec.since(mark))
				if v, dirty, err := m.Version(); err != nil || v != 2 || dirty {
					t.Fatalf("Version after %s = %d, dirty %v, %v; want 2, clean", step, v, dirty, err)
				}
				if err := m.Up(); !errors.Is(err, migrate.ErrNoChange) {
					t.Fatalf("%s again: %v, want ErrNoChange", step, err)
				}
				if step == "Up" {
					if err := m.Drop(); err != nil {
						t.Fatal(err)
					}
					if _, _, err := m.Version(); !errors.Is(err, migrate.ErrNilVersion) {
						t.Fatalf("Version after Drop: %v, want ErrNilVersion", err)
					}
				}
			}
		})
	}
}
