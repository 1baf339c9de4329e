package sessions

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Many sessions at once, each writing rows of its own and reading them
// back at once and then again and again, while replica 1 keeps falling
// behind (replay paused, then resumed, over and over): no read misses a
// row its session wrote before it, and once a write is replayed the
// session's reads go back to the replicas, so a good share of them is
// served there.
func TestConcurrentSessionsNeverReadStale(t *testing.T) {
	const (
		sessions = 16
		// The load runs for duration and until minReads reads were made,
		// but never longer than maxDuration (then the test fails).
		duration    = 5 * time.Second
		minReads    = 3000
		maxDuration = time.Minute
		// A session writes about this often and reads in between, so that
		// it spends most of its time with its writes replayed.
		writeEvery = 400 * time.Millisecond
	)
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "conc", "g int, seq int, PRIMARY KEY (g, seq)")
	db := testcluster.Open(t, dsnParams...)
	db.SetMaxOpenConns(2 * sessions)
	xdb := sqlx.NewDb(db, "pgreplica")

	// Replica 1 lags on purpose: paused for a while, then resumed for a
	// while, until the load stops.
	stop := make(chan struct{})
	var lagger sync.WaitGroup
	var pauses atomic.Int64
	replica1 := testcluster.Cluster().Nodes[1]
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := replica1.ResumeReplay(cctx); err != nil {
			t.Errorf("resume replay: %v", err)
		}
	})
	lagger.Go(func() {
		wait := func(d time.Duration) bool {
			select {
			case <-stop:
				return false
			case <-time.After(d):
				return true
			}
		}
		for {
			if err := replica1.PauseReplay(ctx); err != nil {
				t.Errorf("pause replay: %v", err)
				return
			}
			pauses.Add(1)
			paused := wait(700 * time.Millisecond)
			if err := replica1.ResumeReplay(ctx); err != nil {
				t.Errorf("resume replay: %v", err)
				return
			}
			if !paused || !wait(300*time.Millisecond) {
				return
			}
		}
	})

	type counts struct {
		writes, reads, stale, onReplica int
		byNode                          map[string]int
		firstStale                      string
	}
	results := make([]counts, sessions)
	var allReads atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := range sessions {
		wg.Go(func() {
			res := &results[g]
			res.byNode = map[string]int{}
			sctx := pgreplica.WithSession(ctx)
			written := 0 // acknowledged writes of this session
			var lastWrite time.Time
			more := func() bool {
				elapsed := time.Since(start)
				return (elapsed < duration || allReads.Load() < minReads) && elapsed < maxDuration && !t.Failed()
			}
			for i := 0; more(); i++ {
				if written == 0 || time.Since(lastWrite) >= writeEvery {
					if err := write(sctx, db, table, g, written+1, written%2 == 1); err != nil {
						t.Errorf("session %d, write %d: %v", g, written+1, err)
						return
					}
					written++
					lastWrite = time.Now()
					res.writes++
				}
				rctx, route := pgreplica.WithRoute(sctx)
				seen, err := read(rctx, db, xdb, table, g, i%4)
				if err != nil {
					t.Errorf("session %d, read: %v", g, err)
					return
				}
				res.reads++
				allReads.Add(1)
				node := route.Node()
				res.byNode[testcluster.Role(portOf(node))]++
				if node != primaryAddr() {
					res.onReplica++
				}
				if seen < written {
					res.stale++
					if res.firstStale == "" {
						res.firstStale = fmt.Sprintf("session %d read %d rows of %d on %s (%s)", g, seen, written, node, route.Reason())
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	lagger.Wait()

	var total counts
	total.byNode = map[string]int{}
	for _, r := range results {
		total.writes += r.writes
		total.reads += r.reads
		total.stale += r.stale
		total.onReplica += r.onReplica
		for k, v := range r.byNode {
			total.byNode[k] += v
		}
		if total.firstStale == "" {
			total.firstStale = r.firstStale
		}
	}
	share := float64(total.onReplica) / float64(max(total.reads, 1))
	t.Logf("%d sessions in %s: %d writes, %d reads (%d stale), %.0f%% of reads on replicas %v; replica 1 paused %d times",
		sessions, time.Since(start).Round(time.Millisecond), total.writes, total.reads, total.stale, 100*share, total.byNode, pauses.Load())
	if total.stale != 0 {
		t.Fatalf("%d stale reads; first: %s", total.stale, total.firstStale)
	}
	if total.reads < minReads {
		t.Fatalf("only %d reads in %s, want %d", total.reads, maxDuration, minReads)
	}
	if share <= 0.2 {
		t.Fatalf("only %.0f%% of session reads were served by replicas, want more than 20%%", 100*share)
	}
	if pauses.Load() < 2 {
		t.Fatalf("replica 1 was paused %d times, want at least 2", pauses.Load())
	}
}

// write inserts row seq of session g: with Exec, or in a transaction.
func write(ctx context.Context, db *sql.DB, table string, g, seq int, inTx bool) error {
	insert := "INSERT INTO " + table + " (g, seq) VALUES ($1, $2)"
	if !inTx {
		_, err := db.ExecContext(ctx, insert, g, seq)
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, insert, g, seq); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// read counts session g's rows in one of four ways.
func read(ctx context.Context, db *sql.DB, xdb *sqlx.DB, table string, g, how int) (int, error) {
	var n int
	query := "SELECT count(*) FROM " + table + " WHERE g = $1"
	switch how {
	case 0:
		err := db.QueryRowContext(ctx, query, g).Scan(&n)
		return n, err
	case 1:
		rows, err := db.QueryContext(ctx, "SELECT seq FROM "+table+" WHERE g = $1", g)
		if err != nil {
			return 0, err
		}
		defer rows.Close()
		for rows.Next() {
			n++
		}
		return n, rows.Err()
	case 2:
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			return 0, err
		}
		defer tx.Rollback()
		err = tx.QueryRowContext(ctx, query, g).Scan(&n)
		return n, err
	default:
		err := xdb.GetContext(ctx, &n, xdb.Rebind("SELECT count(*) FROM "+table+" WHERE g = ?"), g)
		return n, err
	}
}

// portOf is the port of a host:port node address.
func portOf(addr string) int {
	for _, n := range testcluster.Cluster().Nodes {
		if n.Addr() == addr {
			return n.Port
		}
	}
	return 0
}
