package faults

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestPlainReadsNeverStalerThanMaxReplicaLag is README's promise at the
// default monitor settings: with max_replica_lag=1s, while a writer commits
// timestamped rows on the primary and one replica's replay is paused, no
// plain read misses a row the primary had committed more than 1s before the
// read began, and none fails.
//
// Staleness is measured from the data: a read's staleness is how long
// before it began the first row it did not see was acknowledged to the
// writer (0 when it saw every row acknowledged before it began). A row is
// visible on the primary before its commit returns, so this never
// overstates it, and no slack is added: none is needed (docs/guarantees.md,
// "How stale a read can be").
func TestPlainReadsNeverStalerThanMaxReplicaLag(t *testing.T) {
	const bound = time.Second // max_replica_lag
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	table := testcluster.NewTable(t, ctx, "stale", "seq bigint PRIMARY KEY")
	db := testcluster.Open(t, "max_replica_lag="+bound.String()) // monitor_interval, hedging: defaults
	primary := testcluster.Direct(t, 0)
	testcluster.WaitReplayed(t, ctx)

	// The writer: one row at a time straight to the primary, each
	// acknowledged (its commit returned) at acked[seq].
	epoch := time.Now()
	var (
		mu    sync.Mutex
		acked []time.Duration // acked[i]: row i+1
	)
	ackedAt := func(seq int64) (time.Duration, bool) {
		mu.Lock()
		defer mu.Unlock()
		if seq < 1 || seq > int64(len(acked)) {
			return 0, false
		}
		return acked[seq-1], true
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Go(func() {
		for seq := int64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := primary.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", seq); err != nil {
				writeErr = err
				return
			}
			mu.Lock()
			acked = append(acked, time.Since(epoch))
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	})

	type read struct {
		start time.Duration
		port  int
		seen  int64
	}
	var (
		rmu    sync.Mutex
		reads  []read
		failed []error
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Since(epoch)
				var r read
				err := db.QueryRowContext(rctx, "SELECT inet_server_port(), coalesce(max(seq), 0) FROM "+table).Scan(&r.port, &r.seen)
				rcancel()
				r.start = start
				rmu.Lock()
				if err != nil {
					failed = append(failed, err)
				} else {
					reads = append(reads, r)
				}
				rmu.Unlock()
				time.Sleep(time.Millisecond)
			}
		})
	}

	// A second of writes and reads with both replicas streaming, then
	// replica1's replay paused for long enough to be far over the bound.
	time.Sleep(time.Second)
	paused := cl.Nodes[1]
	if err := paused.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Since(epoch)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		if err := paused.ResumeReplay(cctx); err != nil {
			t.Errorf("resume replay: %v", err)
		}
		if err := cl.WaitReplayed(cctx); err != nil {
			t.Errorf("replicas did not catch up: %v", err)
		}
	})
	time.Sleep(4 * bound)
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("writer: %v", writeErr)
	}
	reportFailures(t, failed)

	// The stalest read of each server, and every read over the bound.
	type worst struct {
		stale time.Duration
		n     int
	}
	byPort := map[int]*worst{}
	over := 0
	for _, r := range reads {
		w := byPort[r.port]
		if w == nil {
			w = &worst{}
			byPort[r.port] = w
		}
		w.n++
		at, ok := ackedAt(r.seen + 1) // the first row it did not see
		if !ok || at >= r.start {
			continue // it saw every row acknowledged before it began
		}
		stale := r.start - at
		w.stale = max(w.stale, stale)
		if stale > bound {
			if over < 5 {
				t.Errorf("read by %s at t=%.3fs (replay paused at t=%.3fs) saw row %d; row %d was acknowledged %.3fs before the read began, over max_replica_lag=%v",
					testcluster.Role(r.port), r.start.Seconds(), pausedAt.Seconds(), r.seen, r.seen+1, stale.Seconds(), bound)
			}
			over++
		}
	}
	ports := make([]int, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	var summary []string
	for _, p := range ports {
		summary = append(summary, fmt.Sprintf("%s: %d reads, stalest %.3fs", testcluster.Role(p), byPort[p].n, byPort[p].stale.Seconds()))
	}
	t.Logf("%d reads, %d failed, %d over the bound; %v", len(reads), len(failed), over, summary)
	if over > 0 {
		t.Errorf("%d of %d plain reads were staler than max_replica_lag=%v", over, len(reads), bound)
	}
	// The bound is kept by the replicas, not by sending every read to the
	// primary: the streaming replica served reads throughout.
	if w := byPort[cl.Nodes[2].Port]; w == nil || w.n < len(reads)/10 {
		t.Errorf("the streaming replica served too few reads: %v", summary)
	}
}
