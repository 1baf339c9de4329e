package pgreplica

import (
	"errors"
	"testing"
	"time"
)

// A standby's position is comparable with the primary's only on the same
// timeline: after a promotion, the standby left on the old one gets no
// reads, whatever the bound, until it streams the new timeline.
func TestReplicaOnAnotherTimelineGetsNoReads(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	c := fc.c
	m := &monitor{c: c, interval: time.Second, lagging: make([]bool, 3), noControl: make([]bool, 3)}
	ok := func(standby bool, lsn uint64, tli, replayed uint32) probeResult {
		return probeResult{standby: standby, lsn: lsn, flushLSN: lsn, timeline: tli, replayedTLI: replayed, started: monoNow()}
	}
	m.apply(c.nodes, []probeResult{ok(false, 100, 1, 0), ok(true, 100, 1, 1), ok(true, 100, 1, 1)})
	for _, n := range c.nodes[1:] {
		if why := n.skipReason(noLagLimit, 0); why != usable {
			t.Fatalf("%s before the failover: %s", n.addr, why)
		}
	}
	// node0 stops, node2 is promoted to timeline 2; node1 has no WAL
	// receiver any more and replayed timeline 1 only.
	m.apply(c.nodes, []probeResult{{err: errors.New("refused")}, ok(true, 100, 0, 1), ok(false, 120, 2, 0)})
	if p := c.topo.Load().primary; p != c.nodes[2] {
		t.Fatalf("primary %s, want node2", p.addr)
	}
	if why := c.nodes[1].skipReason(noLagLimit, 0); why != rerouteLag {
		t.Fatalf("node1 on the old timeline: %s, want lag", why)
	}
	if st := c.nodes[1].status(false, 0); st.State != StateLagging {
		t.Fatalf("node1 on the old timeline: state %s", st.State)
	}
	if len(m.history) != 1 {
		t.Fatalf("history has %d samples after the primary changed, want 1", len(m.history))
	}
	// Pointed at node2, it streams timeline 2.
	m.apply(c.nodes, []probeResult{{err: errors.New("refused")}, ok(true, 120, 2, 1), ok(false, 120, 2, 0)})
	if why := c.nodes[1].skipReason(noLagLimit, 0); why != usable {
		t.Fatalf("node1 on the new timeline: %s", why)
	}
	// Caught up with node2's probe: within a bound longer than that
	// probe's age, not within 0 (node2 may have committed since).
	if why := c.nodes[1].skipReason(time.Minute, 0); why != usable {
		t.Fatalf("caught-up node1 with a bound of 1m: %s", why)
	}
	if why := c.nodes[1].skipReason(0, 0); why != rerouteLag {
		t.Fatalf("caught-up node1 with a bound of 0: %s", why)
	}
}

func TestNoteTimeline(t *testing.T) {
	var n node
	for _, tc := range []struct {
		r      probeResult
		forget bool
		want   uint32
	}{
		{probeResult{timeline: 1, replayedTLI: 1}, false, 1},
		{probeResult{timeline: 0, replayedTLI: 1}, false, 1}, // receiver gone or hidden
		{probeResult{timeline: 2, replayedTLI: 1}, false, 2}, // streams the new timeline
		{probeResult{timeline: 0, replayedTLI: 1}, false, 2}, // the newest seen stands
		{probeResult{timeline: 0, replayedTLI: 1}, true, 1},  // another server now
		{probeResult{}, true, 0},
	} {
		n.noteTimeline(tc.r, tc.forget)
		if got := n.timeline.Load(); got != tc.want {
			t.Fatalf("after %+v (forget %v): timeline %d, want %d", tc.r, tc.forget, got, tc.want)
		}
	}
}

// A node whose probe is still under way counts as what its last probe
// said: a primary that answered last time is kept (and a second writable
// node is a split brain), one whose last probe failed is not waited for.
func TestPendingProbeKeepsLastAnswer(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	c := fc.c
	m := &monitor{c: c, interval: time.Second, lagging: make([]bool, 3), noControl: make([]bool, 3)}
	ok := func(standby bool) probeResult {
		return probeResult{standby: standby, lsn: 100, flushLSN: 100, timeline: 1, replayedTLI: 1, started: monoNow()}
	}
	pending := probeResult{skipped: true, pending: true}
	m.apply(c.nodes, []probeResult{ok(false), ok(true), ok(true)})
	// node0's probe is slow; node2 answers as writable meanwhile.
	m.apply(c.nodes, []probeResult{pending, ok(true), ok(false)})
	if p := c.topo.Load().primary; p != c.nodes[0] || !m.splitBrain {
		t.Fatalf("primary %s, split brain %v; want node0 kept, split brain reported", p.addr, m.splitBrain)
	}
	// node0's probe timed out with no other writable node (kept, it may
	// come back); its next probe is under way when node2 is promoted.
	m.apply(c.nodes, []probeResult{{err: errProbeTimeout}, ok(true), ok(true)})
	if p := c.topo.Load().primary; p != c.nodes[0] {
		t.Fatalf("primary %s after a timeout and no other writable node, want node0 kept", p.addr)
	}
	m.apply(c.nodes, []probeResult{pending, ok(true), ok(false)})
	if p := c.topo.Load().primary; p != c.nodes[2] || m.splitBrain {
		t.Fatalf("primary %s, split brain %v; want node2 followed", p.addr, m.splitBrain)
	}
}
