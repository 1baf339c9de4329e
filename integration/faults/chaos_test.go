package faults

import (
	"context"
	"database/sql"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// preferPolicy sends every read to the replica at the address it holds,
// while that one is usable: the tests below know which replica a read
// waits on.
type preferPolicy struct{ addr atomic.Value }

func (p *preferPolicy) prefer(n *sandbox.Node) { p.addr.Store(n.Addr()) }

func (p *preferPolicy) Choose(cands []pgreplica.Candidate) int {
	for i, c := range cands {
		if c.Addr == p.addr.Load() {
			return i
		}
	}
	return 0
}

// openToReplica1 opens a *sql.DB whose reads go to replica1 while it is
// usable and to replica2 only when it is not (or when the policy is told
// otherwise).
func openToReplica1(t *testing.T, params ...string) (*sql.DB, *pgreplica.Connector, *preferPolicy) {
	t.Helper()
	testcluster.NoLeaks(t)
	cfg, err := pgreplica.ParseConfig(testcluster.DSN(params...))
	if err != nil {
		t.Fatal(err)
	}
	policy := &preferPolicy{}
	policy.prefer(testcluster.Cluster().Nodes[1])
	cfg.Policy = policy
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	// The test before may have stopped or frozen replica1 and started it
	// again: until it has caught up and a probe says so, its reads go
	// elsewhere, which these tests would take for a routing error.
	testcluster.WaitReplayed(t, context.Background())
	victim := testcluster.Cluster().Nodes[1].Addr()
	testcluster.WaitUntil(t, time.Minute, "replica1 healthy", func() bool { return nodeState(c, victim) == pgreplica.StateHealthy })
	return db, c, policy
}

func poolOf(c *pgreplica.Connector, addr string) pgreplica.PoolStatus {
	for _, n := range c.Status().Nodes {
		if n.Addr == addr {
			return n.Pool
		}
	}
	return pgreplica.PoolStatus{}
}

type portResult struct {
	port int
	err  error
	at   time.Time
}

// partitioner is what internal/sandbox offers for network partitions
// (dropped packets) where it has them.
type partitioner interface {
	Partition(ctx context.Context) error
	Heal(ctx context.Context) error
}

// TestFrozenReplicaWaitingRead: replica1 has one connection, held by a
// sql.Conn with a read pending on it; a second read waits for that
// connection. When replica1 freezes, the waiting read must leave as soon as
// replica1 is reported frozen and be served by replica2, and replica1's
// pool slot must be free within one connect timeout (2 s).
func TestFrozenReplicaWaitingRead(t *testing.T) {
	victim := testcluster.Cluster().Nodes[1]
	t.Cleanup(func() { _ = victim.Thaw() })
	waitingReadOnDeadReplica(t, "frozen", victim.Freeze)
}

// TestPartitionedReplicaWaitingRead is the same with replica1 cut off the
// network (every packet dropped): the cancel requests pgx sends for its
// aborted connections must not hold the pool's slots while they dial.
func TestPartitionedReplicaWaitingRead(t *testing.T) {
	ctx := context.Background()
	victim := testcluster.Cluster().Nodes[1]
	p, ok := any(victim).(partitioner)
	if !ok {
		t.Skip("internal/sandbox has no Node.Partition on this branch")
	}
	t.Cleanup(func() { _ = p.Heal(ctx) })
	waitingReadOnDeadReplica(t, "partitioned", func() error { return p.Partition(ctx) })
}

func waitingReadOnDeadReplica(t *testing.T, what string, fault func() error) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	victim, other := cl.Nodes[1], cl.Nodes[2]
	// Hedging off: a hedge would serve the waiting read from replica2
	// after its delay (TestHedge* cover that); this is about the wait
	// itself ending when replica1 is found dead.
	db, c, policy := openToReplica1(t, monitorParams, "replica_max_conns=1", "hedge_after=off")

	// replica2 gets an idle connection first: what is timed below is the
	// read leaving replica1, not a new connection's authentication on a
	// busy machine.
	// Setup reads are retried: on a busy machine the monitor may briefly
	// take a replica out of routing (a probe that missed its timeout),
	// and a read then rightly goes elsewhere; what is tested starts once
	// the setup holds.
	policy.prefer(other)
	testcluster.WaitUntil(t, time.Minute, "a warm-up read served by replica2", func() bool {
		return testcluster.Port(t, ctx, db) == other.Port
	})
	policy.prefer(victim)

	var holder *sql.Conn
	testcluster.WaitUntil(t, time.Minute, "a sql.Conn whose first read replica1 serves", func() bool {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if testcluster.Port(t, ctx, conn) != victim.Port {
			conn.Close()
			return false
		}
		holder = conn
		return true
	})
	defer holder.Close()
	pending := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var port int
		pending <- holder.QueryRowContext(pctx, "SELECT pg_sleep(30), inet_server_port()").Scan(new(string), &port)
	}()

	waiting := make(chan portResult, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var r portResult
		r.err = db.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&r.port)
		r.at = time.Now()
		waiting <- r
	}()
	select {
	case r := <-waiting:
		t.Fatalf("the read did not wait for replica1's only connection: port %d, err %v", r.port, r.err)
	case <-time.After(500 * time.Millisecond):
	}

	rounds := watchRounds(t, c, cl.Nodes[0].Addr(), other.Addr())
	if err := fault(); err != nil {
		t.Fatal(err)
	}
	faultAt := time.Now()
	testcluster.WaitUntil(t, 5*time.Second, "replica1 out of routing", func() bool {
		s := nodeState(c, victim.Addr())
		return s == pgreplica.StateFrozen || s == pgreplica.StateDown
	})
	detected := time.Now()
	r := <-waiting
	if r.err != nil {
		t.Fatalf("the waiting read failed: %v", r.err)
	}
	if r.port != other.Port {
		t.Fatalf("the waiting read was served by %s, want replica2", testcluster.Role(r.port))
	}
	t.Logf("replica1 %s; out of routing %v later (%s); the waiting read was served by replica2 %v after that",
		what, detected.Sub(faultAt).Round(time.Millisecond), nodeState(c, victim.Addr()), r.at.Sub(detected).Round(time.Millisecond))
	late := r.at.Sub(detected) // WaitUntil polls every 20 ms: it may be < 0

	if err := <-pending; err == nil {
		t.Fatalf("the read pending on the %s replica succeeded", what)
	}
	holder.Close()
	free := testcluster.WaitUntil(t, 2*time.Second, "replica1's pool slot freed (within one connect timeout)", func() bool {
		return poolOf(c, victim.Addr()).Total == 0
	})
	t.Logf("replica1's pool empty %v after the sql.Conn was closed", free.Round(time.Millisecond))

	// Reads meanwhile go to replica2 without waiting.
	var slowest time.Duration
	for range 20 {
		began := time.Now()
		if port := testcluster.Port(t, ctx, db); port != other.Port {
			t.Fatalf("read while replica1 is %s served by %s", what, testcluster.Role(port))
		}
		slowest = max(slowest, time.Since(began))
	}

	// Woken when replica1 left routing, the waiting read took one of
	// replica2's idle connections (a ping first if it idled over a
	// second) and ran: a few round trips, not a wait for a connect
	// timeout or for the pending read. The bound grows with what this
	// machine's round trips take now (a monitor round of the other
	// nodes, which is one round trip each, and 4 of the slowest read
	// since), and is never under 300ms.
	round, _ := rounds.through(t, r.at)
	if bound := max(300*time.Millisecond, round+4*slowest+pollSlack); late > bound {
		t.Fatalf("the waiting read ended %v after replica1 left routing, want within %v (the longest monitor round %v, the slowest read since %v)", late, bound, round, slowest)
	}
}

// TestReadOnlyTxMovesBeforeFirstRow: replica1 is stopped between BEGIN READ
// ONLY and the first SELECT; the SELECT is served by replica2 and COMMIT
// succeeds.
func TestReadOnlyTxMovesBeforeFirstRow(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	victim, other := cl.Nodes[1], cl.Nodes[2]
	db, _, _ := openToReplica1(t, monitorParams)
	t.Cleanup(func() { _ = victim.Start(ctx) })

	rctx, route := pgreplica.WithRoute(ctx)
	tx, err := db.BeginTx(rctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if route.Node() != victim.Addr() {
		t.Fatalf("BEGIN READ ONLY on %s, want replica1 %s", route.Node(), victim.Addr())
	}
	if err := victim.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var port int
	if err := tx.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatalf("first SELECT after replica1 stopped: %v", err)
	}
	if port != other.Port {
		t.Fatalf("first SELECT served by %s, want replica2", testcluster.Role(port))
	}
	// Still one transaction on replica2: a second statement sees the same
	// server and the same transaction.
	var p2 int
	var readOnly string
	if err := tx.QueryRowContext(ctx, "SELECT inet_server_port(), current_setting('transaction_read_only')").Scan(&p2, &readOnly); err != nil {
		t.Fatal(err)
	}
	if p2 != other.Port || readOnly != "on" {
		t.Fatalf("second statement: %s, transaction_read_only=%s", testcluster.Role(p2), readOnly)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("COMMIT: %v", err)
	}
}

// TestReadOnlyTxCommitAfterReplicaStops: a read-only transaction has read
// from replica1, which is stopped before COMMIT. A further read fails (it
// has seen data: it does not move), and COMMIT (or ROLLBACK) succeeds: a
// standby has nothing to lose. A SERIALIZABLE read-only transaction, which
// runs on the primary, still reports a commit whose connection was lost.
func TestReadOnlyTxCommitAfterReplicaStops(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	victim := cl.Nodes[1]
	db, _, _ := openToReplica1(t, monitorParams)
	t.Cleanup(func() { _ = victim.Start(ctx) })

	begin := func() *sql.Tx {
		t.Helper()
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if port := testcluster.Port(t, ctx, tx); port != victim.Port {
			t.Fatalf("read-only transaction on %s, want replica1", testcluster.Role(port))
		}
		return tx
	}
	committed, rolledBack, stays := begin(), begin(), begin()
	if err := victim.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var port int
	if err := stays.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err == nil {
		t.Fatalf("a read after the first row moved silently to %s", testcluster.Role(port))
	}
	if err := stays.Rollback(); err != nil {
		t.Fatalf("ROLLBACK after a failed read: %v", err)
	}
	if err := committed.Commit(); err != nil {
		t.Fatalf("COMMIT of a read-only transaction whose replica stopped: %v", err)
	}
	if err := rolledBack.Rollback(); err != nil {
		t.Fatalf("ROLLBACK of a read-only transaction whose replica stopped: %v", err)
	}
	if err := victim.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// SERIALIZABLE: on the primary; its backend is terminated before COMMIT.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelSerializable})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var pid int
	if err := tx.QueryRowContext(ctx, "SELECT inet_server_port(), pg_backend_pid()").Scan(&port, &pid); err != nil {
		t.Fatal(err)
	}
	if port != cl.Nodes[0].Port {
		t.Fatalf("SERIALIZABLE read-only transaction on %s, want the primary", testcluster.Role(port))
	}
	if _, err := cl.QueryInt(ctx, 0, "SELECT count(*) FROM (SELECT pg_terminate_backend("+strconv.Itoa(pid)+")) t"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err == nil {
		t.Fatal("COMMIT of a SERIALIZABLE read-only transaction whose primary connection was terminated reported success")
	} else {
		t.Logf("SERIALIZABLE on the primary: COMMIT reports %v", err)
	}
}

// TestRestartedReplicaServesFast: a replica down for 20 s is probed again
// within three monitor rounds of accepting connections again (600ms on an
// idle machine, longer as a loaded one stretches the rounds: see
// roundWatch), whatever the probe backoff grew to meanwhile, and then
// serves reads. To start it right after a probe (the worst case for a
// backoff), the test listens on its port while it is down, sees the
// monitor's next probe arrive there, then starts it.
func TestRestartedReplicaServesFast(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	victim := cl.Nodes[1]
	db, c, _ := openToReplica1(t, monitorParams)
	t.Cleanup(func() { _ = victim.Start(ctx) })
	testcluster.WaitUntil(t, time.Minute, "a read served by replica1", func() bool {
		return testcluster.Port(t, ctx, db) == victim.Port
	})
	if err := victim.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, 5*time.Second, "replica1 marked down", func() bool {
		return nodeState(c, victim.Addr()) == pgreplica.StateDown
	})
	time.Sleep(20 * time.Second)

	// The address is a container's on the Docker backend: nothing of the
	// host can listen there, so the restart comes at an arbitrary moment
	// of the backoff instead of right after a probe.
	if ln, err := net.Listen("tcp", victim.Addr()); err != nil {
		t.Logf("cannot listen on %s (%v): starting replica1 without waiting for a probe", victim.Addr(), err)
	} else {
		probed := make(chan time.Time, 1)
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
				select {
				case probed <- time.Now():
				default:
				}
			}
		}()
		var at time.Time
		select {
		case at = <-probed:
		case <-time.After(10 * time.Second):
			ln.Close()
			t.Fatal("no probe of the down replica within 10 s")
		}
		ln.Close()
		t.Logf("replica1 starting %v after a probe found it down", time.Since(at).Round(time.Millisecond))
	}
	rounds := watchRounds(t, c, cl.Nodes[0].Addr(), cl.Nodes[2].Addr())
	if err := victim.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// What the backoff decides is when a probe next reaches the node:
	// from then on it is no longer down (healthy, or lagging while it
	// catches up on the WAL it missed, which on a loaded machine may take
	// a while and is no part of the backoff).
	took := testcluster.WaitUntil(t, 10*time.Second, "a probe reaches replica1 again", func() bool {
		return nodeState(c, victim.Addr()) != pgreplica.StateDown
	})
	round, n := rounds.through(t, time.Now())
	back := testcluster.WaitUntil(t, time.Minute, "replica1 serves reads again", func() bool {
		return testcluster.Port(t, ctx, db) == victim.Port
	})
	t.Logf("replica1 down 20 s; probed %s %v after it accepted connections (%d probes of the other nodes meanwhile, the longest %v), serving reads %v after that",
		nodeState(c, victim.Addr()), took.Round(time.Millisecond), n, round.Round(time.Millisecond), back.Round(time.Millisecond))
	// Whatever the backoff grew to, a down node is probed again within
	// maxProbeGap (500ms), which at monitor_interval=200ms is at most two
	// rounds after the last failed probe; the probe that finds it up is
	// one more. Rounds are counted as the longest this machine took
	// meanwhile (200ms on an idle one), so a loaded machine stretches the
	// bound and a backoff left to grow (interval<<4 is 16 rounds) does not
	// fit in it.
	if limit := 3*max(round, 200*time.Millisecond) + pollSlack; took > limit {
		t.Fatalf("replica1 probed again %v after its restart, want within three monitor rounds (%v; the longest round %v)", took, limit, round)
	}
}
