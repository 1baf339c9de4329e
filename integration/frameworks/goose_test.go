package frameworks

import (
	"context"
	"database/sql"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// gooseMigrations: a table, a column with an index built concurrently
// (outside a transaction), and seed rows.
var gooseMigrations = fstest.MapFS{
	"00001_create_accounts.sql": {Data: []byte(`-- +goose Up
CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL);
-- +goose Down
DROP TABLE accounts;
`)},
	"00002_add_email.sql": {Data: []byte(`-- +goose Up
ALTER TABLE accounts ADD COLUMN email text;
-- +goose Down
ALTER TABLE accounts DROP COLUMN email;
`)},
	"00003_index_email.sql": {Data: []byte(`-- +goose NO TRANSACTION
-- +goose Up
CREATE UNIQUE INDEX CONCURRENTLY accounts_email ON accounts (email);
-- +goose Down
DROP INDEX CONCURRENTLY accounts_email;
`)},
	"00004_seed.sql": {Data: []byte(`-- +goose Up
INSERT INTO accounts (name, email) VALUES ('ada', 'ada@example.com'), ('grace', 'grace@example.com');
-- +goose Down
DELETE FROM accounts;
`)},
}

const gooseLatest = 4

func newGoose(t *testing.T, db *sql.DB, opts ...goose.ProviderOption) *goose.Provider {
	t.Helper()
	p, err := goose.NewProvider(goose.DialectPostgres, db, gooseMigrations, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sessionLocker is goose's Postgres session locker, probing every second.
func sessionLocker(t *testing.T) goose.ProviderOption {
	t.Helper()
	l, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 60))
	if err != nil {
		t.Fatal(err)
	}
	return goose.WithSessionLocker(l)
}

// goose Up with the session locker on a fresh database: the lock and
// every migration run on the primary; the application then reads the
// seeded rows from a replica; Up again applies nothing.
func TestGooseUp(t *testing.T) {
	ctx := testCtx(t)
	dsn := freshDatabase(t, ctx, "goose")
	db, rec := openDSN(t, dsn)
	p := newGoose(t, db, sessionLocker(t))

	m := rec.mark()
	t0 := time.Now()
	res, err := p.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Up took %v", time.Since(t0))
	if len(res) != gooseLatest {
		t.Fatalf("Up applied %d migrations, want %d", len(res), gooseLatest)
	}
	evs := rec.since(m)
	wantReason(t, "Up", evs, "pg_try_advisory_lock", pgreplica.ReasonClassifier)
	for _, e := range evs {
		if e.port != primaryPort() && e.reason != pgreplica.ReasonRead {
			t.Fatalf("Up: %v ran off the primary", e)
		}
	}
	for _, part := range []string{"pg_try_advisory_lock", "CREATE TABLE accounts", "CONCURRENTLY", "INSERT INTO accounts", "pg_advisory_unlock"} {
		found := false
		for _, e := range evs {
			if e.port == primaryPort() && strings.Contains(e.sql, part) {
				found = true
			}
		}
		if !found {
			t.Fatalf("Up: no statement with %q on the primary; all: %v", part, evs)
		}
	}
	if v, err := p.GetDBVersion(ctx); err != nil || v != gooseLatest {
		t.Fatalf("GetDBVersion = %d, %v; want %d", v, err, gooseLatest)
	}

	// The application, on a *sql.DB of its own: goose's conn held a session
	// advisory lock, and a conn with session state may keep its primary
	// connection (and so send its reads there) until database/sql closes it.
	testcluster.WaitReplayed(t, ctx)
	app, _ := openDSN(t, dsn)
	var n, port int
	if err := app.QueryRowContext(ctx, "SELECT count(*), inet_server_port() FROM accounts").Scan(&n, &port); err != nil {
		t.Fatal(err)
	}
	if n != 2 || !isReplicaPort(port) {
		t.Fatalf("after Up the application read %d accounts on %s, want 2 on a replica", n, testcluster.Role(port))
	}

	// A second deploy: nothing pending, nothing applied.
	again := newGoose(t, db, sessionLocker(t))
	if res, err := again.Up(ctx); err != nil || len(res) != 0 {
		t.Fatalf("second Up applied %d migrations, err %v; want 0", len(res), err)
	}
}

// goose Up while both replicas are a little behind (replay paused, within
// max_replica_lag): Up and the locked version read are on the primary and
// succeed. Reads that land on a replica that has not replayed the new
// tables yet get 42P01 there; pgreplica must re-run them on the primary.
func TestGooseUpWhileReplicasLag(t *testing.T) {
	ctx := testCtx(t)
	dsn := freshDatabase(t, ctx, "goose_lag", "max_replica_lag=1m")
	db, rec := openDSN(t, dsn)
	for _, n := range testcluster.Cluster().Nodes[1:] {
		if err := n.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.ResumeReplay(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}

	p := newGoose(t, db, sessionLocker(t))
	res, err := p.Up(ctx)
	if err != nil {
		t.Fatalf("Up with replicas behind: %v; statements: %v", err, rec.since(0))
	}
	if len(res) != gooseLatest {
		t.Fatalf("Up applied %d migrations, want %d", len(res), gooseLatest)
	}
	if v, err := p.GetDBVersion(ctx); err != nil || v != gooseLatest {
		t.Fatalf("GetDBVersion (locked) = %d, %v; want %d", v, err, gooseLatest)
	}

	// The application's first read of the new table, replicas still
	// behind: a replica answers 42P01 and the read must move to the primary.
	t.Run("read of the new table", func(t *testing.T) {
		m := rec.mark()
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
			t.Fatalf("read right after Up: %v (SQLSTATE %s); statements: %v", err, pgCode(err), rec.since(m))
		}
		if n != 2 {
			t.Fatalf("read %d accounts right after Up, want 2", n)
		}
	})
	// Another process's provider without a locker: its first check of the
	// version table runs on a replica that does not have it yet, so goose
	// tries to create it on the primary, fails (42P07) and retries a second
	// later on that sql.Conn, now pinned to the primary: the right version.
	t.Run("version without a locker", func(t *testing.T) {
		m := rec.mark()
		other := newGoose(t, db)
		if v, err := other.GetDBVersion(ctx); err != nil || v != gooseLatest {
			t.Fatalf("GetDBVersion without a locker = %d, %v (SQLSTATE %s); want %d; statements: %v", v, err, pgCode(err), gooseLatest, rec.since(m))
		}
	})
}

// Two providers (two deploys of the same service) race on a fresh
// database with the session locker: exactly one applies the migrations,
// the other waits for the lock and applies nothing. While a migration
// runs, the advisory lock is held on the primary and on no replica.
func TestGooseLockerRace(t *testing.T) {
	ctx := testCtx(t)
	dsn := freshDatabase(t, ctx, "goose_race")

	type lockCount struct{ primary, replicas int }
	var (
		mu   sync.Mutex
		seen []lockCount
	)
	direct := make([]*sql.DB, len(testcluster.Cluster().Nodes))
	for i := range direct {
		direct[i] = testcluster.Direct(t, i)
	}
	// advisoryLocks counts goose's advisory lock held on node i.
	advisoryLocks := func(i int) int {
		var n int
		if err := direct[i].QueryRowContext(ctx,
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"+
				" AND ((classid::bigint << 32) | objid::bigint) = $1", lock.DefaultLockID).Scan(&n); err != nil {
			t.Error(err)
		}
		return n
	}
	// A slow Go migration: the other provider tries the lock meanwhile.
	slow := goose.NewGoMigration(5, &goose.GoFunc{RunTx: func(ctx context.Context, tx *sql.Tx) error {
		c := lockCount{primary: advisoryLocks(0)}
		for i := 1; i < len(testcluster.Cluster().Nodes); i++ {
			c.replicas += advisoryLocks(i)
		}
		mu.Lock()
		seen = append(seen, c)
		mu.Unlock()
		time.Sleep(1500 * time.Millisecond)
		_, err := tx.ExecContext(ctx, "INSERT INTO accounts (name) VALUES ('migration 5')")
		return err
	}}, nil)

	type outcome struct {
		applied int
		err     error
	}
	out := make([]outcome, 2)
	providers := make([]*goose.Provider, 2)
	for i := range providers {
		db, _ := openDSN(t, dsn)
		providers[i] = newGoose(t, db, sessionLocker(t), goose.WithGoMigrations(slow))
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, p := range providers {
		wg.Go(func() {
			<-start
			res, err := p.Up(ctx)
			out[i] = outcome{len(res), err}
		})
	}
	close(start)
	wg.Wait()

	for i, o := range out {
		if o.err != nil {
			t.Fatalf("provider %d: %v", i, o.err)
		}
	}
	if a, b := out[0].applied, out[1].applied; a+b != gooseLatest+1 || (a != 0 && b != 0) {
		t.Fatalf("providers applied %d and %d migrations; want all %d by exactly one", a, b, gooseLatest+1)
	}
	if len(seen) != 1 || seen[0].primary != 1 || seen[0].replicas != 0 {
		t.Fatalf("the slow migration ran %d time(s) and saw goose's lock held %+v; want once, on the primary only", len(seen), seen)
	}
}

// goose without a locker, deploy after deploy on one *sql.DB, while both
// replicas replay nothing: each Up lists the applied versions on a fresh
// sql.Conn, whose first read may go to a replica. The replicas have the
// version table and version 1 (replayed before the pause), not version 2.
// In the default mode the third Up reads the versions the *sql.DB wrote
// and applies exactly 3 and 4. With read_your_writes=off it reads the
// paused replica's list, takes 2 for pending and runs it again: ALTER TABLE
// … ADD COLUMN email fails, 42701.
func TestGooseDeploysWhileReplicasPaused(t *testing.T) {
	upTo := func(n int) fstest.MapFS {
		fs := fstest.MapFS{}
		for name, f := range gooseMigrations {
			if v := int(name[4] - '0'); v <= n {
				fs[name] = f
			}
		}
		return fs
	}
	for _, mode := range []string{"default", "off"} {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t)
			params := []string{"max_replica_lag=off", "hedge_after=off"}
			if mode != "default" {
				params = append(params, "read_your_writes="+mode)
			}
			db, rec := openDSN(t, freshDatabase(t, ctx, "goose_deploys", params...))
			up := func(n int) ([]*goose.MigrationResult, error) {
				t.Helper()
				p, err := goose.NewProvider(goose.DialectPostgres, db, upTo(n))
				if err != nil {
					t.Fatal(err)
				}
				return p.Up(ctx)
			}
			if res, err := up(1); err != nil || len(res) != 1 {
				t.Fatalf("first deploy: %d applied, %v; want 1", len(res), err)
			}
			testcluster.WaitReplayed(t, ctx)
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
			if res, err := up(2); err != nil || len(res) != 1 {
				t.Fatalf("second deploy: %d applied, %v; want 1", len(res), err)
			}
			m := rec.mark()
			res, err := up(gooseLatest)
			if mode == "off" {
				if pgCode(err) != "42701" {
					t.Fatalf("read_your_writes=off, third deploy: %d applied, err %v; want 42701 (migration 2 run again after a stale read of the versions)", len(res), err)
				}
				return
			}
			if err != nil || len(res) != 2 || res[0].Source.Version != 3 {
				t.Fatalf("third deploy: %v applied, %v; want 3 and 4; statements: %v", res, err, rec.since(m))
			}
			p, err := goose.NewProvider(goose.DialectPostgres, db, gooseMigrations)
			if err != nil {
				t.Fatal(err)
			}
			if v, err := p.GetDBVersion(ctx); err != nil || v != gooseLatest {
				t.Fatalf("GetDBVersion = %d, %v; want %d", v, err, gooseLatest)
			}
			if res, err := up(gooseLatest); err != nil || len(res) != 0 {
				t.Fatalf("fourth deploy: %d applied, %v; want 0", len(res), err)
			}
		})
	}
}
