package frameworks

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// pgbouncer (transaction pooling) in front of every node, the DSN listing
// the bouncers: a mixed workload of writes, reads, read-your-writes
// sessions and transactions has no error, plain reads are served by the
// replicas' bouncers, no session read is stale, and every node stays
// healthy. Run once per query mode that works without prepared-statement
// support in the bouncer. read_your_writes=off: the plain reads are to be
// served by the replicas whatever the other workers just wrote (in the
// default mode the connector's session sends some to the primary); the
// sessions are WithSession's.
func TestPgbouncer(t *testing.T) {
	bs := startBouncers(t, 10)
	t.Logf("%s in front of every node", pgbouncerVersion(t))
	for _, mode := range []string{"cache_describe", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) { pgbouncerWorkload(t, bs, mode) })
	}
}

func pgbouncerWorkload(t *testing.T, bs []*bouncer, mode string) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "bouncer", "id bigserial PRIMARY KEY, worker int NOT NULL, v bigint NOT NULL")
	db, _ := openDSN(t, bouncerDSN(bs, "default_query_exec_mode="+mode, monitorInterval, "read_your_writes=off"))
	conn, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	replicaBouncer := map[string]bool{}
	for _, b := range bs[1:] {
		replicaBouncer[b.addr()] = true
	}
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	// The monitor probes through the bouncers too: wait until it has seen
	// every node healthy before starting.
	testcluster.WaitUntil(t, 30*time.Second, "every node healthy through pgbouncer", func() bool {
		return allHealthy(conn.Status()) == ""
	})

	var (
		errs                          atomic.Int64
		firstErr                      atomic.Value
		reads, replicaReads, sessions atomic.Int64
		stale, txs, roTxs             atomic.Int64
		unhealthy                     atomic.Value
	)
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err)
	}
	workCtx, stop := context.WithTimeout(ctx, 4*time.Second)
	defer stop()
	var wg sync.WaitGroup
	// Watch the node states while the workload runs.
	wg.Go(func() {
		for workCtx.Err() == nil {
			if bad := allHealthy(conn.Status()); bad != "" {
				unhealthy.CompareAndSwap(nil, bad)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	for w := range 6 {
		wg.Go(func() {
			for i := int64(1); workCtx.Err() == nil; i++ {
				var err error
				switch w % 3 {
				case 0: // a session writes and reads its write back at once
					s := pgreplica.WithSession(ctx)
					var id int64
					if err = db.QueryRowContext(s, "INSERT INTO "+table+" (worker, v) VALUES ($1, $2) RETURNING id", w, i).Scan(&id); err == nil {
						var v int64
						if err = db.QueryRowContext(s, "SELECT v FROM "+table+" WHERE id = $1", id).Scan(&v); errors.Is(err, sql.ErrNoRows) || (err == nil && v != i) {
							stale.Add(1)
							err = nil
						}
						sessions.Add(1)
					}
				case 1: // plain reads
					rctx, route := pgreplica.WithRoute(ctx)
					var n int64
					if err = db.QueryRowContext(rctx, "SELECT count(*) FROM "+table+" WHERE worker = $1", w-1).Scan(&n); err == nil {
						reads.Add(1)
						if replicaBouncer[route.Node()] {
							replicaReads.Add(1)
						}
					}
				case 2: // a read-write and a read-only transaction
					// Only this worker's rows: a session's row is changed by
					// nobody but its writer.
					err = inTx(ctx, db, nil, func(tx *sql.Tx) error {
						var id int64
						if err := tx.QueryRowContext(ctx, "INSERT INTO "+table+" (worker, v) VALUES ($1, $2) RETURNING id", w, i).Scan(&id); err != nil {
							return err
						}
						_, err := tx.ExecContext(ctx, "UPDATE "+table+" SET v = v + 1 WHERE id = $1", id)
						return err
					})
					if err == nil {
						txs.Add(1)
						err = inTx(ctx, db, &sql.TxOptions{ReadOnly: true}, func(tx *sql.Tx) error {
							var n int64
							return tx.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n)
						})
						if err == nil {
							roTxs.Add(1)
						}
					}
				}
				if err != nil && workCtx.Err() == nil {
					fail(err)
				}
			}
		})
	}
	wg.Wait()

	t.Logf("%s: %d session writes read back (%d stale), %d reads (%d on replicas' bouncers), %d transactions, %d read-only, %d errors",
		mode, sessions.Load(), stale.Load(), reads.Load(), replicaReads.Load(), txs.Load(), roTxs.Load(), errs.Load())
	if n := errs.Load(); n != 0 {
		t.Errorf("%d errors, first: %v", n, firstErr.Load())
	}
	if stale.Load() != 0 {
		t.Errorf("%d stale session reads", stale.Load())
	}
	if sessions.Load() == 0 || reads.Load() == 0 || txs.Load() == 0 || roTxs.Load() == 0 {
		t.Errorf("some kind of work never ran")
	}
	if reads.Load() != replicaReads.Load() {
		t.Errorf("%d of %d plain reads were not served by a replica's bouncer", reads.Load()-replicaReads.Load(), reads.Load())
	}
	if bad := unhealthy.Load(); bad != nil {
		t.Errorf("a node left the healthy state during the workload: %v", bad)
	}
	// The reads on the replicas' bouncers were answered by the replicas.
	var port int
	if err := db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil || !isReplicaPort(port) {
		t.Errorf("a read through the bouncers was answered by %s (%v), want a replica", testcluster.Role(port), err)
	}
}

func inTx(ctx context.Context, db *sql.DB, opts *sql.TxOptions, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// allHealthy names the first node that is not healthy, or "".
func allHealthy(s pgreplica.Status) string {
	for _, n := range s.Nodes {
		if n.State != pgreplica.StateHealthy {
			return fmt.Sprintf("%s is %s", n.Addr, n.State)
		}
	}
	return ""
}

// pgx's default query mode (cache_statement) prepares each statement once
// per connection under a name and then only sends that name. A pgbouncer
// in transaction mode without prepared-statement support (before 1.21, or
// max_prepared_statements = 0) hands the next transaction any server
// connection, where that name does not exist: SQLSTATE 26000. With
// default_query_exec_mode=cache_describe (or simple_protocol) nothing is
// prepared by name and the same sequence works.
func TestPgbouncerDefaultStatementCache(t *testing.T) {
	bs := startBouncers(t, 2)
	ctx := testCtx(t)
	run := func(mode string) error {
		dsn := bouncerDSN(bs[:1])
		if mode != "" {
			dsn += "&default_query_exec_mode=" + mode
		}
		c1, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c1.Close(ctx)
		c2, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close(ctx)
		var n int
		// c1 prepares its statement on the server connection it gets.
		if err := c1.QueryRow(ctx, "SELECT $1::int", 1).Scan(&n); err != nil {
			return err
		}
		// c2 holds that server connection in a transaction (pgbouncer
		// hands out the most recently used one first).
		tx, err := c2.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		// c1 runs its statement again, on the other server connection.
		return c1.QueryRow(ctx, "SELECT $1::int", 2).Scan(&n)
	}
	if err := run(""); pgCode(err) != "26000" {
		t.Fatalf("default statement cache behind %s: %v; want SQLSTATE 26000 (prepared statement does not exist)", pgbouncerVersion(t), err)
	} else {
		t.Logf("default statement cache behind %s: %v", pgbouncerVersion(t), err)
	}
	for _, mode := range []string{"cache_describe", "simple_protocol"} {
		if err := run(mode); err != nil {
			t.Fatalf("%s behind pgbouncer: %v", mode, err)
		}
	}
}
