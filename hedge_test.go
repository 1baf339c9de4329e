package pgreplica

import (
	"database/sql/driver"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Every latency falls in a bucket whose upper bound is at or above it and
// whose lower neighbour's is below it, so a percentile read off the
// buckets is an upper bound at most √2 (or 1.5) too high.
func TestLatencyBuckets(t *testing.T) {
	for d := 10 * time.Microsecond; d < 3*time.Second; d = d*21/20 + time.Microsecond {
		i := latencyBucket(d)
		if i == len(latencyBuckets{})-1 {
			continue // the last bucket holds everything above
		}
		if up := bucketUpper(i); up < d {
			t.Fatalf("%v in bucket %d whose upper bound is %v", d, i, up)
		}
		if i > 0 && bucketUpper(i-1) >= d {
			t.Fatalf("%v in bucket %d although bucket %d reaches %v", d, i, i-1, bucketUpper(i-1))
		}
	}
}

func TestPercentileAndDecay(t *testing.T) {
	var h latencyBuckets
	for range 990 {
		h.record(300 * time.Microsecond)
	}
	for range 10 {
		h.record(40 * time.Millisecond)
	}
	p99, p999, n := h.quantilesAndDecay()
	if n != 1000 || p99 < 300*time.Microsecond || p99 > 450*time.Microsecond {
		t.Fatalf("p99 = %v over %d samples; want 300–450µs over 1000", p99, n)
	}
	if p999 < 40*time.Millisecond || p999 > 60*time.Millisecond {
		t.Fatalf("p99.9 = %v; want 40–60ms", p999)
	}
	// Halved: the next interval sees half as much history.
	if _, _, n := h.quantilesAndDecay(); n != 500 {
		t.Fatalf("after one decay %d samples, want 500", n)
	}
	// It empties in time: a lone slow sample does not stay forever.
	for range 20 {
		h.quantilesAndDecay()
	}
	if _, _, n := h.quantilesAndDecay(); n != 0 {
		t.Fatalf("after many decays %d samples left, want 0", n)
	}
}

// The automatic delay is twice the p99 (and at least the p99.9 with
// enough reads), within its bounds; with too few
// reads it keeps the last estimate; fixed and off are taken as they are.
func TestUpdateHedgeDelays(t *testing.T) {
	n := &node{index: 1}
	n.standby.Store(true)
	c := &Connector{cfg: Config{HedgeAfter: HedgeAuto}, nodes: []*node{n}}
	c.updateHedgeDelays()
	if got := time.Duration(n.hedgeDelay.Load()); got != hedgeStartDelay {
		t.Fatalf("no samples: delay %v, want %v", got, hedgeStartDelay)
	}
	for range 1000 {
		n.latency.record(2 * time.Millisecond)
	}
	c.updateHedgeDelays()
	got := time.Duration(n.hedgeDelay.Load())
	// 2000 reads more, 0.5% of them at 30ms: the p99.9 sets the delay.
	for i := range 2000 {
		if i%200 == 0 {
			n.latency.record(30 * time.Millisecond)
		} else {
			n.latency.record(2 * time.Millisecond)
		}
	}
	c.updateHedgeDelays()
	if d := time.Duration(n.hedgeDelay.Load()); d < 30*time.Millisecond || d > 40*time.Millisecond {
		t.Fatalf("p99.9 30ms over 2500 reads: delay %v, want 30–40ms", d)
	}
	n.latency = latencyBuckets{}
	for range 1000 {
		n.latency.record(2 * time.Millisecond)
	}
	c.updateHedgeDelays()
	if got < 4*time.Millisecond || got > 6*time.Millisecond {
		t.Fatalf("p99 2ms: delay %v, want 4–6ms", got)
	}
	n.latency = latencyBuckets{}
	n.latency.record(time.Second)
	c.updateHedgeDelays()
	if again := time.Duration(n.hedgeDelay.Load()); again != got {
		t.Fatalf("one sample: delay %v, want the last estimate %v", again, got)
	}
	n.rttNanos.Store(int64(40 * time.Millisecond))
	fresh := &node{index: 2}
	fresh.rttNanos.Store(int64(40 * time.Millisecond))
	c.nodes = append(c.nodes, fresh)
	c.updateHedgeDelays()
	if d := time.Duration(fresh.hedgeDelay.Load()); d != 160*time.Millisecond {
		t.Fatalf("unmeasured node 40ms away: delay %v, want 4 round trips", d)
	}
	for range 1000 {
		n.latency.record(50 * time.Microsecond)
	}
	c.updateHedgeDelays()
	if d := time.Duration(n.hedgeDelay.Load()); d != hedgeMinDelay {
		t.Fatalf("fast node: delay %v, want the floor %v", d, hedgeMinDelay)
	}
	for _, c2 := range []struct{ after, want time.Duration }{{HedgeOff, 0}, {7 * time.Millisecond, 7 * time.Millisecond}} {
		c.cfg.HedgeAfter = c2.after
		c.updateHedgeDelays()
		if d := time.Duration(n.hedgeDelay.Load()); d != c2.want {
			t.Fatalf("hedge_after %v: delay %v, want %v", c2.after, d, c2.want)
		}
	}
}

// The budget allows a burst, then one hedge per 20 replica reads; hedges
// do not earn budget themselves.
func TestHedgeBudget(t *testing.T) {
	n := &node{index: 1}
	n.standby.Store(true)
	c := &Connector{nodes: []*node{n}}
	took := 0
	for c.takeHedge() {
		took++
	}
	if took != hedgeBurst {
		t.Fatalf("burst %d, want %d", took, hedgeBurst)
	}
	n.statements.Add(1000)
	took = 0
	for c.takeHedge() {
		took++
	}
	if took != 50 {
		t.Fatalf("after 1000 reads %d hedges, want 50", took)
	}
	n.statements.Add(100)
	n.hedgesSent.Add(100)
	if c.takeHedge() {
		t.Fatal("hedges earned budget for more hedges")
	}
}

// A node a hedge beat is skipped while another candidate is usable.
func TestWithoutSlow(t *testing.T) {
	a, b := &node{index: 1}, &node{index: 2}
	b.markSlow()
	if got := withoutSlow([]*node{a, b}); len(got) != 1 || got[0] != a {
		t.Fatalf("got %v, want only the fast node", got)
	}
	a.markSlow()
	if got := withoutSlow([]*node{a, b}); len(got) != 2 {
		t.Fatalf("all slow: got %d nodes, want both", len(got))
	}
}

// The hedge's copy of the arguments does not change when the caller reuses
// its slices, maps or pointers, however deep.
func TestSnapshotArgs(t *testing.T) {
	b := []byte("abc")
	raw := json.RawMessage(`{"a":1}`)
	strs := []string{"x"}
	m := map[string]any{"k": []any{"v", map[string]int{"n": 1}}}
	bb := [][]byte{[]byte("p"), nil}
	s := "s"
	type rec struct {
		Tags  []string
		Inner *struct{ N int }
		t     time.Time
	}
	r := rec{Tags: []string{"t"}, Inner: &struct{ N int }{1}, t: time.Unix(1, 0)}
	args := []driver.NamedValue{{Ordinal: 1, Value: b}, {Ordinal: 2, Value: raw}, {Ordinal: 3, Value: strs},
		{Ordinal: 4, Value: int64(7)}, {Ordinal: 5, Value: m}, {Ordinal: 6, Value: bb}, {Ordinal: 7, Value: &s},
		{Ordinal: 8, Value: r}, {Ordinal: 9, Value: nil}}
	cp, ok := snapshotArgs(args)
	if !ok {
		t.Fatal("snapshotArgs refused plain values")
	}
	b[0], raw[2], strs[0] = 'z', 'z', "y"
	args[3].Value = int64(8)
	m["k"].([]any)[1].(map[string]int)["n"] = 2
	m["new"] = 1
	bb[0][0] = 'q'
	s = "changed"
	r.Tags[0], r.Inner.N = "u", 2
	if string(cp[0].Value.([]byte)) != "abc" || string(cp[1].Value.(json.RawMessage)) != `{"a":1}` ||
		cp[2].Value.([]string)[0] != "x" || cp[3].Value.(int64) != 7 {
		t.Fatalf("copy changed with the caller's arguments: %+v", cp)
	}
	cm := cp[4].Value.(map[string]any)
	if len(cm) != 1 || cm["k"].([]any)[1].(map[string]int)["n"] != 1 {
		t.Fatalf("map copy changed: %v", cm)
	}
	if string(cp[5].Value.([][]byte)[0]) != "p" || cp[5].Value.([][]byte)[1] != nil {
		t.Fatalf("[][]byte copy changed: %q", cp[5].Value)
	}
	if *cp[6].Value.(*string) != "s" {
		t.Fatalf("pointer copy changed: %q", *cp[6].Value.(*string))
	}
	if cr := cp[7].Value.(rec); cr.Tags[0] != "t" || cr.Inner.N != 1 || !cr.t.Equal(time.Unix(1, 0)) {
		t.Fatalf("struct copy changed: %+v", cr)
	}

	// What cannot be copied whole is not hedged.
	type opaque struct{ p *int }
	cyc := map[string]any{}
	cyc["self"] = cyc
	for _, v := range []any{make(chan int), func() {}, opaque{new(int)}, cyc} {
		if _, ok := snapshotArgs([]driver.NamedValue{{Ordinal: 1, Value: v}}); ok {
			t.Errorf("snapshotArgs(%T) = ok; want refused", v)
		}
	}
}

// Concurrent callers never earn the same reads twice.
func TestHedgeBudgetConcurrent(t *testing.T) {
	n := &node{index: 1}
	n.standby.Store(true)
	c := &Connector{nodes: []*node{n}}
	var took atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				n.statements.Add(1)
				if c.takeHedge() {
					took.Add(1)
					n.statements.Add(1) // the hedge's own statement
					n.hedgesSent.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if limit := int64(hedgeBurst + hedgeBudget*16000 + 1); took.Load() > limit {
		t.Fatalf("%d hedges for 16000 reads; want ≤ %d", took.Load(), limit)
	}
}
