package failover

import (
	"context"
	"database/sql"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// writeResult is one write of a writer under test.
type writeResult struct {
	id         int64
	start, end time.Time
	err        error
}

// writers runs n goroutines inserting (id, client) rows into table
// through db until stop is closed: by Exec, by QueryRow (INSERT …
// RETURNING) and in a transaction, in turn.
func writers(db *sql.DB, table, client string, n int, ids *atomic.Int64, stop <-chan struct{}) func() []writeResult {
	var (
		mu  sync.Mutex
		all []writeResult
		wg  sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []writeResult
			for {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, mine...)
					mu.Unlock()
					return
				default:
				}
				id := ids.Add(1)
				r := writeResult{id: id, start: time.Now()}
				// Each write has a deadline of its own, longer than
				// primary_wait: the wait, not the deadline, bounds it.
				wctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				insert := "INSERT INTO " + table + " VALUES ($1, $2)"
				switch id % 3 { // each way an application writes
				case 0:
					_, r.err = db.ExecContext(wctx, insert, id, client)
				case 1:
					var got int64
					r.err = db.QueryRowContext(wctx, insert+" RETURNING id", id, client).Scan(&got)
				case 2:
					var tx *sql.Tx
					if tx, r.err = db.BeginTx(wctx, nil); r.err == nil {
						if _, r.err = tx.ExecContext(wctx, insert, id, client); r.err == nil {
							r.err = tx.Commit()
						} else {
							_ = tx.Rollback()
						}
					}
				}
				cancel()
				r.end = time.Now()
				mine = append(mine, r)
			}
		}()
	}
	return func() []writeResult { wg.Wait(); return all }
}

// TestCrashUnderWriters crashes the primary (pg_ctl -m immediate) under 4
// writers through pgreplica and, in the same run, 4 through pgx's
// multi-host target_session_attrs=read-write, and promotes its standby 2 s
// later. Synchronous replication is on, so that what the crashed primary
// acknowledged is on the standby. Through pgreplica only writes in flight
// at the crash may fail; a write begun after it waits for the promotion
// (primary_wait, 30 s by default) and succeeds; every acknowledged write
// is on the new primary. pgx's figures are logged beside pgreplica's.
func TestCrashUnderWriters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	// Left by TestWriteRerunAfterDemotion: Nodes[2] primary, Nodes[1] its
	// standby, Nodes[0] stopped.
	old, next := cl.Nodes[2], cl.Nodes[1]
	for _, c := range []struct {
		i    int
		want int64
	}{{old.Index, 0}, {next.Index, 1}} {
		if got, err := cl.QueryInt(ctx, c.i, "SELECT pg_is_in_recovery()::int"); err != nil || got != c.want {
			t.Fatalf("node %d in recovery: %d, %v; want %d (the cluster TestWriteRerunAfterDemotion leaves)", c.i, got, err, c.want)
		}
	}
	table := "crash_" + time.Now().Format("150405")
	if _, err := testcluster.Direct(t, old.Index).ExecContext(ctx, "CREATE TABLE "+table+" (id bigint PRIMARY KEY, client text)"); err != nil {
		t.Fatal(err)
	}
	followAndWait(t, ctx, next, old)
	testcluster.WaitUntil(t, time.Minute, "the standby streams from the primary", func() bool {
		n, err := cl.QueryInt(ctx, old.Index, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
		return err == nil && n == 1
	})
	for _, q := range []string{"ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"} {
		if err := cl.Exec(ctx, old.Index, q); err != nil {
			t.Fatal(err)
		}
	}
	testcluster.WaitUntil(t, time.Minute, "the standby is synchronous", func() bool {
		n, err := cl.QueryInt(ctx, old.Index, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
		return err == nil && n == 1
	})

	pg := testcluster.Open(t, "hedge_after=off")
	px, err := sql.Open("pgx", cl.DSN()+"&target_session_attrs=read-write")
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	c := connectorOf(t, pg)
	testcluster.WaitUntil(t, time.Minute, "pgreplica finds the primary", func() bool { return c.Status().Primary == old.Addr() })

	var ids atomic.Int64
	stop := make(chan struct{})
	pgDone := writers(pg, table, "pgreplica", 4, &ids, stop)
	pxDone := writers(px, table, "pgx", 4, &ids, stop)
	stopped := false
	stopWriters := func() {
		if !stopped {
			stopped = true
			close(stop)
		}
	}
	defer stopWriters()

	time.Sleep(time.Second) // writes under way
	crashed := time.Now()
	if err := old.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	down := time.Now() // the server is gone: a write begun from here was not in flight
	time.Sleep(2 * time.Second)
	if err := next.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	// Run until both clients have written on the new primary for a while.
	mark := ids.Load()
	testcluster.WaitUntil(t, 2*time.Minute, "200 more writes of each client on the promoted node", func() bool {
		var n int64
		err := testcluster.Direct(t, next.Index).QueryRowContext(ctx,
			"SELECT least(count(*) FILTER (WHERE client = 'pgreplica'), count(*) FILTER (WHERE client = 'pgx')) FROM "+table+" WHERE id > $1", mark).Scan(&n)
		return err == nil && n >= 200
	})
	stopWriters()
	results := map[string][]writeResult{"pgreplica": pgDone(), "pgx": pxDone()}

	onNew := map[int64]string{}
	r, err := testcluster.Direct(t, next.Index).QueryContext(ctx, "SELECT id, client FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id int64
		var client string
		if err := r.Scan(&id, &client); err != nil {
			t.Fatal(err)
		}
		onNew[id] = client
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	r.Close()

	t.Logf("crash at +0, server gone at +%v, promotion done at +%v", down.Sub(crashed).Round(time.Millisecond), promoted.Sub(crashed).Round(time.Millisecond))
	for _, client := range []string{"pgreplica", "pgx"} {
		res := results[client]
		sort.Slice(res, func(i, j int) bool { return res[i].start.Before(res[j].start) })
		var acked, inFlight, after, lost int
		var firstAfter time.Time
		var longest time.Duration
		var example string
		for _, w := range res {
			switch {
			case w.err == nil:
				acked++
				if _, ok := onNew[w.id]; !ok {
					lost++
				}
				if w.end.After(promoted) && (firstAfter.IsZero() || w.end.Before(firstAfter)) {
					firstAfter = w.end
				}
				if w.start.After(crashed) {
					longest = max(longest, w.end.Sub(w.start))
				}
			case w.start.Before(down):
				inFlight++
			default:
				after++
				if example == "" {
					example = w.err.Error()
				}
			}
		}
		t.Logf("FIGURES %s: %d writes, %d acknowledged, %d acknowledged and lost, %d failed in flight at the crash, %d failed begun after it (e.g. %.120q); first acknowledged %v after the promotion; longest acknowledged write begun after the crash %v",
			client, len(res), acked, lost, inFlight, after, example, firstAfter.Sub(promoted).Round(time.Millisecond), longest.Round(time.Millisecond))
		if client != "pgreplica" {
			continue
		}
		if lost != 0 {
			t.Errorf("pgreplica: %d acknowledged writes are not on the new primary", lost)
		}
		if after != 0 {
			t.Errorf("pgreplica: %d writes begun after the crash failed (first: %s); want them to wait for the promotion", after, example)
		}
	}
	testcluster.NoLeaks(t)
}
