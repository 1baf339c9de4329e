package faults

import (
	"context"

	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Issue 17, no stampede on the primary: with both replicas' replay paused
// while writes go on (every replica over max_replica_lag), 16 goroutines
// read. With fallback_max_share=0.2 the primary serves at most a fifth of
// the plain reads (counted by inet_server_port() and by the primary's own
// scan count of the table read); the rest of the plain reads are served by
// the least-lagged replica and none fails; reads bounded per call with
// WithMaxLag get at most the same share of the primary and otherwise fail
// with ErrFallbackShare (which is also ErrNoReplica); UsePrimary reads are
// never limited.
func TestFallbackShareWhenEveryReplicaLags(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	primary := cl.Nodes[0]
	table := testcluster.NewTable(t, ctx, "share", "id int")
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	ticks := testcluster.NewTable(t, ctx, "share_ticks", "id bigserial PRIMARY KEY, at timestamptz DEFAULT now()")
	testcluster.WaitReplayed(t, ctx)

	// Hedging off: a hedge is a second copy of a read, not the read. The
	// default monitor interval: how fast lag is noticed is not the point,
	// and a replica that a loaded machine's slow probe took down would
	// leave the reads over the share nowhere to go.
	db := testcluster.Open(t, "max_replica_lag=1s", "fallback_max_share=0.2", "hedge_after=off")
	c := connector(t, db)
	for _, r := range cl.Nodes[1:] {
		testcluster.WaitUntil(t, 10*time.Second, r.Addr()+" probed", func() bool { return nodeState(c, r.Addr()) == pgreplica.StateHealthy })
	}

	// The ticks go through another client: db's own writes would send its
	// reads to the primary through the default mode's connector session,
	// whatever the lag, which is not what is tested.
	ticker := testcluster.Direct(t, 0)
	stopWriter := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stopWriter:
				writerDone <- nil
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := ticker.ExecContext(ctx, "INSERT INTO "+ticks+" DEFAULT VALUES"); err != nil {
				writerDone <- err
				return
			}
		}
	}()
	stopWrites := sync.OnceFunc(func() {
		close(stopWriter)
		if err := <-writerDone; err != nil {
			t.Errorf("writer: %v", err)
		}
	})
	defer stopWrites()
	for _, r := range cl.Nodes[1:] {
		t.Cleanup(func() { _ = r.ResumeReplay(ctx) })
		if err := r.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range cl.Nodes[1:] {
		testcluster.WaitUntil(t, 10*time.Second, r.Addr()+" reported lagging", func() bool { return nodeState(c, r.Addr()) == pgreplica.StateLagging })
	}

	admin := adminConn(t, ctx, 0)
	scans := func() int64 {
		var n int64
		if err := admin.QueryRow(ctx, "SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = $1", table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	scansBefore := scans()

	query := "SELECT inet_server_port() FROM " + table
	type tally struct {
		primary, replica, shareErr, otherErr atomic.Int64
		firstShareErr                        atomic.Value
	}
	read := func(ctx context.Context, n int) *tally {
		var tl tally
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for range n {
					var port int
					err := db.QueryRowContext(ctx, query).Scan(&port)
					switch {
					case err == nil && port == primary.Port:
						tl.primary.Add(1)
					case err == nil:
						tl.replica.Add(1)
					case errors.Is(err, pgreplica.ErrFallbackShare) && errors.Is(err, pgreplica.ErrNoReplica):
						tl.shareErr.Add(1)
						tl.firstShareErr.CompareAndSwap(nil, err.Error())
					default:
						if tl.otherErr.Add(1) <= 3 {
							t.Errorf("read: %v", err)
						}
					}
				}
			})
		}
		wg.Wait()
		return &tl
	}
	const perGoroutine = 25
	total := 16 * perGoroutine
	bound := int64(math.Ceil(0.2*float64(total))) + 1 // the share's rounding

	plain := read(ctx, perGoroutine)
	t.Logf("plain reads: %d on the primary, %d on a lagging replica, %d ErrFallbackShare, %d other errors",
		plain.primary.Load(), plain.replica.Load(), plain.shareErr.Load(), plain.otherErr.Load())
	if plain.primary.Load() > bound || plain.shareErr.Load() != 0 || plain.otherErr.Load() != 0 {
		t.Fatalf("plain reads: %d of %d on the primary (want at most %d) and %d failed (want 0; first: %v); replica states %v",
			plain.primary.Load(), total, bound, plain.shareErr.Load()+plain.otherErr.Load(), plain.firstShareErr.Load(),
			[]string{nodeState(c, cl.Nodes[1].Addr()), nodeState(c, cl.Nodes[2].Addr())})
	}

	bounded := read(pgreplica.WithMaxLag(ctx, time.Second), perGoroutine)
	t.Logf("WithMaxLag(1s) reads: %d on the primary, %d on a replica, %d ErrFallbackShare, %d other errors",
		bounded.primary.Load(), bounded.replica.Load(), bounded.shareErr.Load(), bounded.otherErr.Load())
	if bounded.primary.Load() > bound || bounded.replica.Load() != 0 || bounded.otherErr.Load() != 0 ||
		bounded.primary.Load()+bounded.shareErr.Load() != int64(total) {
		t.Fatalf("WithMaxLag(1s) reads: %d on the primary (want at most %d), %d on a replica (want 0), %d ErrFallbackShare, %d other errors",
			bounded.primary.Load(), bound, bounded.replica.Load(), bounded.shareErr.Load(), bounded.otherErr.Load())
	}

	forced := read(pgreplica.UsePrimary(ctx), perGoroutine)
	if forced.primary.Load() != int64(total) {
		t.Fatalf("UsePrimary reads: %d of %d on the primary, %d errors", forced.primary.Load(), total, forced.shareErr.Load()+forced.otherErr.Load())
	}

	// The primary's own count: its backends report their scans when they
	// exit (or within a second or so of going idle); close the DB and wait
	// for the count to settle.
	stopWrites()
	db.Close()
	var scansAfter int64
	last, lastChange := scans(), time.Now()
	testcluster.WaitUntil(t, 20*time.Second, "the primary's scan count settled", func() bool {
		if n := scans(); n != last {
			last, lastChange = n, time.Now()
		}
		scansAfter = last
		return time.Since(lastChange) > 2*time.Second
	})
	server := scansAfter - scansBefore
	clientSide := plain.primary.Load() + bounded.primary.Load() + forced.primary.Load()
	t.Logf("the primary scanned the table %d times; clients saw %d reads served by it (%d of them UsePrimary)", server, clientSide, total)
	if server > 2*bound+int64(total) {
		t.Fatalf("the primary served %d reads of the table, want at most %d (2 × %d fallback reads + %d UsePrimary)", server, 2*bound+int64(total), bound, total)
	}
}
