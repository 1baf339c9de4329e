package model

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica/integration/model/check"
	"github.com/pgreplica/pgreplica/internal/sandbox"
)

// promotion is what the failover left: when the primary crashed, when the
// promoted replica took writes, and what the old primary had committed.
type promotion struct {
	crashedAt, promotedAt time.Duration
	oldRows               map[int64]check.Row
	oldHB                 map[int64]bool
}

// schedule injects faults until the budget is spent. Replica faults come
// from a bag holding each kind (lag and stalls twice: what hedging and
// WithMaxLag need), so every kind occurs several times per run; sometimes
// the other replica stalls meanwhile, so that a read's hedge has no second
// replica to go to. The primary crash with promotion happens once, with at
// least 27 s (or 55% of the budget, at most 3 minutes) left: about 12 s
// for the failover itself, the rest to watch the cluster after it.
func (r *run) schedule(ctx context.Context, rng *rand.Rand, budget time.Duration) *promotion {
	deadline := r.start.Add(budget)
	after := max(min(budget*55/100, 3*time.Minute), 27*time.Second)
	promoteAt := deadline.Add(-after)
	if budget < 40*time.Second {
		promoteAt = time.Time{} // too short to promote and watch
	}
	var p *promotion
	// The first fault is a lag of one replica with a stall of the other
	// in its middle: what WithMaxLag and hedging need, early in every run.
	// Then the primary's own faults, which every run must have.
	bag := []string{"lag", "restart primary", "terminate primary statement"}
	replicas := []int{1, 2}
	for first := true; time.Until(deadline) > 2*time.Second; first = false {
		if p == nil && !promoteAt.IsZero() && time.Now().After(promoteAt) {
			p = r.promote(ctx)
			replicas = []int{2} // replica1 is the primary; replica2 stays on the old timeline
			// However long the failover took on a loaded machine, watch
			// the cluster after it for 10 s at least.
			if until := time.Now().Add(10 * time.Second); deadline.Before(until) {
				deadline = until
			}
			// No fault for a while: the old-timeline replica is up and
			// looks caught up, and reads must not go there.
			time.Sleep(4 * time.Second)
			continue
		}
		if len(bag) == 0 {
			bag = []string{"crash", "freeze", "lag", "lag", "stall", "stall", "terminate", "terminate primary", "partition",
				"restart primary", "terminate primary statement", "terminate primary statement"}
			rng.Shuffle(len(bag), func(i, j int) { bag[i], bag[j] = bag[j], bag[i] })
		}
		kind := bag[0]
		bag = bag[1:]
		i := replicas[rng.IntN(len(replicas))]
		other := 0
		if len(replicas) > 1 && (first || rng.IntN(5) < 2) {
			other = 3 - i
		}
		if err := r.inject(ctx, rng, kind, i, other); err != nil {
			r.t.Errorf("fault %s on node %d: %v", kind, i, err)
		}
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
	}
	if rest := time.Until(deadline); rest > 0 {
		time.Sleep(rest)
	}
	return p
}

func nodeName(i int) string {
	if i == 0 {
		return "primary"
	}
	return fmt.Sprintf("replica%d", i)
}

// inject applies one fault to node i and undoes it; other, when not 0, is
// stalled for 300 ms in the middle of it.
func (r *run) inject(ctx context.Context, rng *rand.Rand, kind string, i, other int) error {
	n := r.cl.Nodes[i]
	start := r.now()
	hold := time.Duration(1000+rng.IntN(1000)) * time.Millisecond
	during := func() {
		if other == 0 {
			time.Sleep(hold)
			return
		}
		time.Sleep(hold / 3)
		if err := r.stall(ctx, other, 300*time.Millisecond); err != nil {
			r.t.Errorf("stall of replica%d: %v", other, err)
		}
		time.Sleep(hold - hold/3)
	}
	var err error
	switch kind {
	case "crash":
		if err = n.Stop(ctx); err != nil {
			return err
		}
		during()
		err = n.Start(ctx)
	case "freeze":
		if err = n.Freeze(); err != nil {
			return err
		}
		during()
		err = n.Thaw()
	case "lag":
		// Long enough to be far beyond WithMaxLag(0) and max_replica_lag.
		hold = time.Duration(3000+rng.IntN(3000)) * time.Millisecond
		if err = n.PauseReplay(ctx); err != nil {
			return err
		}
		during()
		err = n.ResumeReplay(ctx)
	case "stall":
		return r.stall(ctx, i, time.Duration(150+rng.IntN(300))*time.Millisecond)
	case "terminate", "terminate primary":
		// One backend of the workload's, as an administrator would.
		if kind == "terminate primary" {
			i = int(r.primary.Load())
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		killed, qerr := r.cl.QueryInt(qctx, i, `SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
			WHERE application_name LIKE 'pgreplica-model-%' AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1) p`)
		cancel()
		r.fault(fmt.Sprintf("terminate %d backend", killed), nodeName(i), start)
		return qerr
	case "restart primary":
		// Down well within primary_wait (30 s): writes and reads that need
		// the primary wait for it; pure reads that lost their connection
		// run again.
		i = int(r.primary.Load())
		n = r.cl.Nodes[i]
		if err = n.Stop(ctx); err != nil {
			return err
		}
		time.Sleep(hold / 2)
		err = n.Start(ctx)
		r.mu.Lock()
		r.restarts = append(r.restarts, check.Window{Start: start, End: r.now()})
		r.mu.Unlock()
	case "terminate primary statement":
		return r.killStatement(ctx, start)
	case "partition":
		if err = n.Partition(ctx); err != nil {
			return err
		}
		during()
		err = n.Heal(ctx)
	default:
		return fmt.Errorf("unknown fault %s", kind)
	}
	r.fault(kind, nodeName(i), start)
	return err
}

// killStatement terminates, on the primary, the backend of one marked
// statement (killMark) while it sleeps, waiting up to 2 s for one: a pure
// read, which has sent no row yet and must run again, or a procedure that
// has committed its write, whose outcome the caller cannot know and which
// must not run again.
func (r *run) killStatement(ctx context.Context, start time.Duration) error {
	i := int(r.primary.Load())
	what := "none running"
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, r.cl.AdminDSN(i))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		// 1: a read, 2: a CALL, 0: none sleeping.
		var k int64
		err := conn.QueryRow(cctx, `SELECT coalesce(sum(CASE WHEN query LIKE 'CALL%' THEN 2 ELSE 1 END * pg_terminate_backend(pid)::int), 0)
			FROM (SELECT pid, query FROM pg_stat_activity WHERE application_name LIKE 'pgreplica-model-%' AND state = 'active'
				AND wait_event = 'PgSleep' AND query LIKE '%`+killMark+`%' AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1) p`).Scan(&k)
		if err != nil {
			return err
		}
		if k > 0 {
			what = map[int64]string{1: "a pure read", 2: "a CALL that committed"}[k]
			break
		}
	}
	r.fault("terminate primary statement: "+what, nodeName(i), start)
	return nil
}

// stall freezes node i for d: too short for the monitor to call it
// frozen, long enough for every read on it to be hedged.
func (r *run) stall(ctx context.Context, i int, d time.Duration) error {
	start := r.now()
	n := r.cl.Nodes[i]
	if err := n.Freeze(); err != nil {
		return err
	}
	time.Sleep(d)
	err := n.Thaw()
	r.fault(fmt.Sprintf("stall %v", d), nodeName(i), start)
	return err
}

// promote crashes the primary while replica1 is behind replica2, and
// promotes replica1: replica2 is left on the old timeline, ahead of the
// new primary's position, following a primary that is gone.
//
//  1. replica1 stops; the primary writes 16 MB more (replica2 replays it);
//  2. the primary crashes (pg_ctl -m immediate) under the workload;
//  3. it starts again (crash recovery) and serves for a second, then stops
//     cleanly, so replica2 receives everything it ever committed: that is
//     the old primary's durable state, read from replica2;
//  4. replica1 starts (it can no longer stream) and is promoted.
func (r *run) promote(ctx context.Context) *promotion {
	t := r.t
	p := &promotion{}
	primary, r1, r2 := r.cl.Nodes[0], r.cl.Nodes[1], r.cl.Nodes[2]
	step := func(what string, err error) {
		if err != nil {
			t.Fatalf("promotion: %s: %v", what, err)
		}
	}
	start := r.now()
	step("stop replica1", r1.Stop(ctx))
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	pad := r.w + "_pad"
	step("write 16 MB", r.cl.Exec(bctx, 0, "CREATE TABLE "+pad+" AS SELECT g, repeat('x', 1000) AS x FROM generate_series(1, 16000) g"))
	step("replica2 replays it", r.cl.WaitReplayed(bctx))
	cancel()
	time.Sleep(500 * time.Millisecond) // the workload runs with one replica
	r.fault("crash (stays down until promotion)", "replica1", start)

	p.crashedAt = r.now()
	r.failover.Store(true)
	step("crash the primary", primary.Stop(ctx))
	time.Sleep(300 * time.Millisecond)
	step("restart the primary", primary.Start(ctx))
	// Its clean stop must ship everything to replica2: wait until replica2
	// streams from it again.
	step("replica2 streams again", r.waitStreaming(ctx, "replica2"))
	time.Sleep(time.Second)
	step("stop the primary cleanly", primary.StopClean(ctx))
	r.fault("crash, restart, clean stop", "primary", p.crashedAt)

	step("replica2 replays all it received", r.waitReceivedReplayed(ctx, 2))
	var err error
	p.oldRows, p.oldHB, err = r.snapshot(ctx, 2)
	step("read the old primary's commits on replica2", err)

	pstart := r.now()
	step("start replica1", r1.Start(ctx))
	step("promote replica1", r1.Promote(ctx))
	p.promotedAt = r.now()
	r.primary.Store(1)
	r.fault("promote", "replica1", pstart)
	_ = r2
	t.Logf("t=%.3fs primary crashed; t=%.3fs replica1 promoted; replica2 left on the old timeline", p.crashedAt.Seconds(), p.promotedAt.Seconds())
	return p
}

// waitStreaming waits until the primary's pg_stat_replication shows the
// standby named app streaming.
func (r *run) waitStreaming(ctx context.Context, app string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
		n, err := r.cl.QueryInt(qctx, 0, "SELECT count(*) FROM pg_stat_replication WHERE application_name = '"+app+"' AND state = 'streaming'")
		qcancel()
		if err == nil && n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not streaming: %v (%w)", app, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitReceivedReplayed waits until node i has replayed all the WAL it
// received and receives no more.
func (r *run) waitReceivedReplayed(ctx context.Context, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.cl.AdminDSN(i))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var last string
	for stable := 0; stable < 3; {
		var rcv, rep string
		if err := conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_receive_lsn()::text, ''), coalesce(pg_last_wal_replay_lsn()::text, '')").Scan(&rcv, &rep); err != nil {
			return err
		}
		if rcv == rep && rep == last {
			stable++
		} else {
			stable = 0
		}
		last = rep
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

var _ = sandbox.Options{}
