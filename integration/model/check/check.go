// Package check holds the history the model checker (integration/model)
// records and the invariants it checks on it: README's guarantees, stated
// over what the application saw (which node answered each statement, what
// it returned, what was acknowledged) and what the servers hold after the
// run. It needs no cluster, so its own tests feed it fabricated histories
// to prove that every check can fail.
package check

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Op is one statement (or one short sequence the application treats as
// one: a transaction, an HTTP request) as the application saw it.
type Op struct {
	ID     int
	Worker int
	DB     string // the *sql.DB it ran on ("hedge=1ms", "hedge=off", …)
	Kind   string // what was run: "plain read", "write fn (UsePrimary)", …
	// Scope is the read-your-writes scope the op belongs to: a session
	// (WithSession, tokens), an HTTP client with its cookie, or one
	// sql.Conn checkout. 0: none.
	Scope int64
	// Checkout marks the ops of one sql.Conn checkout (Scope): once the
	// primary answered one, it must answer the rest.
	Checkout   bool
	Start, End time.Duration // since the run started
	Err        string

	// Key is the unique key the op wrote (0: no write); Acked says the
	// write was acknowledged (the statement, or the commit, succeeded).
	Key   int64
	Acked bool
	// WriteFn marks a statement that writes through a function called
	// with SELECT: whatever the classifier thinks, it may write.
	WriteFn bool

	// Port is inet_server_port() of the node that answered (0: unknown);
	// Reason is pgreplica's route reason (WithRoute), when recorded.
	Port   int
	Reason string

	// Read is set on a read that returned HB (the highest heartbeat it
	// saw) and ScopeMax (the highest key of its scope it saw).
	Read     bool
	HB       int64
	ScopeMax int64
	// RYW: the read must see every write its scope acknowledged before
	// it started.
	RYW bool
	// Fresh: the read must see every heartbeat acknowledged before it
	// started (UsePrimary, a primary hint, a read-write or serializable
	// transaction). Otherwise Bound is its lag bound (max_replica_lag or
	// WithMaxLag), and Stale says whether it has one at all.
	Fresh bool
	Stale bool
	Bound time.Duration

	// Setting is the value of model.uid a read's connection had ("" for
	// none); WantSetting is what the read's own conn set (SET,
	// set_config(…, false), RESET) earlier in its checkout.
	Setting, WantSetting string

	// Stmt marks a read through a prepared *sql.Stmt, PrimaryErr a
	// failure that came from the primary (it was down, say).
	Stmt       bool
	PrimaryErr bool

	// PrimaryRead marks a read of a text that calls only known built-ins,
	// sent to the primary (UsePrimary, a primary hint) outside a
	// transaction on a conn holding no session state: a connection lost
	// before its first row runs it again on the primary, never reaching
	// the caller.
	PrimaryRead bool

	// Unsent marks a statement for the primary that changes no data and
	// sends nothing the server could run before its connection is open,
	// on a conn holding no session state (BEGIN READ ONLY on the primary,
	// the first SET of a checkout): it waits for the primary as a write
	// does.
	Unsent bool
}

// needsPrimary: the op could only be answered by the primary (a write, a
// transaction that writes, a fresh read, an Unsent statement).
func (o *Op) needsPrimary() bool { return o.Key != 0 || o.Fresh || o.PrimaryRead || o.Unsent }

func (o *Op) failed() bool { return o.Err != "" }

// Fault is one fault the schedule injected.
type Fault struct {
	Kind       string
	Node       string
	Start, End time.Duration
}

// Window is a span of the run.
type Window struct{ Start, End time.Duration }

// Heartbeat is one acknowledged heartbeat row (written straight to the
// primary every few milliseconds, apart from pgreplica).
type Heartbeat struct {
	Seq   int64
	Acked time.Duration
}

// ProbeSample is Status() of one *sql.DB at At: when each node (by port)
// last answered a probe, both times since the run started.
type ProbeSample struct {
	At        time.Duration
	DB        string
	LastProbe map[int]time.Duration
}

// PoolSample counts one *sql.DB's connections on one node at At
// (pg_stat_activity, by application_name, client socket still open) and
// the most that DB may hold there (its pool size plus the monitor's probe).
type PoolSample struct {
	At   time.Duration
	DB   string
	Port int
	Live int64
	Cap  int64
}

// Row is what a server holds for one written key: the node that ran the
// write (its port column defaults to inet_server_port()) and how often
// the write ran (an upsert counts every run).
type Row struct {
	Port int
	N    int
}

// History is everything one run recorded.
type History struct {
	Seed       uint64
	Ops        []Op
	Faults     []Fault
	Heartbeats []Heartbeat // acknowledged, by Seq
	Probes     []ProbeSample
	Pools      []PoolSample
	Roles      map[int]string // port → "primary", "replica1", …

	// PrimaryPort is the first primary; after a failover NewPrimaryPort
	// is the promoted node, the old primary crashed at FailoverAt and the
	// new one accepted writes at PromotedAt.
	PrimaryPort    int
	NewPrimaryPort int
	FailoverAt     time.Duration
	PromotedAt     time.Duration
	// PrimaryRestarts are the times the primary was stopped
	// (pg_ctl -m immediate) and started again, well within primary_wait:
	// from the stop's start until the start returned.
	PrimaryRestarts []Window

	// Final is what the primary holds after the run; OldPrimary what the
	// old primary had committed when it stopped for good (failover only).
	Final      map[int64]Row
	OldPrimary map[int64]Row
	// FinalHB and OldHB are the heartbeat seqs they hold.
	FinalHB map[int64]bool
	OldHB   map[int64]bool

	// What a bounded read is allowed: its bound, plus Margin, plus, for a
	// read that began while the primary was gone (from FailoverAt until
	// PromotedAt), the time since FailoverAt: a primary that answers no
	// one commits nothing, and replicas keep serving what it had
	// (docs/guarantees.md, "How stale a read can be"). The age of the
	// monitor's knowledge, the gap between its probes and the machine's
	// load are not allowed for: pgreplica counts them against the bound.
	// MonitorInterval is the run's monitor_interval (for reports).
	MonitorInterval time.Duration
	Margin          time.Duration
}

// Violation is one broken invariant.
type Violation struct {
	Invariant string
	Op        int   // index into Ops of the violating op; -1: none
	Related   []int // indexes into Ops of the ops that show it (the write missed, …)
	From      time.Duration
	Msg       string
	// class groups violations of one cause (the op kind, the node, the
	// route reason): Check reports the first of each class.
	class string
}

// Invariant names.
const (
	NoStandbyWrite  = "no write reached a standby"
	AckedDurable    = "every acknowledged write is on the primary"
	NoDoubleEffect  = "no statement's effect ran twice"
	ReadYourWrites  = "every session read sees its session's acknowledged writes"
	BoundedStale    = "no read is staler than its bound"
	NoHedgedWrite   = "a statement that may write is never hedged"
	PinnedCheckout  = "a checkout that used the primary stays on it"
	StmtLikePlain   = "a prepared Stmt read works wherever its plain read would"
	PoolCap         = "no pool exceeds its cap"
	OwnSettings     = "a read sees its own conn's settings and no other conn's"
	PrimaryWaited   = "a statement that needs the primary waits through its restart"
	PrimaryReadRuns = "a read without effect survives its primary connection's loss"
	maxPerInvariant = 5
)

// Check runs every invariant and returns what broke, at most a few
// violations per invariant (the first ones in time).
func Check(h *History) []Violation {
	sort.SliceStable(h.Ops, func(i, j int) bool { return h.Ops[i].Start < h.Ops[j].Start })
	var all []Violation
	for _, f := range []func(*History) []Violation{
		CheckNoStandbyWrite, CheckAckedDurable, CheckNoDoubleEffect,
		CheckReadYourWrites, CheckBoundedStale, CheckNoHedgedWrite, CheckPinnedCheckout, CheckStmtLikePlain, CheckPoolCap,
		CheckOwnSettings, CheckPrimaryWaited, CheckPrimaryReadRuns,
	} {
		vs := f(h)
		sort.SliceStable(vs, func(i, j int) bool { return vs[i].From < vs[j].From })
		var firsts []Violation
		more := map[string]int{}
		for _, v := range vs {
			if _, ok := more[v.class]; ok {
				more[v.class]++
				continue
			}
			more[v.class] = 0
			firsts = append(firsts, v)
		}
		extra := 0
		if len(firsts) > maxPerInvariant {
			for _, v := range firsts[maxPerInvariant:] {
				extra += 1 + more[v.class]
			}
			firsts = firsts[:maxPerInvariant]
		}
		for i := range firsts {
			if n := more[firsts[i].class]; n > 0 {
				firsts[i].Msg += fmt.Sprintf(" (and %d more like it)", n)
			}
		}
		if extra > 0 {
			firsts[len(firsts)-1].Msg += fmt.Sprintf(" (and %d more of other kinds)", extra)
		}
		all = append(all, firsts...)
	}
	return all
}

func (h *History) isPrimaryPort(p int) bool {
	return p != 0 && (p == h.PrimaryPort || (h.NewPrimaryPort != 0 && p == h.NewPrimaryPort))
}

// primaryAt is the port of the primary at t (0 while there was none).
func (h *History) primaryAt(t time.Duration) int {
	if h.FailoverAt == 0 || t < h.FailoverAt {
		return h.PrimaryPort
	}
	if t >= h.PromotedAt {
		return h.NewPrimaryPort
	}
	return h.PrimaryPort // the old primary may be restarted before the promotion
}

// rowOf is what the servers hold for key, and where: the final primary,
// else what the old primary committed.
func (h *History) rowOf(key int64) (Row, bool) {
	if r, ok := h.Final[key]; ok {
		return r, true
	}
	r, ok := h.OldPrimary[key]
	return r, ok
}

// CheckNoStandbyWrite: nothing a standby answered acknowledged a write,
// and no written row was written by a node that was not the primary.
func CheckNoStandbyWrite(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if o.Key == 0 || !o.Acked {
			continue
		}
		port := o.Port
		if r, ok := h.rowOf(o.Key); ok && r.Port != 0 {
			port = r.Port
		}
		if port == 0 {
			continue
		}
		if !h.isPrimaryPort(port) || (o.Port != 0 && !h.isPrimaryPort(o.Port)) {
			vs = append(vs, Violation{Invariant: NoStandbyWrite, Op: i, From: o.Start,
				Msg: fmt.Sprintf("write of key %d acknowledged, answered by %s, row written by %s", o.Key, h.role(o.Port), h.role(port)), class: o.Kind})
		}
	}
	return vs
}

// CheckAckedDurable: every acknowledged write is on the primary after the
// run, or, when it was acknowledged by the old primary before a failover,
// among what the old primary committed (a write the promoted node had not
// received yet is lost by asynchronous replication, not by pgreplica).
func CheckAckedDurable(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if o.Key == 0 || !o.Acked {
			continue
		}
		if _, ok := h.Final[o.Key]; ok {
			continue
		}
		if _, ok := h.OldPrimary[o.Key]; ok && h.FailoverAt != 0 && o.Port != h.NewPrimaryPort && o.Start < h.PromotedAt {
			continue
		}
		where := "the primary"
		if h.FailoverAt != 0 {
			where = "the new primary nor among the old primary's commits"
		}
		vs = append(vs, Violation{Invariant: AckedDurable, Op: i, From: o.Start,
			Msg: fmt.Sprintf("key %d was acknowledged (answered by %s, reason %s) and is not on %s", o.Key, h.role(o.Port), orDash(o.Reason), where), class: o.Kind + o.Reason})
	}
	return vs
}

// CheckNoDoubleEffect: every written key was written once (each write is
// an upsert counting its runs).
func CheckNoDoubleEffect(h *History) []Violation {
	byKey := map[int64]int{}
	for i := range h.Ops {
		if h.Ops[i].Key != 0 {
			byKey[h.Ops[i].Key] = i
		}
	}
	var vs []Violation
	seen := map[int64]bool{}
	for _, rows := range []map[int64]Row{h.Final, h.OldPrimary} {
		for k, r := range rows {
			if r.N <= 1 || seen[k] {
				continue
			}
			seen[k] = true
			i, ok := byKey[k]
			v := Violation{Invariant: NoDoubleEffect, Op: -1, Msg: fmt.Sprintf("key %d was written %d times", k, r.N)}
			if ok {
				v.Op, v.From, v.class = i, h.Ops[i].Start, h.Ops[i].Kind
			}
			vs = append(vs, v)
		}
	}
	return vs
}

// CheckReadYourWrites: a read of a scope sees every write that scope had
// acknowledged before the read started. After a failover, writes the
// promoted node never received are not asked of reads that start after
// the crash.
func CheckReadYourWrites(h *History) []Violation {
	// Per scope, its acknowledged writes by end time, with the index of
	// the highest key so far among all of them and among survivors.
	type acked struct {
		end           time.Duration
		best, bestSur int // -1: none
	}
	writes := map[int64][]acked{}
	ends := make([]int, 0, len(h.Ops))
	for i := range h.Ops {
		if o := &h.Ops[i]; o.Scope != 0 && o.Key != 0 && o.Acked {
			ends = append(ends, i)
		}
	}
	sort.SliceStable(ends, func(a, b int) bool { return h.Ops[ends[a]].End < h.Ops[ends[b]].End })
	for _, i := range ends {
		o := &h.Ops[i]
		ws := writes[o.Scope]
		a := acked{end: o.End, best: -1, bestSur: -1}
		if len(ws) > 0 {
			a.best, a.bestSur = ws[len(ws)-1].best, ws[len(ws)-1].bestSur
		}
		if a.best < 0 || o.Key > h.Ops[a.best].Key {
			a.best = i
		}
		if _, ok := h.Final[o.Key]; ok && (a.bestSur < 0 || o.Key > h.Ops[a.bestSur].Key) {
			a.bestSur = i
		}
		writes[o.Scope] = append(ws, a)
	}
	var vs []Violation
	for i := range h.Ops {
		r := &h.Ops[i]
		if !r.RYW || !r.Read || r.failed() || r.Scope == 0 {
			continue
		}
		ws := writes[r.Scope]
		j := sort.Search(len(ws), func(j int) bool { return ws[j].end >= r.Start }) - 1
		if j < 0 {
			continue
		}
		need := ws[j].best
		if h.FailoverAt != 0 && r.Start >= h.FailoverAt {
			need = ws[j].bestSur // the rest was lost with the old primary (see CheckAckedDurable)
		}
		if need >= 0 && r.ScopeMax < h.Ops[need].Key {
			vs = append(vs, Violation{Invariant: ReadYourWrites, Op: i, Related: []int{need}, From: h.Ops[need].Start,
				Msg: fmt.Sprintf("read answered by %s (reason %s) saw key %d of its scope, but the scope's write of key %d was acknowledged %.3fs before the read started",
					h.role(r.Port), orDash(r.Reason), r.ScopeMax, h.Ops[need].Key, (r.Start - h.Ops[need].End).Seconds()),
				class: h.Ops[need].Kind + "/" + h.role(r.Port)})
		}
	}
	return vs
}

// CheckBoundedStale: a read misses no heartbeat acknowledged earlier than
// its bound (plus slack, see History) before it started; a fresh read
// misses none acknowledged before it started.
func CheckBoundedStale(h *History) []Violation {
	var vs []Violation
	st := h.newStaleness()
	for i := range h.Ops {
		s, ok := st.of(i)
		if !ok || s.Stale <= s.Allowed {
			continue
		}
		r := &h.Ops[i]
		vs = append(vs, Violation{Invariant: BoundedStale, Op: i, From: s.MissedAcked,
			Msg: fmt.Sprintf("read answered by %s (reason %s) saw heartbeat %d; heartbeat %d was acknowledged %.3fs before the read started (allowed: %v, %s)",
				h.role(r.Port), orDash(r.Reason), r.HB, s.Missed, s.Stale.Seconds(), s.Allowed.Round(time.Millisecond), s.Why),
			class: fmt.Sprintf("%v/%v/%s/%v", r.Fresh, r.Bound, h.role(r.Port), h.FailoverAt != 0 && r.Start > h.PromotedAt)})
	}
	return vs
}

// Staleness is how stale one read was: how long before it started the
// first heartbeat it missed was acknowledged, and what it was allowed.
type Staleness struct {
	Stale, Allowed time.Duration
	Missed         int64
	MissedAcked    time.Duration
	Why            string
}

type staleness struct {
	h          *History
	all, final []Heartbeat
	// down holds, per DB, the primary's restarts as that DB's monitor saw
	// them: from the stop until the first probe the primary answered
	// after it started again.
	down map[string][]Window
}

// primaryDownSince is the start of the primary restart during which db's
// monitor had not heard from the primary again at t.
func (st *staleness) primaryDownSince(db string, t time.Duration) (time.Duration, bool) {
	for _, w := range st.down[db] {
		if t >= w.Start && t < w.End {
			return w.Start, true
		}
	}
	return 0, false
}

// restartsSeen is PrimaryRestarts per DB, each ending at the first probe
// sample in which that DB's monitor had heard from the primary after it
// started (the end of the run when none did).
func (h *History) restartsSeen() map[string][]Window {
	out := map[string][]Window{}
	if len(h.PrimaryRestarts) == 0 {
		return out
	}
	dbs := map[string]bool{}
	for _, s := range h.Probes {
		dbs[s.DB] = true
	}
	for db := range dbs {
		for _, w := range h.PrimaryRestarts {
			port := h.primaryAt(w.Start)
			up := time.Duration(1<<63 - 1)
			for _, s := range h.Probes {
				if s.DB == db && s.At >= w.End {
					if p, ok := s.LastProbe[port]; ok && p >= w.End {
						up = p
						break
					}
				}
			}
			out[db] = append(out[db], Window{Start: w.Start, End: up})
		}
	}
	return out
}

func (h *History) newStaleness() *staleness {
	st := &staleness{h: h, down: h.restartsSeen()}
	for _, b := range h.Heartbeats {
		if h.FailoverAt == 0 || h.FinalHB[b.Seq] || h.OldHB[b.Seq] {
			st.all = append(st.all, b)
		}
		if h.FailoverAt == 0 || h.FinalHB[b.Seq] {
			st.final = append(st.final, b)
		}
	}
	return st
}

// StalenessOf measures each bounded or fresh read that succeeded, by op
// index; reads that missed nothing are left out.
func StalenessOf(h *History) map[int]Staleness {
	st := h.newStaleness()
	out := map[int]Staleness{}
	for i := range h.Ops {
		if s, ok := st.of(i); ok {
			out[i] = s
		}
	}
	return out
}

// sentToPrimary are the route reasons of a read pgreplica sent to the node
// it took for the primary.
var sentToPrimary = map[string]bool{"fallback": true, "primary_only": true, "use_primary": true, "pinned": true,
	"session": true, "classifier": true, "write": true, "read_only_error": true, "recovery_error": true, "undefined_object": true}

func (st *staleness) of(i int) (Staleness, bool) {
	h, r := st.h, &st.h.Ops[i]
	if !r.Read || r.failed() || (!r.Fresh && !r.Stale) || r.Port == 0 {
		return Staleness{}, false
	}
	hbs := st.all
	if h.FailoverAt != 0 && r.Port == h.NewPrimaryPort && (r.End > h.PromotedAt || r.Start > h.FailoverAt && sentToPrimary[r.Reason]) {
		// Its history is the new timeline's: it answered after the
		// promotion, or pgreplica sent it there as to the primary (once
		// promoted: PromotedAt is when pg_ctl promote returned).
		hbs = st.final
	}
	j := sort.Search(len(hbs), func(j int) bool { return hbs[j].Seq > r.HB })
	if j == len(hbs) || hbs[j].Acked >= r.Start {
		return Staleness{}, false
	}
	s := Staleness{Missed: hbs[j].Seq, MissedAcked: hbs[j].Acked, Stale: r.Start - hbs[j].Acked, Why: "a fresh read"}
	if !r.Fresh {
		s.Allowed = r.Bound + h.Margin
		s.Why = fmt.Sprintf("bound %v + margin %v", r.Bound, h.Margin)
		if h.FailoverAt != 0 && r.Start >= h.FailoverAt && r.Start < h.PromotedAt {
			down := r.Start - h.FailoverAt
			s.Allowed += down
			s.Why += fmt.Sprintf(" + %v since the primary crashed", down.Round(time.Millisecond))
		} else if since, ok := st.primaryDownSince(r.DB, r.Start); ok {
			// The same while the primary restarts, until the monitor hears
			// from it again.
			down := r.Start - since
			s.Allowed += down
			s.Why += fmt.Sprintf(" + %v since the primary stopped", down.Round(time.Millisecond))
		}
	}
	return s, true
}

// CheckNoHedgedWrite: a write function called through SELECT (a
// statement that may write) never answered as a hedge.
func CheckNoHedgedWrite(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if o.WriteFn && !o.failed() && o.Reason == "hedge" {
			vs = append(vs, Violation{Invariant: NoHedgedWrite, Op: i, From: o.Start,
				Msg: fmt.Sprintf("write function (key %d) answered as a hedge by %s", o.Key, h.role(o.Port)), class: o.Kind})
		}
	}
	return vs
}

// CheckOwnSettings: a read sees the model.uid its own conn set, wherever
// it ran (a replica connection replays the conn's settings), and a read
// of a conn that set none sees none (no replica connection carries one
// conn's setting to another).
func CheckOwnSettings(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if !o.Read || o.failed() || o.Setting == o.WantSetting {
			continue
		}
		vs = append(vs, Violation{Invariant: OwnSettings, Op: i, From: o.Start,
			Msg:   fmt.Sprintf("answered by %s (reason %s) with model.uid %q; its conn set %q", h.role(o.Port), orDash(o.Reason), o.Setting, o.WantSetting),
			class: o.Kind + " " + orDash(o.Reason)})
	}
	return vs
}

// CheckPinnedCheckout: within one sql.Conn checkout, every statement
// after one the primary answered is answered by the primary too (README:
// the primary serves the rest of the checkout; a plain setting, recorded
// without a port, does not count).
func CheckPinnedCheckout(h *History) []Violation {
	used := map[int64]int{} // scope → first op the primary answered
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if !o.Checkout || o.Scope == 0 || o.failed() || o.Port == 0 {
			continue
		}
		first, ok := used[o.Scope]
		switch {
		case !ok:
			if o.Port == h.primaryAt(o.Start) && h.isPrimaryPort(o.Port) {
				used[o.Scope] = i
			}
		case !h.isPrimaryPort(o.Port):
			vs = append(vs, Violation{Invariant: PinnedCheckout, Op: i, Related: []int{first}, From: h.Ops[first].Start,
				Msg: fmt.Sprintf("answered by %s (reason %s) after the primary answered op#%d of the same sql.Conn (reason %s)",
					h.role(o.Port), orDash(o.Reason), h.Ops[first].ID, orDash(h.Ops[first].Reason)),
				class: h.Ops[first].Reason})
			delete(used, o.Scope) // one report per checkout
		}
	}
	return vs
}

// CheckStmtLikePlain: a read through a prepared *sql.Stmt does not fail
// for want of the primary while plain reads of the same DB, started within
// its span (and half a second around it), were served by replicas.
func CheckStmtLikePlain(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		f := &h.Ops[i]
		if !f.Stmt || !f.PrimaryErr || !f.Read || f.RYW {
			// A session read whose write no replica has yet goes to the
			// primary, Stmt or not; plain reads outside the session show
			// nothing about it.
			continue
		}
		from := f.Start - 500*time.Millisecond
		for j := sort.Search(len(h.Ops), func(j int) bool { return h.Ops[j].Start >= from }); j < len(h.Ops) && h.Ops[j].Start <= f.End+500*time.Millisecond; j++ {
			p := &h.Ops[j]
			if p.Stmt || !p.Read || p.failed() || p.DB != f.DB || p.Port == 0 || h.isPrimaryPort(p.Port) || !p.Stale || p.Fresh || p.RYW ||
				p.Start < f.Start-500*time.Millisecond || p.Start > f.End+500*time.Millisecond {
				continue
			}

			vs = append(vs, Violation{Invariant: StmtLikePlain, Op: i, Related: []int{j}, From: f.Start,
				Msg:   fmt.Sprintf("failed (%s) while op#%d, a plain read, was served by %s", f.Err, p.ID, h.role(p.Port)),
				class: f.Kind})
			break
		}
	}
	return vs
}

// CheckPrimaryWaited: a statement that needs the primary, begun while the
// primary restarted (well within primary_wait), does not fail for want of
// it: nothing of it was sent while no connection could be opened, so it
// waits (README, primary_wait). It may fail when its own deadline ends, or
// when a connection it was sent on broke (its outcome is unknown).
func CheckPrimaryWaited(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if !o.failed() || !o.needsPrimary() || !notWaited(o.Err) {
			continue
		}
		for _, w := range h.PrimaryRestarts {
			if o.Start >= w.Start && o.Start <= w.End {
				vs = append(vs, Violation{Invariant: PrimaryWaited, Op: i, From: o.Start,
					Msg: fmt.Sprintf("began %.3fs after the primary stopped (it accepted connections again %.3fs later) and failed after %.3fs, without waiting for it: %s",
						(o.Start - w.Start).Seconds(), (w.End - o.Start).Seconds(), (o.End - o.Start).Seconds(), o.Err),
					class: o.Kind})
				break
			}
		}
	}
	return vs
}

// notWaited says whether err is a statement's failure to reach the
// primary, not its deadline.
func notWaited(err string) bool {
	if strings.Contains(err, "deadline exceeded") {
		return false
	}
	for _, s := range []string{"failed to connect", "connection refused", "57P03", "no usable primary"} {
		if strings.Contains(err, s) {
			return true
		}
	}
	return false
}

// CheckPrimaryReadRuns: a PrimaryRead never fails with a lost connection
// (a terminated backend, a restart): it runs again on the primary.
func CheckPrimaryReadRuns(h *History) []Violation {
	var vs []Violation
	for i := range h.Ops {
		o := &h.Ops[i]
		if !o.PrimaryRead || !o.failed() || strings.Contains(o.Err, "deadline exceeded") {
			continue
		}
		for _, s := range []string{"57P01", "57P02", "unexpected EOF", "conn closed", "connection reset", "broken pipe"} {
			if strings.Contains(o.Err, s) {
				vs = append(vs, Violation{Invariant: PrimaryReadRuns, Op: i, From: o.Start,
					Msg: "its primary connection was lost and it was not run again: " + o.Err, class: o.Kind})
				break
			}
		}
	}
	return vs
}

// CheckPoolCap: no sample counted more connections than the cap.
func CheckPoolCap(h *History) []Violation {
	var vs []Violation
	for _, s := range h.Pools {
		if s.Live > s.Cap {
			vs = append(vs, Violation{Invariant: PoolCap, Op: -1, From: s.At,
				Msg:   fmt.Sprintf("t=%.3fs %s held %d connections on %s, cap %d", s.At.Seconds(), s.DB, s.Live, h.role(s.Port), s.Cap),
				class: fmt.Sprintf("%s/%d", s.DB, s.Port)})
		}
	}
	return vs
}

func (h *History) role(port int) string {
	if port == 0 {
		return "an unknown node"
	}
	if r, ok := h.Roles[port]; ok {
		return r
	}
	return fmt.Sprintf("port %d", port)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Explain prints v as the shortest history that shows it: the seed, the
// ops it names, the faults in effect from the first of them to the end of
// the violating op, and the other ops of the same scope in between.
func Explain(h *History, v Violation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "VIOLATION %q, seed %d (replay: PGREPLICA_MODEL_SEED=%d)\n  %s\n", v.Invariant, h.Seed, h.Seed, v.Msg)
	from, to := v.From, v.From
	ids := map[int]bool{}
	if v.Op >= 0 {
		ids[v.Op] = true
		from, to = min(from, h.Ops[v.Op].Start), h.Ops[v.Op].End
	}
	for _, i := range v.Related {
		ids[i] = true
		from, to = min(from, h.Ops[i].Start), max(to, h.Ops[i].End)
	}
	if v.Op >= 0 && h.Ops[v.Op].Scope != 0 && (v.Invariant == ReadYourWrites || v.Invariant == PinnedCheckout) {
		scope := h.Ops[v.Op].Scope
		var between []int
		for i := range h.Ops {
			if h.Ops[i].Scope == scope && h.Ops[i].Start >= from && h.Ops[i].End <= to {
				between = append(between, i)
			}
		}
		if len(between) > 12 {
			between = between[len(between)-12:]
		}
		for _, i := range between {
			ids[i] = true
		}
	}
	type line struct {
		at time.Duration
		s  string
	}
	var lines []line
	for i := range ids {
		mark := "   "
		if i == v.Op {
			mark = ">>>"
		}
		lines = append(lines, line{h.Ops[i].Start, mark + " " + h.FormatOp(i)})
	}
	for _, f := range h.Faults {
		if f.Start <= to && (f.End >= from || f.End == 0) {
			lines = append(lines, line{f.Start, fmt.Sprintf("    t=%8.3fs–%8.3fs FAULT %s %s", f.Start.Seconds(), f.End.Seconds(), f.Kind, f.Node)})
		}
	}
	if h.FailoverAt != 0 && h.FailoverAt <= to {
		lines = append(lines, line{h.FailoverAt, fmt.Sprintf("    t=%8.3fs primary crashed; %s writable from t=%.3fs", h.FailoverAt.Seconds(), h.role(h.NewPrimaryPort), h.PromotedAt.Seconds())})
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].at < lines[j].at })
	for _, l := range lines {
		b.WriteString(l.s)
		b.WriteByte('\n')
	}
	return b.String()
}

// FormatOp is one op on one line.
func (h *History) FormatOp(i int) string {
	o := &h.Ops[i]
	var b strings.Builder
	fmt.Fprintf(&b, "t=%8.3fs–%8.3fs op#%d w%d [%s] %s", o.Start.Seconds(), o.End.Seconds(), o.ID, o.Worker, o.DB, o.Kind)
	if o.Scope != 0 {
		fmt.Fprintf(&b, " scope=%d", o.Scope)
	}
	if o.Key != 0 {
		fmt.Fprintf(&b, " key=%d acked=%v", o.Key, o.Acked)
	}
	if o.Port != 0 {
		fmt.Fprintf(&b, " answered-by=%s", h.role(o.Port))
	}
	if o.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", o.Reason)
	}
	if o.Read && !o.failed() {
		fmt.Fprintf(&b, " saw hb=%d scope-max=%d", o.HB, o.ScopeMax)
	}
	if o.Err != "" {
		fmt.Fprintf(&b, " err=%q", o.Err)
	}
	return b.String()
}
