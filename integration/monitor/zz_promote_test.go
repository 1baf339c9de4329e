package monitor

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestPromotionFollowedWhileOldPrimaryFrozen runs last in this package (file
// order): it promotes replica1 for good. The old primary is frozen
// (SIGSTOP: it accepts connections and never answers), and once the
// monitor has noticed, replica1 is promoted. Writes must reach replica1
// within a few probe rounds as measured before the freeze: no node's probe
// waits for another's, so the frozen node's probes (each a connect timeout
// long) must not hold back the round that sees the promotion. Before, every
// round waited for every probe: 4.0 s from promote to following it.
func TestPromotionFollowedWhileOldPrimaryFrozen(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	old, next, other := cl.Nodes[0], cl.Nodes[1], cl.Nodes[2]
	const primarySize, replicaSize = 4, 6
	sizes := []string{fmt.Sprintf("primary_max_conns=%d", primarySize), fmt.Sprintf("replica_max_conns=%d", replicaSize)}
	db := testcluster.Open(t, append(sizes, "monitor_interval=200ms")...)
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE promoted_writes (id serial PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	// After the test the old primary stays down: thawed, it would be a
	// second writable node on the old timeline.
	t.Cleanup(func() {
		_ = old.Thaw()
		_ = old.Stop(context.Background())
	})
	testcluster.WaitUntil(t, time.Minute, "every node healthy", func() bool {
		for _, n := range c.Status().Nodes {
			if n.State != pgreplica.StateHealthy {
				return false
			}
		}
		return true
	})

	if got := poolMax(c, old.Addr(), next.Addr()); got != [2]int32{primarySize, replicaSize} {
		t.Fatalf("pool sizes of the primary and replica1 before the promotion: %v, want %d, %d", got, primarySize, replicaSize)
	}

	// The rounds of replica2, which the test leaves alone: how long one
	// takes on this machine now, before anything is frozen.
	w := watchRounds(t, c, other.Addr())
	testcluster.WaitUntil(t, time.Minute, "8 probe rounds of replica2", func() bool { _, n := w.longest(); return n >= 8 })
	base, rounds := w.longest()

	if err := old.Freeze(); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, time.Minute, "the old primary's probe timed out", func() bool { return state(c, old.Addr()) != pgreplica.StateHealthy })
	// Its next probes each wait for a connect timeout: promote while one
	// is under way.
	time.Sleep(2 * base)
	if err := next.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	w.reset()
	took := testcluster.WaitUntil(t, time.Minute, "the promotion followed", func() bool { return c.Status().Primary == next.Addr() })
	during, _ := w.longest()

	// A round that starts up to one round after the promotion sees it; the
	// round after that at the latest has applied it (a round ends after one
	// interval even if a probe is still under way), and one more round of
	// room for scheduling.
	bound := 3*base + pollSlack
	t.Logf("promotion followed %v after pg_ctl promote returned (bound %v: 3 rounds of %v, the longest of %d before the freeze); replica2's longest round gap meanwhile %v",
		took, bound, base, rounds, during)
	if took > bound {
		t.Fatalf("promotion followed %v after promote, past %v (3 probe rounds of %v measured before the freeze): a round waited for the frozen node", took, bound, base)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var port int
	if err := db.QueryRowContext(wctx, "INSERT INTO promoted_writes DEFAULT VALUES RETURNING inet_server_port()").Scan(&port); err != nil {
		t.Fatal(err)
	}
	if port != next.Port {
		t.Fatalf("write after the promotion answered by port %d, want the promoted replica1 (%d)", port, next.Port)
	}

	// Settings follow the role, not the DSN position: the promoted replica1
	// has the primary's pool size now.
	if got := poolMax(c, next.Addr(), other.Addr()); got != [2]int32{primarySize, replicaSize} {
		t.Fatalf("pool sizes of the promoted replica1 and of replica2 after the promotion: %v, want %d, %d", got, primarySize, replicaSize)
	}
	// And a standby listed first gets the replica's, once probed.
	listed := testcluster.OpenVia(t, []string{other.Addr(), next.Addr()}, append(sizes, "monitor_interval=200ms")...)
	lc, err := pgreplica.ConnectorOf(ctx, listed)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, time.Minute, "replica1 known as the primary", func() bool { return lc.Status().Primary == next.Addr() })
	if got := poolMax(lc, other.Addr(), next.Addr()); got != [2]int32{replicaSize, primarySize} {
		t.Fatalf("pool sizes of a standby listed first and of the primary listed second: %v, want %d, %d", got, replicaSize, primarySize)
	}
}

// poolMax returns the pool sizes Status reports for the nodes at a and b.
func poolMax(c *pgreplica.Connector, a, b string) [2]int32 {
	var got [2]int32
	for _, n := range c.Status().Nodes {
		switch n.Addr {
		case a:
			got[0] = n.Pool.Max
		case b:
			got[1] = n.Pool.Max
		}
	}
	return got
}

// pollSlack is what testcluster.WaitUntil's polling (every 20 ms) adds to a
// duration it measures, with a Status call.
const pollSlack = 50 * time.Millisecond

// roundWatch follows the monitor's probes of a node the test leaves alone
// (as integration/faults' does): each answered probe stamps its
// LastProbe, so a newer one is a new round, and the longest gap between
// two is how long a round takes on this machine now. A round falling
// between two samples only makes a gap longer.
type roundWatch struct {
	mu   sync.Mutex
	last time.Time
	gap  time.Duration
	n    int
	stop chan struct{}
	done chan struct{}
}

func watchRounds(t *testing.T, c *pgreplica.Connector, addr string) *roundWatch {
	w := &roundWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			for _, n := range c.Status().Nodes {
				if n.Addr != addr || !n.LastProbe.After(w.lastProbe()) {
					continue
				}
				w.mu.Lock()
				if !w.last.IsZero() {
					w.gap = max(w.gap, n.LastProbe.Sub(w.last))
					w.n++
				}
				w.last = n.LastProbe
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(w.stop); <-w.done })
	return w
}

func (w *roundWatch) lastProbe() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// longest is the longest gap between two rounds seen since the last reset,
// and how many rounds that is from.
func (w *roundWatch) longest() (time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gap, w.n
}

// reset forgets the gaps seen so far, not the last round.
func (w *roundWatch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gap, w.n = 0, 0
}
