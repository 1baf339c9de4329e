package pgreplica

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

var (
	errTooManyClients = fmt.Errorf("connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "sorry, too many clients already", Routine: "InitProcess"})
	errRoleLimit      = fmt.Errorf("connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: `too many connections for role "app"`, Routine: "InitializeSessionUserId"})
)

// The backoff doubles from one monitor interval up to refusedCap intervals
// after a server-wide refusal, and jumps to quotaBackoff intervals after a
// role's or database's CONNECTION LIMIT refused twice in a row.
func TestRefusedBackoff(t *testing.T) {
	const iv = time.Second
	for k, want := range map[int32]time.Duration{1: iv, 2: 2 * iv, 3: 4 * iv, 5: 16 * iv, 9: refusedCap * iv} {
		if got := refusedBackoff(k, iv, false); got != want {
			t.Errorf("server-wide refusal %d: backoff %v, want %v", k, got, want)
		}
	}
	for k, want := range map[int32]time.Duration{1: iv, 2: quotaBackoff * iv, 7: quotaBackoff * iv} {
		if got := refusedBackoff(k, iv, true); got != want {
			t.Errorf("quota refusal %d: backoff %v, want %v", k, got, want)
		}
	}
	if isConnectionQuota(errTooManyClients) || !isConnectionQuota(errRoleLimit) ||
		!isConnectionQuota(&pgconn.PgError{Code: "53300", Routine: "CheckMyDatabase"}) {
		t.Error("isConnectionQuota misreads max_connections, a role limit or a database limit")
	}
}

// After a refusal the node is backed off for between half and all of the
// backoff; refusals of attempts already under way do not lengthen it.
func TestRefusedJitterAndBurst(t *testing.T) {
	n := &node{}
	const iv = 100 * time.Millisecond
	seen := map[int64]bool{}
	for range 20 {
		n.fullUntil.Store(0)
		n.fullStreak.Store(0)
		before := time.Now().UnixNano()
		n.refused(errTooManyClients, iv)
		d := n.fullUntil.Load() - before
		if d < int64(iv/2) || d > int64(iv)+int64(time.Millisecond) {
			t.Fatalf("backoff %v, want within [%v, %v]", time.Duration(d), iv/2, iv)
		}
		seen[d/int64(time.Millisecond)] = true
	}
	if len(seen) < 3 {
		t.Errorf("20 backoffs took %d distinct values (ms): no jitter", len(seen))
	}
	// A burst of refusals while backed off counts once.
	for range 10 {
		n.refused(errTooManyClients, iv)
	}
	if k := n.fullStreak.Load(); k != 1 {
		t.Fatalf("streak %d after a burst, want 1", k)
	}
	n.connected()
	if n.serverFull() || n.fullStreak.Load() != 0 || n.fullBlocks(fullProbation) {
		t.Fatal("a new connection did not end the backoff")
	}
}

// Once the backoff has passed exactly one caller may try; the others stay
// away until its attempt is refused (a longer backoff) or opens a
// connection (the mark ends), or its probation passes.
func TestRefusedOneAttemptAfterBackoff(t *testing.T) {
	n := &node{}
	n.refused(errTooManyClients, time.Millisecond)
	if !n.fullBlocks(fullProbation) || !n.serverFull() {
		t.Fatal("not backed off right after a refusal")
	}
	time.Sleep(5 * time.Millisecond)
	var admitted atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if !n.fullBlocks(fullProbation) {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	if got := admitted.Load(); got != 1 {
		t.Fatalf("%d callers admitted after the backoff, want 1", got)
	}
	if !n.serverFull() {
		t.Fatal("not reported full while the first attempt is under way")
	}
	// Refused again: the streak grows and the node is backed off again.
	n.refused(errTooManyClients, time.Millisecond)
	if k := n.fullStreak.Load(); k != 2 || !n.fullBlocks(fullProbation) {
		t.Fatalf("streak %d after the first attempt was refused, want 2 and backed off", k)
	}
	// A first attempt served by an idle connection: after the probation the
	// node is usable again.
	time.Sleep(5 * time.Millisecond)
	if n.fullBlocks(time.Millisecond) {
		t.Fatal("no caller admitted after the second backoff")
	}
	time.Sleep(5 * time.Millisecond)
	if n.fullBlocks(time.Millisecond) || n.serverFull() {
		t.Fatal("still backed off after a first attempt that was not refused")
	}
}

// A connect that timed out after the node's last answer was 53300 keeps it
// full and backed off, not down (issue 19: under load a full replica's
// refusal arrived after the connect timeout, and the node was reported
// down).
func TestTimeoutAfterRefusalStaysFull(t *testing.T) {
	c := &Connector{cfg: Config{MonitorInterval: time.Second}}
	n := &node{}
	n.up.Store(true)
	c.connectFailed(n, errTooManyClients)
	n.fullUntil.Store(time.Now().UnixNano() - 1) // the backoff passed
	if n.fullBlocks(time.Minute) {
		t.Fatal("the first attempt after the backoff was blocked")
	}
	c.connectFailed(n, fmt.Errorf("connect: %w", context.DeadlineExceeded))
	if !n.up.Load() || !n.serverFull() || n.fullStreak.Load() != 2 {
		t.Fatalf("after a timeout following 53300: up %v, full %v, streak %d; want up, full, 2", n.up.Load(), n.serverFull(), n.fullStreak.Load())
	}
}

// The monitor's rule is traffic's: a probe whose new connection timed out
// while the node's last answer was 53300 keeps it full and backed off, not
// down (issue 19, the fleet's leftover). A timeout on a node that refused
// nothing, or on an open probe connection, is still a freeze.
func TestProbeConnectTimeoutAfterRefusalStaysFull(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	c := fc.c
	m := &monitor{c: c, interval: time.Second, lagging: make([]bool, 3), noControl: make([]bool, 3)}
	ok := probeResult{standby: true, lsn: 100, flushLSN: 100, timeline: 1, replayedTLI: 1, started: monoNow()}
	primary := probeResult{lsn: 100, flushLSN: 100, timeline: 1, started: monoNow()}
	round := func(r1, r2 probeResult) { m.apply(c.nodes, []probeResult{primary, r1, r2}) }
	full, fresh := c.nodes[1], c.nodes[2]

	round(probeResult{err: errTooManyClients}, ok)
	full.fullUntil.Store(time.Now().UnixNano() - 1) // the backoff passed
	round(probeResult{err: errProbeConnectTimeout}, probeResult{err: errProbeConnectTimeout})
	if !full.up.Load() || !full.serverFull() || full.fullStreak.Load() != 2 {
		t.Fatalf("after a probe connect timeout following 53300: up %v, full %v, streak %d; want up, full, 2",
			full.up.Load(), full.serverFull(), full.fullStreak.Load())
	}
	if st := full.status(false, 0); st.State == StateDown || st.State == StateFrozen {
		t.Fatalf("full node reported %s", st.State)
	}
	if fresh.up.Load() {
		t.Fatal("a probe connect timeout on a node that refused nothing left it up")
	}
	// A query that timed out on an open probe connection: a freeze, even
	// on a node marked full.
	round(probeResult{err: errProbeTimeout}, ok)
	if full.up.Load() {
		t.Fatal("a probe query timeout left the node up")
	}
}
