package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

var appSeq atomic.Int64

// uniqueApp is an application_name no other test's connections carry, to
// count this test's backends in pg_stat_activity.
func uniqueApp(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, time.Now().UnixNano(), appSeq.Add(1))
}

func connectorOf(t *testing.T, ctx context.Context, db *sql.DB) *pgreplica.Connector {
	t.Helper()
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pool_max_conns sizes every node's pool, and primary_max_conns or
// replica_max_conns override it for their role: the pools report that
// size, and with more statements waiting than the primary's pool holds, the
// primary never has more of this DB's backends running them than that.
func TestPoolMaxConnsSizesEveryPool(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "poolmax", "id int")
	for _, c := range []struct {
		params           []string
		primary, replica int32
	}{
		{[]string{"pool_max_conns=2"}, 2, 2},
		{[]string{"pool_max_conns=2", "replica_max_conns=3"}, 2, 3},
	} {
		t.Run(fmt.Sprint(c.params), func(t *testing.T) {
			app := uniqueApp("poolmax")
			db := openDB(t, append(c.params, "application_name="+app)...)
			for i, n := range connectorOf(t, ctx, db).Status().Nodes {
				want := c.replica
				if i == 0 {
					want = c.primary
				}
				if n.Pool.Max != want {
					t.Errorf("%s: pool of %d, want %d", testcluster.Role(portOf(t, n.Addr)), n.Pool.Max, want)
				}
			}

			// Hold a lock the reads wait for: each one that got a
			// connection sits in the server until it is released.
			admin := testcluster.Direct(t, 0)
			tx, err := admin.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			mustExec(t, ctx, tx, "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE")
			waiting := 3 * int(c.primary)
			var wg sync.WaitGroup
			errs := make(chan error, waiting)
			for range waiting {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var n int
					errs <- db.QueryRowContext(pgreplica.UsePrimary(ctx), "SELECT count(*) FROM "+table).Scan(&n)
				}()
			}
			blocked := func() int64 {
				return queryInt(t, ctx, admin, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND wait_event_type = 'Lock'", app)
			}
			testcluster.WaitUntil(t, time.Minute, fmt.Sprintf("%d reads waiting for the lock on the primary", c.primary), func() bool {
				n := blocked()
				if n > int64(c.primary) {
					t.Fatalf("%d of this DB's backends on the primary, more than its pool of %d", n, c.primary)
				}
				return n == int64(c.primary)
			})
			// The others wait in pgreplica for a connection, not in the
			// server: the count stays at the pool's size.
			for range 10 {
				if n := blocked(); n != int64(c.primary) {
					t.Fatalf("%d of this DB's backends waiting on the primary, want its pool of %d", n, c.primary)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// portOf is the port of a node's host:port address.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	for _, n := range testcluster.Cluster().Nodes {
		if n.Addr() == addr {
			return n.Port
		}
	}
	t.Fatalf("%s is not a node of the cluster", addr)
	return 0
}

// pgx's other pool keys reach every node's pool: pool_min_conns opens
// that many connections to each node before any statement runs. One it
// could never satisfy (more than a pool holds) is refused by sql.Open,
// naming the key.
func TestPoolMinConnsOnEveryNode(t *testing.T) {
	ctx := testCtx(t)
	app := uniqueApp("poolmin")
	// No health check before the wait ends: the connections must come
	// from opening the pool, not from pgxpool's periodic top-up.
	db := openDB(t, "pool_min_conns=2", "pool_health_check_period=1h", "application_name="+app)
	c := connectorOf(t, ctx, db)
	for i := range testcluster.Cluster().Nodes {
		direct := testcluster.Direct(t, i)
		testcluster.WaitUntil(t, time.Minute, fmt.Sprintf("node %d: 2 pool connections open", i), func() bool {
			return c.Status().Nodes[i].Pool.Total >= 2 &&
				queryInt(t, ctx, direct, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app) >= 2
		})
	}

	_, err := sql.Open("pgreplica", testcluster.DSN("pool_min_conns=11"))
	if !errors.Is(err, pgreplica.ErrInvalidDSN) || !strings.Contains(err.Error(), "pool_min_conns") {
		t.Fatalf("pool_min_conns above the primary's pool: err = %v, want ErrInvalidDSN naming pool_min_conns", err)
	}
}

// A Config written in code with only its nodes gets the DSN's defaults:
// pools of 10 and 20, hedging on (auto), a lag limit of one second and
// fallback to the primary. With replay paused on every replica while the
// primary writes, the replicas are reported lagging and reads are served by
// the primary, as fallback.
func TestConfigInCodeGetsDefaults(t *testing.T) {
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	var cfg pgreplica.Config
	for i := range cl.Nodes {
		pc, err := pgxpool.ParseConfig(cl.NodeDSN(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			cfg.Primary = pc
		} else {
			cfg.Replicas = append(cfg.Replicas, pc)
		}
	}
	testcluster.NoLeaks(t)
	c, err := pgreplica.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	table := testcluster.NewTable(t, ctx, "cfgdefaults", "id serial PRIMARY KEY")

	for i, n := range c.Status().Nodes {
		want, role := int32(pgreplica.DefaultReplicaMaxConns), "replica"
		if i == 0 {
			want, role = pgreplica.DefaultPrimaryMaxConns, "primary"
		} else if n.HedgeDelay <= 0 {
			t.Errorf("%s: hedge delay %v, want hedging on (auto)", n.Addr, n.HedgeDelay)
		}
		if n.Pool.Max != want {
			t.Errorf("%s %s: pool of %d, want %d", role, n.Addr, n.Pool.Max, want)
		}
	}

	for _, r := range cl.Nodes[1:] {
		if err := r.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := r.ResumeReplay(context.Background()); err != nil {
				t.Error(err)
			}
			testcluster.WaitReplayed(t, context.Background())
		})
	}
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	// Another client writes: in the default mode db's reads after a write
	// of its own go to the primary for session, not as a fallback.
	direct := testcluster.Direct(t, 0)
	go func() {
		for {
			select {
			case <-stop:
				writerDone <- nil
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := direct.ExecContext(ctx, "INSERT INTO "+table+" DEFAULT VALUES"); err != nil {
				writerDone <- err
				return
			}
		}
	}()
	defer func() {
		close(stop)
		if err := <-writerDone; err != nil {
			t.Errorf("writer: %v", err)
		}
	}()
	took := testcluster.WaitUntil(t, time.Minute, "every replica reported lagging", func() bool {
		for _, n := range c.Status().Nodes[1:] {
			if n.State != pgreplica.StateLagging {
				return false
			}
		}
		return true
	})
	t.Logf("replay paused; both replicas lagging %v later", took)
	for i := range 20 {
		rctx, route := pgreplica.WithRoute(ctx)
		if port := testcluster.Port(t, rctx, db); port != primaryPort() {
			t.Fatalf("read %d served by %s, a replica past the default lag limit", i, testcluster.Role(port))
		}
		if route.Reason() != pgreplica.ReasonFallback {
			t.Fatalf("read %d: reason %s, want fallback", i, route.Reason())
		}
	}
}
