package pgreplica

import (
	"slices"
	"testing"
	"time"
)

func TestNearestPolicy(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name   string
		window time.Duration
		cands  []Candidate
		want   []int // every index Choose may answer
	}{
		{"one candidate", 15 * ms, []Candidate{{RTT: 40 * ms}}, []int{0}},
		{"the far one is outside the window", 15 * ms,
			[]Candidate{{RTT: 40 * ms}, {RTT: 1 * ms}}, []int{1}},
		{"outside the window even when the near one is busier", 15 * ms,
			[]Candidate{{RTT: 1 * ms, InFlight: 9}, {RTT: 40 * ms}}, []int{0}},
		{"within the window the least busy wins", 15 * ms,
			[]Candidate{{RTT: 1 * ms, InFlight: 3}, {RTT: 10 * ms, InFlight: 1}, {RTT: 40 * ms}}, []int{1}},
		{"the window's edge is inside", 15 * ms,
			[]Candidate{{RTT: 2 * ms, InFlight: 1}, {RTT: 17 * ms}}, []int{1}},
		{"just past the edge is outside", 15 * ms,
			[]Candidate{{RTT: 2 * ms, InFlight: 1}, {RTT: 17*ms + 1}}, []int{0}},
		{"ties within the window go either way", 15 * ms,
			[]Candidate{{RTT: 1 * ms}, {RTT: 50 * ms}, {RTT: 3 * ms}}, []int{0, 2}},
		{"unmeasured counts as within the window", 15 * ms,
			[]Candidate{{RTT: 1 * ms, InFlight: 2}, {RTT: 0}, {RTT: 40 * ms}}, []int{1}},
		{"all unmeasured: least busy", 15 * ms,
			[]Candidate{{InFlight: 2}, {InFlight: 1}, {InFlight: 1}}, []int{1, 2}},
		{"zero window: the fastest only", 0,
			[]Candidate{{RTT: 2 * ms}, {RTT: 2*ms + 1}, {RTT: 2 * ms}}, []int{0, 2}},
		{"negative window is zero", -time.Second,
			[]Candidate{{RTT: 3 * ms}, {RTT: 2 * ms, InFlight: 5}}, []int{1}},
		{"a wide window takes in every zone", time.Second,
			[]Candidate{{RTT: 1 * ms, InFlight: 4}, {RTT: 80 * ms, InFlight: 2}}, []int{1}},
	}
	for _, c := range cases {
		p := Nearest(c.window)
		seen := map[int]bool{}
		for range 200 {
			got := p.Choose(c.cands)
			if !slices.Contains(c.want, got) {
				t.Fatalf("%s: chose %d, want one of %v", c.name, got, c.want)
			}
			seen[got] = true
		}
		if len(seen) != len(c.want) {
			t.Errorf("%s: chose only %v in 200 tries, want every one of %v", c.name, seen, c.want)
		}
	}
}

func TestSmoothRTT(t *testing.T) {
	ms := time.Millisecond
	if got := smoothRTT(0, 40*ms); got != 40*ms {
		t.Fatalf("first sample: %v, want it as it is", got)
	}
	if got := smoothRTT(0, 0); got <= 0 {
		t.Fatalf("a 0 sample left the RTT unmeasured: %v", got)
	}
	// One slow probe moves the average by a fifth of the difference.
	if got := smoothRTT(1*ms, 51*ms); got != 11*ms {
		t.Fatalf("one slow probe: %v, want 11ms", got)
	}
	// A lasting change shows within a few probes.
	rtt := 40 * ms
	for range 10 {
		rtt = smoothRTT(rtt, 1*ms)
	}
	if rtt > 6*ms {
		t.Fatalf("after 10 probes at 1ms, from 40ms: %v", rtt)
	}
}

// pickReplica hands the policy each node's smoothed RTT.
func TestNearestRoutesByMeasuredRTT(t *testing.T) {
	cfg := defaultCfg()
	cfg.Policy = Nearest(15 * time.Millisecond)
	fc := newFakeCluster(t, 3, cfg)
	fc.c.nodes[1].rttNanos.Store(int64(41 * time.Millisecond))
	fc.c.nodes[2].rttNanos.Store(int64(400 * time.Microsecond))
	fc.c.nodes[3].rttNanos.Store(int64(45 * time.Millisecond))
	for range 20 {
		fc.mocks[2].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	}
	for range 20 {
		if err := fc.db.QueryRow("SELECT x FROM t").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
	}
	// The near one down: the two far ones share the reads.
	fc.c.nodes[2].up.Store(false)
	cn := &conn{c: fc.c}
	served := map[int]int{}
	for range 200 {
		n, err := fc.c.pickReplica(cn, 0, 0, 0)
		if err != nil || n == nil {
			t.Fatalf("pickReplica: %v, %v", n, err)
		}
		served[n.index]++
	}
	if served[2] != 0 || served[1] < 50 || served[3] < 50 {
		t.Fatalf("with the near replica down, reads went to %v (by node index)", served)
	}
}

// The monitor folds each answered probe into the node's smoothed RTT,
// keeps it while the node is down, and starts afresh when it comes back:
// a restarted or re-routed node is measured anew.
func TestMonitorSmoothsRTT(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	m := &monitor{c: fc.c, interval: time.Second, lagging: make([]bool, len(fc.c.nodes))}
	n := fc.c.nodes[1]
	round := func(replica probeResult) {
		m.apply(fc.c.nodes, []probeResult{{lsn: 100, flushLSN: 100, latency: time.Millisecond}, replica})
	}
	round(probeResult{standby: true, lsn: 100, latency: 40 * time.Millisecond})
	if got := n.status(false, time.Second).RTT; got != 40*time.Millisecond {
		t.Fatalf("after the first probe RTT = %v, want 40ms", got)
	}
	round(probeResult{standby: true, lsn: 100, latency: 10 * time.Millisecond})
	if got := time.Duration(n.rttNanos.Load()); got != 34*time.Millisecond {
		t.Fatalf("after a 10ms probe RTT = %v, want 34ms", got)
	}
	round(probeResult{err: errProbeTimeout})
	if n.up.Load() || time.Duration(n.rttNanos.Load()) != 34*time.Millisecond {
		t.Fatalf("down: up=%v RTT=%v, want down and the RTT kept", n.up.Load(), time.Duration(n.rttNanos.Load()))
	}
	n.nextProbe.Store(0)
	round(probeResult{standby: true, lsn: 100, latency: 2 * time.Millisecond})
	if got := time.Duration(n.rttNanos.Load()); !n.up.Load() || got != 2*time.Millisecond {
		t.Fatalf("back up: up=%v RTT=%v, want up and 2ms", n.up.Load(), got)
	}
}
