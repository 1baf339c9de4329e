package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// targetPolicy sends reads to the replica listed at target (a DSN index)
// while it is set and a candidate; otherwise it picks at random.
type targetPolicy struct{ target atomic.Int64 }

func (p *targetPolicy) Choose(c []pgreplica.Candidate) int {
	if want := int(p.target.Load()); want > 0 {
		for i, cd := range c {
			if cd.Index == want {
				return i
			}
		}
	}
	return rand.IntN(len(c))
}

const settingsReplicaConns = 6

// rlsSettingsDB makes a table whose row-level security policy shows a row
// only to the user named by current_setting('app.user_id'), for the role
// settings_reader, with rows for users u0..u7 (5 each), and opens a DB
// whose pools' AfterConnect sets that role on every connection.
func rlsSettingsDB(t *testing.T, ctx context.Context, pol pgreplica.Policy) (*sql.DB, string) {
	t.Helper()
	cl := testcluster.Cluster()
	if err := cl.Exec(ctx, 0, `DO $$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'settings_reader') THEN CREATE ROLE settings_reader NOLOGIN; END IF;
	END $$; GRANT settings_reader TO `+sandbox.DefaultUser); err != nil {
		t.Fatal(err)
	}
	table := testcluster.NewTable(t, ctx, "rls_settings", "owner text, n int")
	direct := testcluster.Direct(t, 0)
	mustExec(t, ctx, direct, "INSERT INTO "+table+" SELECT 'u' || (g % 8), g FROM generate_series(0, 39) g")
	mustExec(t, ctx, direct, "INSERT INTO "+table+" VALUES ('', -1)") // seen by a conn without the setting, if the policy were wrong
	mustExec(t, ctx, direct, "ALTER TABLE "+table+" ENABLE ROW LEVEL SECURITY")
	mustExec(t, ctx, direct, "CREATE POLICY by_user ON "+table+" TO settings_reader USING (owner = current_setting('app.user_id', true) AND owner <> '')")
	mustExec(t, ctx, direct, "GRANT SELECT ON "+table+" TO settings_reader")
	testcluster.WaitReplayed(t, ctx)
	db := testcluster.OpenConfig(t, func(cfg *pgreplica.Config) {
		cfg.Policy = pol
		for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
			pc.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
				_, err := c.Exec(ctx, "SET ROLE settings_reader")
				return err
			}
		}
	}, monitorInterval, "primary_max_conns=12", fmt.Sprintf("replica_max_conns=%d", settingsReplicaConns))
	return db, table
}

// The usual row-level-security pattern: each request takes a connection,
// sets app.user_id with set_config(…, false) (or SET), and reads. Each of
// 8 workers, one per user, sees only its user's rows and its own setting,
// and at least 90% of the reads are served by replicas (before, a conn's
// set_config sent all 400 to the primary). Afterwards no pooled replica
// connection holds a user's setting, and each keeps the role its
// AfterConnect set. With database/sql's idle conns, each worker's requests
// reuse conns that hold an earlier request's setting (as with pgx, a
// setting stays with its database/sql connection); with none kept idle,
// every request's conn is new while the replica connections are pooled,
// and a ninth worker that sets nothing reads alongside: it never sees a
// user's row or setting.
func TestSettingsReachReplicasWithRowLevelSecurity(t *testing.T) {
	for _, idle := range []int{16, 0} {
		t.Run(fmt.Sprintf("max_idle_conns=%d", idle), func(t *testing.T) { testSettingsWithRLS(t, idle) })
	}
}

func testSettingsWithRLS(t *testing.T, maxIdle int) {
	ctx := testCtx(t)
	pol := &targetPolicy{}
	db, table := rlsSettingsDB(t, ctx, pol)
	db.SetMaxIdleConns(maxIdle)
	read := "SELECT inet_server_port(), coalesce(string_agg(DISTINCT owner, ','), ''), count(*), " +
		"coalesce(current_setting('app.user_id', true), '') FROM " + table

	const users, requests, readsPerRequest = 8, 25, 2
	var replicaReads, reads, plainReads atomic.Int64
	errs := make(chan error, 100)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	var wg sync.WaitGroup
	var done atomic.Int64
	for u := range users {
		user := fmt.Sprintf("u%d", u)
		wg.Go(func() {
			defer done.Add(1)
			for i := range requests {
				c, err := db.Conn(ctx)
				if err != nil {
					report(err)
					return
				}
				if u%2 == 0 {
					_, err = c.ExecContext(ctx, "SELECT set_config('app.user_id', $1, false)", user)
				} else {
					_, err = c.ExecContext(ctx, "SET app.user_id = '"+user+"'")
				}
				if err != nil {
					c.Close()
					report(fmt.Errorf("%s request %d: set: %w", user, i, err))
					return
				}
				for r := range readsPerRequest {
					var port int
					var owners, setting string
					var n int
					if err := c.QueryRowContext(ctx, read).Scan(&port, &owners, &n, &setting); err != nil {
						report(fmt.Errorf("%s request %d read %d: %w", user, i, r, err))
						break
					}
					reads.Add(1)
					if isReplicaPort(port) {
						replicaReads.Add(1)
					}
					if owners != user || n != 5 || setting != user {
						report(fmt.Errorf("%s request %d read %d on %s: rows of %q (%d), app.user_id %q; want only %s's 5",
							user, i, r, testcluster.Role(port), owners, n, setting, user))
					}
				}
				c.Close()
			}
		})
	}
	if maxIdle == 0 {
		// Every conn it gets is new: it has made no setting.
		wg.Go(func() {
			for done.Load() < users {
				var port int
				var owners, setting string
				var n int
				if err := db.QueryRowContext(ctx, read).Scan(&port, &owners, &n, &setting); err != nil {
					report(fmt.Errorf("plain read: %w", err))
					return
				}
				plainReads.Add(1)
				if n != 0 || setting != "" {
					report(fmt.Errorf("a read of a conn that set nothing, on %s, sees rows of %q (%d), app.user_id %q: another conn's setting",
						testcluster.Role(port), owners, n, setting))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total, onReplicas := reads.Load(), replicaReads.Load()
	t.Logf("%d of %d reads after a setting served by replicas; %d reads of a conn without settings alongside", onReplicas, total, plainReads.Load())
	if total != users*requests*readsPerRequest {
		t.Fatalf("%d reads ran, want %d", total, users*requests*readsPerRequest)
	}
	if onReplicas*10 < total*9 {
		t.Fatalf("%d of %d reads after a setting served by replicas, want at least 90%%", onReplicas, total)
	}
	// database/sql's idle conns keep their settings, as with pgx: close
	// them, so that the check's conns are new ones that set nothing.
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(settingsReplicaConns)
	checkReplicaPoolsClean(t, ctx, db, pol, settingsReplicaConns)
}

// checkReplicaPoolsClean checks out, on each replica in turn, as many
// connections as its pool holds at once, so that every pooled connection
// answers: none has an app.user_id value, and each keeps the role its
// AfterConnect set.
func checkReplicaPoolsClean(t *testing.T, ctx context.Context, db *sql.DB, pol *targetPolicy, poolSize int) {
	t.Helper()
	defer pol.target.Store(0)
	for i, n := range testcluster.Cluster().Nodes {
		if i == 0 {
			continue
		}
		pol.target.Store(int64(i))
		conns := make([]*sql.Conn, poolSize)
		pids := map[int]bool{}
		for k := range conns {
			var port, pid int
			var setting, role string
			// The policy picks the node only while it is usable: on a
			// loaded machine a probe may take it out of routing for a
			// moment, and the read rightly goes elsewhere. Such a conn is
			// put back and the check asks again (a liveness wait).
			testcluster.WaitUntil(t, time.Minute, "a conn whose read "+testcluster.Role(n.Port)+" serves", func() bool {
				c, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.QueryRowContext(ctx, "SELECT inet_server_port(), pg_backend_pid(), coalesce(current_setting('app.user_id', true), '<undefined>'), current_user").
					Scan(&port, &pid, &setting, &role); err != nil {
					t.Fatal(err)
				}
				if port != n.Port {
					c.Close()
					return false
				}
				conns[k] = c
				return true
			})
			if setting != "" && setting != "<undefined>" {
				t.Errorf("pooled connection %d of %s has app.user_id %q, left by another conn", pid, testcluster.Role(port), setting)
			}
			if role != "settings_reader" {
				t.Errorf("pooled connection %d of %s runs as %s, want AfterConnect's settings_reader", pid, testcluster.Role(port), role)
			}
			pids[pid] = true
		}
		for _, c := range conns {
			c.Close()
		}
		if len(pids) != poolSize {
			t.Fatalf("%d distinct connections of %s answered, want its pool's %d", len(pids), testcluster.Role(n.Port), poolSize)
		}
	}
}

// BenchmarkSettingsRequest is one request of the row-level-security
// pattern: a conn, set_config(…, false), one read, the conn back.
// "replicas" is this version (the setting replayed on a replica
// connection, then set back); "pinned" keeps the conn on the primary, as
// any session state but a plain setting does (what every set_config did
// before); "no setting" is the read alone, for scale.
func BenchmarkSettingsRequest(b *testing.B) {
	ctx := context.Background()
	db := testcluster.Open(b, monitorInterval)
	db.SetMaxIdleConns(8)
	for _, bc := range []struct{ name, set string }{
		{"replicas", "SELECT set_config('app.user_id', $1, false)"},
		{"pinned", "SELECT set_config('role', current_user, false), $1::text"},
		{"no setting", ""},
	} {
		db.SetMaxIdleConns(0) // a conn the last case pinned pins no more
		db.SetMaxIdleConns(8)
		b.Run(bc.name, func(b *testing.B) {
			replicas := 0
			for i := 0; b.Loop(); i++ {
				c, err := db.Conn(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if bc.set != "" {
					if _, err := c.ExecContext(ctx, bc.set, fmt.Sprintf("u%d", i%8)); err != nil {
						b.Fatal(err)
					}
				}
				var port int
				if err := c.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
					b.Fatal(err)
				}
				if isReplicaPort(port) {
					replicas++
				}
				c.Close()
			}
			b.ReportMetric(float64(replicas)/float64(b.N), "replica-share")
		})
	}
}
