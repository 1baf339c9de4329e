package pgreplica

import (
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// setBehind makes the node known to have everything the primary had d ago
// (a negative d: for that long from now on, caught up) and its measured
// lag d, as the monitor would after a probe.
func (n *node) setBehind(d time.Duration) {
	n.knownAt.Store(monoNow() - int64(d))
	n.lagNanos.Store(int64(max(d, 0)))
}

func TestProbeInterval(t *testing.T) {
	for _, tc := range []struct {
		interval, maxLag, want time.Duration
	}{
		{time.Second, time.Second, 500 * time.Millisecond}, // the defaults
		{time.Second, MaxReplicaLagOff, time.Second},
		{200 * time.Millisecond, time.Second, 200 * time.Millisecond},
		{time.Second, 3 * time.Second, time.Second},
		{time.Second, 60 * time.Millisecond, staleProbeFloor},
		{10 * time.Millisecond, 15 * time.Millisecond, 10 * time.Millisecond},
	} {
		if got := probeInterval(&Config{MonitorInterval: tc.interval, MaxReplicaLag: tc.maxLag}); got != tc.want {
			t.Errorf("monitor_interval=%v max_replica_lag=%v: probes every %v, want %v", tc.interval, tc.maxLag, got, tc.want)
		}
	}
}

// What each round of probes makes known of a replica, from the primary's
// positions and the replica's last replayed commit, and how old the
// knowledge may get before the replica stops serving a bounded read.
func TestStalenessFromProbes(t *testing.T) {
	const (
		second  = int64(time.Second)
		primary = int64(1e18) // the primary's clock, unix nanos
	)
	// Rounds start a second apart.
	base := int64(1)
	at := func(round int) int64 { return base + int64(round)*second }
	prim := func(round int, lsn uint64) probeResult {
		// Its clock read 3ms after the probe started.
		return probeResult{lsn: lsn, flushLSN: lsn, timeline: 1, started: at(round), clock: primary + at(round) - base + 3e6}
	}
	repl := func(round int, lsn uint64, commit int64) probeResult {
		r := probeResult{standby: true, lsn: lsn, timeline: 1, replayedTLI: 1, started: at(round) + 1e6, latency: time.Millisecond}
		if commit != 0 {
			r.clock = primary + commit - base
		}
		return r
	}
	type round struct {
		primary, node1, node2 probeResult
	}
	for _, tc := range []struct {
		name   string
		rounds []round
		// What node1 is known to have had: the monoNow of the moment,
		// relative to base (-1: unknown), and the horizon, likewise
		// (-1: none).
		known, horizon int64
	}{
		{"caught up with the round's primary probe", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
		}, at(1) - base, -1},
		{"a moment behind a busy primary: the probe before", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{prim(2, 200), repl(2, 190, 0), repl(2, 200, 0)},
		}, at(1) - base, -1},
		{"a moment behind, its last commit stamped 10ms before it was probed", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{prim(2, 200), repl(2, 190, at(2)-10e6), repl(2, 200, 0)},
		}, at(2) - 10e6 - 3e6 - base, -1}, // less the 3ms the primary's clock reading may have been late
		{"a commit stamp later than the probe (a clock that jumped): the probe's end", []round{
			{prim(1, 100), repl(1, 50, at(1)+5*second), repl(1, 100, 0)},
		}, at(1) + 2e6 - base, -1},
		{"paused: the last probe of what it replayed", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{prim(2, 200), repl(2, 150, at(1)+1e6), repl(2, 200, 0)},
			{prim(3, 300), repl(3, 150, at(1)+1e6), repl(3, 300, 0)},
			{prim(4, 400), repl(4, 150, at(1)+1e6), repl(4, 400, 0)},
		}, at(1) - base, -1},
		{"behind every sample, no commit stamp", []round{
			{prim(1, 100), repl(1, 50, 0), repl(1, 100, 0)},
		}, -1, -1},
		{"not heard from: what it had replayed it still has", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{prim(2, 200), probeResult{skipped: true}, repl(2, 200, 0)},
		}, at(1) - base, -1},
		{"down: nothing is known", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{prim(2, 200), probeResult{err: errors.New("refused")}, repl(2, 200, 0)},
		}, -1, -1},
		{"the primary stops answering: the horizon is its first failed probe", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{probeResult{err: errors.New("refused"), started: at(2)}, repl(2, 100, 0), repl(2, 100, 0)},
			{probeResult{err: errors.New("refused"), started: at(3)}, repl(3, 100, 0), repl(3, 100, 0)},
		}, at(1) - base, at(2) - base},
		{"a primary refusing the probe for want of slots is not down", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{probeResult{err: &pgconn.PgError{Code: "53300"}, started: at(2)}, repl(2, 100, 0), repl(2, 100, 0)},
		}, at(1) - base, -1},
		{"the primary answers again", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{probeResult{err: errors.New("refused"), started: at(2)}, repl(2, 100, 0), repl(2, 100, 0)},
			{prim(3, 100), repl(3, 100, 0), repl(3, 100, 0)},
		}, at(3) - base, -1},
		{"another primary: the old one's positions say nothing", []round{
			{prim(1, 100), repl(1, 100, 0), repl(1, 100, 0)},
			{probeResult{err: errors.New("refused"), started: at(2)}, repl(2, 100, 0), probeResult{lsn: 120, flushLSN: 120, timeline: 1, started: at(2)}},
		}, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 2, defaultCfg())
			c := fc.c
			m := &monitor{c: c, interval: time.Second, lagging: make([]bool, 3), noControl: make([]bool, 3)}
			for _, r := range tc.rounds {
				m.apply(c.nodes, []probeResult{r.primary, r.node1, r.node2})
			}
			n := c.nodes[1]
			known, horizon := n.knownAt.Load(), n.horizon.Load()
			if known != 0 {
				known -= base
			} else {
				known = -1
			}
			if horizon != 0 {
				horizon -= base
			} else {
				horizon = -1
			}
			if known != tc.known || horizon != tc.horizon {
				t.Fatalf("known at %v, horizon %v (after base); want %v, %v", time.Duration(known), time.Duration(horizon), time.Duration(tc.known), time.Duration(tc.horizon))
			}
		})
	}
}

// A replica serves a bounded read while what it is known to have is no
// older than the bound, counting time since the knowledge was gathered,
// up to the horizon when the primary stopped answering.
func TestWithinLag(t *testing.T) {
	now := monoNow()
	for _, tc := range []struct {
		name           string
		known, horizon time.Duration // before now; 0: none
		maxLag         time.Duration
		want           bool
	}{
		{"fresh", 200 * time.Millisecond, 0, time.Second, true},
		{"knowledge aged past the bound", 1100 * time.Millisecond, 0, time.Second, false},
		{"nothing known", 0, 0, time.Second, false},
		{"nothing known, no limit", 0, 0, noLagLimit, true},
		{"a bound of 0", time.Millisecond, 0, 0, false},
		{"old, but the primary stopped answering soon after", 5 * time.Second, 4500 * time.Millisecond, time.Second, true},
		{"the primary stopped answering long after", 5 * time.Second, 3 * time.Second, time.Second, false},
	} {
		var n node
		if tc.known != 0 {
			n.knownAt.Store(now - int64(tc.known))
		}
		if tc.horizon != 0 {
			n.horizon.Store(now - int64(tc.horizon))
		}
		if got := n.withinLag(tc.maxLag); got != tc.want {
			t.Errorf("%s: withinLag(%v) = %v, want %v", tc.name, tc.maxLag, got, tc.want)
		}
	}
}
