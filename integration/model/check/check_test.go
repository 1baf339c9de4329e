package check

import (
	"strings"
	"testing"
	"time"
)

const (
	pPort  = 5000 // primary
	r1Port = 5001
	r2Port = 5002
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// base is a clean history: heartbeats every 10 ms for 10 s, all on the
// primary, one acknowledged write per scope, and reads that saw it all.
func base() *History {
	h := &History{
		Seed: 42, PrimaryPort: pPort,
		Roles:           map[int]string{pPort: "primary", r1Port: "replica1", r2Port: "replica2"},
		Final:           map[int64]Row{},
		FinalHB:         map[int64]bool{},
		MonitorInterval: ms(200),
		Margin:          ms(500),
	}
	for s := int64(1); s <= 1000; s++ {
		h.Heartbeats = append(h.Heartbeats, Heartbeat{Seq: s, Acked: ms(int(s) * 10)})
		h.FinalHB[s] = true
	}
	for t := 0; t <= 10000; t += 100 {
		h.Probes = append(h.Probes, ProbeSample{At: ms(t), DB: "d", LastProbe: map[int]time.Duration{pPort: ms(t), r1Port: ms(t), r2Port: ms(t)}})
	}
	h.Ops = []Op{
		{ID: 1, DB: "d", Kind: "exec write", Scope: 7, Start: ms(1000), End: ms(1002), Key: 7_000_001, Acked: true},
		{ID: 2, DB: "d", Kind: "session read", Scope: 7, Start: ms(1010), End: ms(1011), Port: r1Port, Reason: "read",
			Read: true, HB: 100, ScopeMax: 7_000_001, RYW: true, Stale: true, Bound: time.Second},
		{ID: 3, DB: "d", Kind: "UsePrimary read", Start: ms(2000), End: ms(2001), Port: pPort, Reason: "use_primary",
			Read: true, HB: 199, Fresh: true},
		{ID: 4, DB: "d", Kind: "write fn", Start: ms(3000), End: ms(3003), Key: 8_000_001, Acked: true, WriteFn: true, Port: pPort, Reason: "read_only_error"},
	}
	h.Final[7_000_001] = Row{Port: pPort, N: 1}
	h.Final[8_000_001] = Row{Port: pPort, N: 1}
	h.Pools = []PoolSample{{At: ms(500), DB: "d", Port: pPort, Live: 3, Cap: 7}}
	return h
}

func TestCleanHistoryPasses(t *testing.T) {
	if vs := Check(base()); len(vs) != 0 {
		t.Fatalf("clean history: %v", vs)
	}
}

// Each case breaks one thing in a clean history; exactly that invariant
// must fire, and Explain must print the seed and the violating op.
func TestEachInvariantFires(t *testing.T) {
	cases := []struct {
		name   string
		want   string
		break_ func(h *History)
	}{
		{"a standby acknowledged a write", NoStandbyWrite, func(h *History) {
			h.Ops[3].Port = r1Port
		}},
		{"a row written by a standby", NoStandbyWrite, func(h *History) {
			h.Final[8_000_001] = Row{Port: r2Port, N: 1}
		}},
		{"acknowledged write missing", AckedDurable, func(h *History) {
			delete(h.Final, 8_000_001)
		}},
		{"acknowledged by the new primary, missing after a failover", AckedDurable, func(h *History) {
			h.FailoverAt, h.PromotedAt, h.NewPrimaryPort = ms(2500), ms(2800), r1Port
			h.OldPrimary = map[int64]Row{7_000_001: {Port: pPort, N: 1}}
			h.OldHB = h.FinalHB
			h.Ops[3].Port = r1Port
			h.Roles[r1Port] = "replica1 (new primary)"
			delete(h.Final, 8_000_001)
		}},
		{"effect ran twice", NoDoubleEffect, func(h *History) {
			h.Final[8_000_001] = Row{Port: pPort, N: 2}
		}},
		{"session read missed its write", ReadYourWrites, func(h *History) {
			h.Ops[1].ScopeMax = 0
		}},
		{"plain read too stale", BoundedStale, func(h *History) {
			// Saw heartbeat 1 (t=10ms) at t=1010ms... fine; at t=5s it is not.
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "plain read", Start: ms(5000), End: ms(5001), Port: r2Port,
				Read: true, HB: 200, Stale: true, Bound: time.Second})
		}},
		{"WithMaxLag(0) read 1s behind", BoundedStale, func(h *History) {
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "WithMaxLag(0) read", Start: ms(5000), End: ms(5001), Port: r2Port,
				Read: true, HB: 400, Stale: true, Bound: 0})
		}},
		{"fresh read missed a heartbeat", BoundedStale, func(h *History) {
			h.Ops[2].HB = 198
		}},
		{"old-timeline replica serving after a failover", BoundedStale, func(h *History) {
			h.FailoverAt, h.PromotedAt, h.NewPrimaryPort = ms(4000), ms(4500), r1Port
			h.OldPrimary = map[int64]Row{}
			h.OldHB = map[int64]bool{}
			for s := int64(1); s <= 400; s++ {
				h.OldHB[s] = true
			}
			for s := int64(380); s <= 450; s++ {
				delete(h.FinalHB, s) // lost with the old primary
			}
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "plain read", Start: ms(9000), End: ms(9001), Port: r2Port,
				Read: true, HB: 400, Stale: true, Bound: time.Second})
		}},
		{"write function hedged", NoHedgedWrite, func(h *History) {
			h.Ops[3].Reason = "hedge"
		}},
		{"checkout left the primary", PinnedCheckout, func(h *History) {
			h.Ops = append(h.Ops,
				Op{ID: 5, DB: "d", Kind: "conn: unlogged read", Scope: 9, Checkout: true, Start: ms(6000), End: ms(6001), Port: pPort, Reason: "recovery_error"},
				Op{ID: 6, DB: "d", Kind: "conn: read", Scope: 9, Checkout: true, Start: ms(6002), End: ms(6003), Port: r1Port, Reason: "read",
					Read: true, HB: 599, Stale: true, Bound: time.Second})
		}},
		{"Stmt read failed on the primary while plain reads were served", StmtLikePlain, func(h *History) {
			h.Ops = append(h.Ops,
				Op{ID: 5, DB: "d", Kind: "Stmt read", Start: ms(7000), End: ms(7002), Read: true, Stale: true, Bound: time.Second,
					Stmt: true, PrimaryErr: true, Err: "pgreplica: primary: connection refused"},
				Op{ID: 6, DB: "d", Kind: "plain read", Start: ms(7001), End: ms(7002), Port: r2Port, Reason: "read",
					Read: true, HB: 699, Stale: true, Bound: time.Second})
		}},
		{"a read missed its conn's setting", OwnSettings, func(h *History) {
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "conn: read", Scope: 9, Checkout: true, Start: ms(6002), End: ms(6003), Port: r1Port, Reason: "read",
				Read: true, HB: 599, Stale: true, Bound: time.Second, WantSetting: "w1-9"})
		}},
		{"a read saw another conn's setting", OwnSettings, func(h *History) {
			h.Ops[1].Setting = "w1-9"
		}},
		{"a write failed at once while the primary restarted", PrimaryWaited, func(h *History) {
			h.PrimaryRestarts = []Window{{Start: ms(4000), End: ms(4800)}}
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "exec write", Start: ms(4100), End: ms(4101), Key: 9_000_001,
				Err: "pgreplica: primary 127.0.0.1:5000: failed to connect to `user=x`: dial tcp 127.0.0.1:5000: connect: connection refused"})
		}},
		{"a fresh read failed at once while the primary restarted", PrimaryWaited, func(h *History) {
			h.PrimaryRestarts = []Window{{Start: ms(4000), End: ms(4800)}}
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "UsePrimary read", Start: ms(4700), End: ms(4701), Read: true, Fresh: true,
				Err: "FATAL: the database system is starting up (SQLSTATE 57P03)"})
		}},
		{"a checkout's first SET failed at once while the primary restarted", PrimaryWaited, func(h *History) {
			h.PrimaryRestarts = []Window{{Start: ms(4000), End: ms(4800)}}
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "conn: SET model.uid", Checkout: true, Start: ms(4200), End: ms(4201), Unsent: true,
				Err: "pgreplica: primary 127.0.0.1:5000: failed to connect to `user=x`: dial tcp 127.0.0.1:5000: connect: connection refused"})
		}},
		{"a pure primary read lost its connection", PrimaryReadRuns, func(h *History) {
			h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "UsePrimary slow read", Start: ms(4000), End: ms(4050), Read: true, Fresh: true,
				PrimaryRead: true, Err: "FATAL: terminating connection due to administrator command (SQLSTATE 57P01)"})
		}},
		{"pool over its cap", PoolCap, func(h *History) {
			h.Pools = append(h.Pools, PoolSample{At: ms(600), DB: "d", Port: r1Port, Live: 9, Cap: 8})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := base()
			c.break_(h)
			vs := Check(h)
			if len(vs) != 1 || vs[0].Invariant != c.want {
				t.Fatalf("got %d violations %+v, want one of %q", len(vs), vs, c.want)
			}
			out := Explain(h, vs[0])
			if !strings.Contains(out, "PGREPLICA_MODEL_SEED=42") {
				t.Errorf("explanation without the seed:\n%s", out)
			}
			if vs[0].Op >= 0 && !strings.Contains(out, ">>>") {
				t.Errorf("explanation without the violating op:\n%s", out)
			}
			t.Logf("\n%s", out)
		})
	}
}

// What a failover legitimately loses is not a violation: writes and
// heartbeats the old primary committed and the promoted node never
// received, and session reads after the crash that miss them.
func TestFailoverLossExcused(t *testing.T) {
	h := base()
	h.FailoverAt, h.PromotedAt, h.NewPrimaryPort = ms(1500), ms(1800), r1Port
	h.OldPrimary = map[int64]Row{7_000_001: {Port: pPort, N: 1}, 8_000_001: {Port: pPort, N: 1}}
	h.OldHB = map[int64]bool{}
	for s := int64(1); s <= 150; s++ {
		h.OldHB[s] = true
	}
	delete(h.Final, 7_000_001) // lost: on the old primary only
	for s := int64(90); s <= 150; s++ {
		delete(h.FinalHB, s)
	}
	// The UsePrimary read after the promotion saw the new timeline's
	// latest heartbeat; the session read after the crash did not see the
	// lost write.
	h.Ops[2].Port = r1Port
	h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "session read", Scope: 7, Start: ms(2100), End: ms(2101), Port: r1Port,
		Read: true, HB: 209, ScopeMax: 0, RYW: true, Fresh: true})
	h.Ops[3].Port = r1Port
	if vs := Check(h); len(vs) != 0 {
		for _, v := range vs {
			t.Log(Explain(h, v))
		}
		t.Fatalf("%d violations", len(vs))
	}
	// The same write missing from the old primary's commits is a loss.
	delete(h.OldPrimary, 7_000_001)
	if vs := Check(h); len(vs) != 1 || vs[0].Invariant != AckedDurable {
		t.Fatalf("got %+v, want one %q", vs, AckedDurable)
	}
}

// The age of the monitor's knowledge and gaps between its probes give a
// bounded read no slack: pgreplica counts them against the bound. Only a
// read while the primary was gone (crashed, not yet replaced) may be older
// by the time since the crash.
func TestBoundedStaleSlack(t *testing.T) {
	h := base()
	h.Margin = 0
	// Saw heartbeat 379 (acked t=3.79s), missed 380 (t=3.8s): 1.2 s stale
	// at t=5s, over its 1 s bound.
	h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "plain read", Start: ms(5000), End: ms(5001), Port: r2Port,
		Read: true, HB: 379, Stale: true, Bound: time.Second})
	if vs := Check(h); len(vs) != 1 || vs[0].Invariant != BoundedStale {
		t.Fatalf("got %+v, want one %q", vs, BoundedStale)
	}
	for i := range h.Probes {
		if at := h.Probes[i].At; at > ms(3000) && at < ms(5500) {
			h.Probes[i].LastProbe[pPort] = ms(3000) // the primary unprobed for 2 s
		}
	}
	if vs := Check(h); len(vs) != 1 || vs[0].Invariant != BoundedStale {
		t.Fatalf("with a 2 s gap in the primary's probes: got %+v, want one %q", vs, BoundedStale)
	}
	// The primary crashed at t=4.5s and replica1 was promoted at t=6s: at
	// t=5s it had been gone 0.5 s, and the read may be 1.5 s stale.
	h.FailoverAt, h.PromotedAt, h.NewPrimaryPort = ms(4500), ms(6000), r1Port
	h.OldPrimary, h.OldHB = map[int64]Row{}, map[int64]bool{}
	for k, v := range h.Final {
		h.OldPrimary[k] = v
	}
	for s := int64(1); s <= 450; s++ {
		h.OldHB[s] = true
	}
	if vs := Check(h); len(vs) != 0 {
		t.Fatalf("a read 0.5 s into the primary's outage: %+v", vs)
	}
	h.FailoverAt = ms(4900) // gone 0.1 s: 1.1 s allowed
	if vs := Check(h); len(vs) != 1 || vs[0].Invariant != BoundedStale {
		t.Fatalf("a read 0.1 s into the primary's outage: got %+v, want one %q", vs, BoundedStale)
	}
}

// A read pgreplica sent to the promoted node as to the primary is judged
// by the new timeline's heartbeats, even before pg_ctl promote returned:
// what the old primary lost is no staleness of that read.
func TestReadOnNewPrimaryBeforePromoteReturned(t *testing.T) {
	h := base()
	h.Margin = 0
	h.FailoverAt, h.PromotedAt, h.NewPrimaryPort = ms(5800), ms(6000), r1Port
	h.OldPrimary, h.OldHB = map[int64]Row{}, map[int64]bool{}
	for k, v := range h.Final {
		h.OldPrimary[k] = v
	}
	for s := int64(1); s <= 400; s++ {
		h.OldHB[s] = true
	}
	for s := int64(351); s <= 600; s++ {
		delete(h.FinalHB, s) // lost with the old primary; the new one writes from 601 on
	}
	h.Ops = append(h.Ops, Op{ID: 5, DB: "d", Kind: "plain read", Start: ms(5900), End: ms(5950), Port: r1Port, Reason: "fallback",
		Read: true, HB: 350, Stale: true, Bound: time.Second})
	if vs := Check(h); len(vs) != 0 {
		t.Fatalf("a fallback read on the promoted node: %+v", vs)
	}
	h.Ops[len(h.Ops)-1].Reason = "read" // as a standby: it lacked 351–400
	if vs := Check(h); len(vs) != 1 || vs[0].Invariant != BoundedStale {
		t.Fatalf("a standby read on the node before its promotion: got %+v, want one %q", vs, BoundedStale)
	}
}

// A restart of the primary is not a failover: what may fail meanwhile is
// a statement's deadline or a connection it was sent on, and a bounded
// read that began while the monitor had not heard from the restarted
// primary again may be older by the time since it stopped.
func TestPrimaryRestart(t *testing.T) {
	h := base()
	h.Margin = 0
	h.PrimaryRestarts = []Window{{Start: ms(4000), End: ms(5800)}}
	for i := range h.Probes {
		if at := h.Probes[i].At; at > ms(3950) && at < ms(6000) {
			h.Probes[i].LastProbe[pPort] = ms(3950) // heard from again at t=6s
		}
	}
	// Saw heartbeat 389, missed 390 (t=3.9s): 1.6 s stale at t=5.5s,
	// allowed 1 s + 1.5 s since the primary stopped.
	h.Ops = append(h.Ops,
		Op{ID: 5, DB: "d", Kind: "plain read", Start: ms(5500), End: ms(5501), Port: r2Port, Read: true, HB: 389, Stale: true, Bound: time.Second},
		Op{ID: 6, DB: "d", Kind: "exec write", Start: ms(4100), End: ms(9100), Key: 9_000_001, Err: "pgreplica: no usable primary: context deadline exceeded"},
		Op{ID: 7, DB: "d", Kind: "exec write", Start: ms(3990), End: ms(4010), Key: 9_000_002, Err: "unexpected EOF"},
		Op{ID: 8, DB: "d", Kind: "UsePrimary read", Start: ms(4200), End: ms(9200), Read: true, Fresh: true, PrimaryRead: true,
			Err: "pgreplica: primary 127.0.0.1:5000: failed to connect to `user=x`: dial tcp 127.0.0.1:5000: connect: connection refused (context deadline exceeded)"})
	if vs := Check(h); len(vs) != 0 {
		for _, v := range vs {
			t.Log(Explain(h, v))
		}
		t.Fatalf("%d violations", len(vs))
	}
	// Once the monitor heard from the primary again, the read is judged
	// by its bound alone.
	for i := range h.Ops { // Check sorted them by start
		if h.Ops[i].ID == 5 {
			h.Ops[i].Start, h.Ops[i].End = ms(6050), ms(6051)
		}
	}
	if vs := Check(h); len(vs) != 1 || vs[0].Invariant != BoundedStale {
		t.Fatalf("a read after the monitor heard from the primary again: got %+v, want one %q", vs, BoundedStale)
	}
}
