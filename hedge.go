package pgreplica

import (
	"context"
	"database/sql/driver"
	"errors"
	"math/bits"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// Hedging, in short: a plain read runs on the caller's goroutine, as
// without hedging (handing every read to another goroutine measured 40%
// slower on two cores). Before its connection is taken the read is armed
// with its hedge delay; the connector's hedgeWatch goroutine starts fire
// for each read still unanswered when due, which sends the same read to a
// second usable node. If that answers first, the caller's wait is cut
// short: a wait for a slot or a new connection ends at once; a statement
// in flight gets hedgeAbortGrace to answer, then its socket's deadline,
// which makes pgx drop that connection (and cancel the statement). If the first node answers first,
// the hedge is abandoned in the background.
const (
	// hedgeBudget is the share of replica reads that may be hedged, with
	// room for a burst of hedgeBurst, so a uniformly slow cluster is never
	// sent twice the reads.
	hedgeBudget = 0.05
	hedgeBurst  = 50
	// hedgeAbortGrace is how long a caller whose hedge won waits for the
	// first node's statement to answer before dropping its connection: the
	// price of keeping a busy server's connection.
	hedgeAbortGrace = 2 * time.Millisecond
	// hedgeLoserGrace is how long an abandoned hedge may run on before its
	// connection is dropped; it holds a slot of its node meanwhile.
	hedgeLoserGrace = time.Second
	// Bounds of the automatic delay. Until a node has hedgeMinSamples
	// latencies, hedgeStartDelay is used.
	hedgeMinDelay   = time.Millisecond
	hedgeMaxDelay   = time.Second
	hedgeStartDelay = 20 * time.Millisecond
	hedgeMinSamples = 200
	// slowFor is how long a node whose read lost to a hedge gets no new
	// reads while another usable replica can take them: the readers would
	// otherwise keep queueing on a stalled server, each one hedged.
	slowFor = 100 * time.Millisecond
	// suspectFor is how long after that the opening of a connection to it
	// counts towards the hedge delay (see fire).
	suspectFor = 10 * time.Second
)

// errHedgeWon ends the first attempt's wait when its hedge answered first.
var errHedgeWon = errors.New("pgreplica: the hedged read answered first")

// latencyBuckets is a node's histogram of first-response latencies, in
// buckets √2 apart from 100µs; the monitor halves it every interval, so it
// follows the last few intervals.
type latencyBuckets [32]atomic.Uint64

const latencyBase = 100 * time.Microsecond

func latencyBucket(d time.Duration) int {
	if d < latencyBase {
		return 0
	}
	q := uint64(d) * 4 / uint64(latencyBase) // in quarters of the base: ≥ 4
	k := bits.Len64(q) - 3                   // d is in [2^k, 2^(k+1)) bases
	i := 2 * k
	if q >= 6<<k { // the upper part, from 1.5·2^k
		i++
	}
	return min(i+1, len(latencyBuckets{})-1)
}

// bucketUpper is the latency below which bucket i's samples lie.
func bucketUpper(i int) time.Duration {
	if i == 0 {
		return latencyBase
	}
	i--
	d := latencyBase << (i / 2)
	if i%2 == 1 {
		return 2 * d
	}
	return d * 3 / 2
}

func (h *latencyBuckets) record(d time.Duration) { h[latencyBucket(d)].Add(1) }

// quantiles returns upper bounds of the 0.99 and 0.999 quantiles and the
// sample count, and halves every bucket for the next interval.
func (h *latencyBuckets) quantilesAndDecay() (p99, p999 time.Duration, total uint64) {
	var counts [len(latencyBuckets{})]uint64
	for i := range h {
		c := h[i].Load()
		counts[i] = c
		total += c
		h[i].Add(-((c + 1) / 2))
	}
	if total == 0 {
		return 0, 0, 0
	}
	at := func(p float64) time.Duration {
		want := uint64(float64(total)*p + 0.5)
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen >= want {
				return bucketUpper(i)
			}
		}
		return bucketUpper(len(counts) - 1)
	}
	return at(0.99), at(0.999), total
}

// updateHedgeDelays sets every node's hedge delay from its recent
// latencies; the monitor calls it once per interval.
func (c *Connector) updateHedgeDelays() {
	for _, n := range c.allNodes() {
		d := c.cfg.HedgeAfter
		if d == HedgeAuto {
			p99, p999, samples := n.latency.quantilesAndDecay()
			switch measured := time.Duration(n.hedgeMeasured.Load()); {
			case samples >= hedgeMinSamples:
				// Twice the p99, and no less than the p99.9 once there
				// are enough reads to tell it: a healthy node is hedged
				// about one read in a thousand or less.
				d = 2 * p99
				if samples >= 10*hedgeMinSamples {
					d = max(d, p999)
				}
				d = min(max(d, hedgeMinDelay), hedgeMaxDelay)
				n.hedgeMeasured.Store(int64(d))
			case measured > 0:
				d = measured // too few reads to tell: keep the last estimate
			default:
				// Nothing measured yet: a generous multiple of the probes'
				// round trip, for a node far away.
				d = min(max(hedgeStartDelay, 4*time.Duration(n.rttNanos.Load())), hedgeMaxDelay)
			}
		}
		n.hedgeDelay.Store(int64(max(d, 0))) // HedgeOff: 0, off
	}
}

// markSlow keeps new reads off n for a while: a hedge beat it.
func (n *node) markSlow() {
	now := time.Now()
	n.slowUntil.Store(now.Add(slowFor).UnixNano())
	n.beatenAt.Store(now.UnixNano())
}

// beatenRecently says whether a hedge beat n in the last suspectFor: then
// even a read waiting for a new connection to it is hedged, for a server
// that stalls may not answer a new connection either.
func (n *node) beatenRecently() bool {
	at := n.beatenAt.Load()
	return at != 0 && time.Now().UnixNano()-at < int64(suspectFor)
}

// slow says whether a hedge beat n less than slowFor ago.
func (n *node) slow() bool { return stillBefore(&n.slowUntil) }

// hedgeBudgetState is the connector's token bucket of hedges: each read
// served by a replica adds hedgeBudget of a token, a hedge takes one.
type hedgeBudgetState struct {
	mu     sync.Mutex
	tokens float64
	reads  uint64 // replica statements counted so far
	primed bool
}

// takeHedge reports whether the budget allows one more hedge now.
func (c *Connector) takeHedge() bool {
	var reads uint64
	for _, n := range c.allNodes() {
		if n.standby.Load() {
			// The hedges themselves earn no budget.
			reads += n.statements.Load() - n.hedgesSent.Load()
		}
	}
	b := &c.hedges
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case !b.primed:
		b.primed, b.tokens, b.reads = true, hedgeBurst, reads
	case reads > b.reads:
		// Counted outside the lock: a concurrent caller may have counted
		// more already, so only move forward.
		b.tokens = min(b.tokens+hedgeBudget*float64(reads-b.reads), hedgeBurst)
		b.reads = reads
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// hedgePhase is where one hedged read stands; it changes under hedge.mu.
type hedgePhase uint8

const (
	hedgeIdle    hedgePhase = iota
	hedgeArmed              // the first attempt runs; the timer may fire
	hedgeFiring             // the hedge runs too
	hedgeAWon               // the first attempt answered first
	hedgeBWon               // the hedge answered first: the first attempt is aborted
	hedgeBFailed            // the hedge failed; the first attempt goes on alone
	hedgeAFailed            // the first attempt failed while the hedge ran: its caller waits for it
)

// hedge is a conn's state for its hedged reads. One is reused read after
// read until a hedge fires: the hedge's goroutine may outlive the read, so
// the conn then starts a new one.
type hedge struct {
	c   *conn
	due atomic.Int64 // when its hedge is due (hedgeWatch's clock); 0: not armed

	mu      sync.Mutex
	phase   hedgePhase
	armedAt time.Time
	delay   time.Duration

	// The read, for the hedge; valid while the caller waits.
	ctx    context.Context
	query  string
	args   []driver.NamedValue
	maxLag time.Duration
	minLSN uint64
	tried  uint64
	aNode  *node
	// primaryOK: the text has no effect wherever it runs (see
	// conn.hedgeScope), so the primary may take the hedge.
	primaryOK bool

	// The first attempt, for aborting it.
	abort         chan struct{}      // closed: stop waiting for a slot or a connection
	acquireCtx    hedgeAcquireCtx    // the acquire's context, when the caller's cannot end
	valueCtx      hedgeValueCtx      // the acquire's context, when it can
	dialed        bool               // a connection is being opened for it: the hedge waits
	unhedged      bool               // it opened a new connection: no hedge for this read
	acquireCancel context.CancelFunc // the acquire's, when it can
	aConn         *pgconn.PgConn     // set while its statement runs
	aReturned     bool               // its statement returned
	aCut          bool               // its socket's deadline was set: pgx drops the connection

	// The hedge.
	bNode  *node
	bLease lease
	bRows  driver.Rows
	bAt    time.Time
	bDone  chan struct{} // closed once the hedge's outcome is known
	bStop  context.CancelFunc
}

// armHedge prepares the conn's hedge for a read about to run on n and arms
// it with hedgeWatch; nil when reads on n are not hedged (n.hedgeDelay 0).
func (c *conn) armHedge(ctx context.Context, n *node, query string, args []driver.NamedValue, primaryOK bool, maxLag time.Duration, minLSN, tried uint64) *hedge {
	d := time.Duration(n.hedgeDelay.Load())
	if d <= 0 || n.fake != nil {
		return nil
	}
	h := c.hedge
	if h == nil {
		h = &hedge{c: c, abort: make(chan struct{})}
		h.acquireCtx.h, h.valueCtx.h = h, h
		if !c.c.hedgeWatch.add(h) {
			return nil // the connector closed
		}
		c.hedge = h
	}
	now := time.Now()
	h.mu.Lock()
	h.phase, h.armedAt, h.delay = hedgeArmed, now, d
	h.ctx, h.query, h.args, h.maxLag, h.minLSN, h.tried, h.aNode = ctx, query, args, maxLag, minLSN, tried, n
	h.primaryOK = primaryOK
	// A hedge is reused only while none fired, so only the first
	// attempt's fields need resetting.
	h.aConn, h.aReturned, h.aCut, h.dialed, h.unhedged = nil, false, false, false, false
	h.mu.Unlock()
	c.c.hedgeWatch.arm(h, now, d)
	return h
}

// acquireA takes the first attempt's connection on n into l; a hedge that
// answers first ends a wait for a slot, or for a connection being opened
// (pgxpool then finishes opening it in the background, into the pool).
//
// A read that must open a new connection is not hedged, unless a hedge
// beat the node lately (then the delay starts again once it is open): a
// cold pool would otherwise hedge every first read to a node that must
// open a connection too, and a new connection's first statement is slow.
func (h *hedge) acquireA(ctx context.Context, n *node, l *lease) error {
	if err := n.takeSlot(ctx, h.abort); err != nil {
		return err
	}
	var actx context.Context
	if ctx.Done() == nil {
		h.acquireCtx.Context = ctx
		actx = &h.acquireCtx // no allocation
	} else {
		// The caller's context can end too: a context of our own, which
		// the hedge's win cancels. (pgx already pays a goroutine per
		// statement for such a context.)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		h.mu.Lock()
		h.acquireCancel = cancel
		if h.phase == hedgeBWon {
			cancel()
		}
		h.mu.Unlock()
		h.valueCtx.Context = cctx
		actx = &h.valueCtx
	}
	err := n.leaseConn(actx, l)
	if err != nil {
		// pgxpool may still be opening a connection with actx: this hedge
		// must not be reused while it does.
		h.retire()
	}
	h.mu.Lock()
	h.acquireCancel = nil
	won := h.phase == hedgeBWon
	rearm, unhedged := false, false
	if h.dialed {
		// A new connection's first statement is slow too (the server
		// process loads its caches): rearm only for a node a hedge beat
		// lately; else this read is not hedged.
		h.dialed = false
		if h.phase == hedgeArmed {
			if n.beatenRecently() {
				h.armedAt, rearm = time.Now(), true
			} else {
				h.unhedged, unhedged = true, true
			}
		}
	}
	armedAt := h.armedAt
	if err == nil && !won {
		if sc, ok := l.sc.(*stdlib.Conn); ok {
			h.aConn = sc.Conn().PgConn()
		}
	}
	h.mu.Unlock()
	if rearm {
		h.c.c.hedgeWatch.arm(h, armedAt, h.delay)
	} else if unhedged {
		h.c.c.hedgeWatch.disarm(h)
	}
	if won {
		if err == nil {
			l.release() // clean: nothing ran on it
		}
		return errHedgeWon
	}
	return err
}

// hedgeAcquireCtx is the context of a first attempt's acquire when the
// caller's context cannot end: it ends when the hedge wins. Like the
// hedgeValueCtx it embeds, it lets the dial tell the hedge that a
// connection is being opened. Both live in the hedge, so they cost no allocation; the hedge is
// not reused once pgxpool may still hold one.
type hedgeAcquireCtx struct{ hedgeValueCtx }

func (c *hedgeAcquireCtx) Done() <-chan struct{} { return c.h.abort }

func (c *hedgeAcquireCtx) Err() error {
	select {
	case <-c.h.abort:
		return context.Canceled
	default:
		return c.Context.Err()
	}
}

// hedgeValueCtx is the caller's (cancellable) context with the hedge as a
// value, for the dial.
type hedgeValueCtx struct {
	context.Context
	h *hedge
}

func (c *hedgeValueCtx) Value(key any) any {
	if key == (hedgeKey{}) {
		return c.h
	}
	return c.Context.Value(key)
}

type hedgeKey struct{}

// noteHedgeDial tells the hedged read whose acquire ctx comes from, if
// any, that a connection is being opened for it: its hedge waits.
func noteHedgeDial(ctx context.Context) {
	if h, ok := ctx.Value(hedgeKey{}).(*hedge); ok {
		h.mu.Lock()
		h.dialed = true
		h.mu.Unlock()
	}
}

// fire runs on a goroutine of its own, started by hedgeWatch when the read
// is due: it sends the read to a second node if the first has not answered.
func (h *hedge) fire() {
	h.mu.Lock()
	if h.phase != hedgeArmed || h.unhedged || time.Since(h.armedAt) < h.delay ||
		h.dialed && !h.aNode.beatenRecently() {
		// Answered already, a stale fire of an earlier read, or a
		// connection is being opened to a node no hedge beat lately (the
		// timer restarts once it is open).
		h.mu.Unlock()
		return
	}
	c := h.c
	// The caller waits in its call while h.mu is held in hedgeArmed: its
	// arguments cannot change now. Once it returns they may, and a losing
	// hedge may still be encoding them: it gets copies of its own.
	args, ok := snapshotArgs(h.args)
	if !ok {
		h.mu.Unlock()
		return // an argument that cannot be copied: no hedge
	}
	b := h.pickTarget()
	if b == nil || !c.c.takeHedge() {
		h.mu.Unlock()
		return
	}
	// The hedge outlives the caller's wait when it loses: it must not die
	// with the caller's context, only with the connector (or when it wins,
	// with the caller's context again: see takeB).
	bctx, stop := context.WithCancel(context.WithoutCancel(h.ctx))
	defer context.AfterFunc(b.closed, stop)()
	h.phase, h.bNode, h.bStop, h.bAt = hedgeFiring, b, stop, time.Now()
	h.bDone = make(chan struct{})
	query := h.query
	h.mu.Unlock()
	b.hedgesSent.Add(1)

	var l lease
	rows, err := h.runB(bctx, b, &l, query, args)

	h.mu.Lock()
	switch h.phase {
	case hedgeFiring, hedgeAFailed: // hedgeAFailed: the caller waits for this outcome
		firstRuns := h.phase == hedgeFiring
		if err == nil {
			h.phase, h.bLease, h.bRows = hedgeBWon, l, rows
			if firstRuns {
				h.abortA()
			}
		} else {
			h.phase = hedgeBFailed
		}
		close(h.bDone)
		h.mu.Unlock()
		if err != nil {
			l.release()
		}
		return
	}
	// The first attempt answered first, or its caller gave up.
	close(h.bDone)
	h.mu.Unlock()
	if err == nil {
		rows.Close()
	}
	stop()
	l.release()
}

// pickTarget chooses the hedge's node: another usable replica that has a
// free slot, else the primary when fallback allows it. The caller holds
// h.mu, so the conn's scratch space is free: its caller is blocked.
func (h *hedge) pickTarget() *node {
	c := h.c
	tried := h.tried | 1<<h.aNode.index
	for {
		n, err := c.c.pickReplica(c, h.maxLag, h.minLSN, tried)
		if err != nil || n == nil {
			break
		}
		if !n.poolFull() {
			return n
		}
		tried |= 1 << n.index
	}
	if c.c.cfg.DisableFallback || !h.primaryOK {
		return nil
	}
	p, err := c.c.primary()
	if err != nil || p == h.aNode || !p.up.Load() || p.poolFull() {
		return nil
	}
	return p
}

// runB runs the hedge on b. It never waits for a slot: a node whose pool is
// full is not a hedge target.
func (h *hedge) runB(ctx context.Context, b *node, l *lease, query string, args []driver.NamedValue) (driver.Rows, error) {
	if !b.trySlot() {
		return nil, errNodeBusy
	}
	if err := b.leaseConn(ctx, l); err != nil {
		if ctx.Err() == nil {
			// As for any read: a refused connection marks the node full
			// or down, so that later reads and hedges skip it.
			h.c.c.connectFailed(b, err)
		}
		return nil, err
	}
	b.statements.Add(1)
	rows, err := l.sc.QueryContext(h.c.traceCtx(ctx, ReasonHedge), query, args)
	if err != nil {
		b.errors.Add(1)
		return nil, err
	}
	return rows, nil
}

// errNodeBusy: the hedge target's pool filled up meanwhile.
var errNodeBusy = errors.New("pgreplica: no free connection for the hedge")

// abortA cuts the first attempt short after its hedge won; h.mu is held.
// A statement in flight gets hedgeAbortGrace to answer on its own (on a
// busy machine it usually does, and its connection stays clean); then its
// socket's deadline makes pgx drop the connection, and pgx sends the
// server a cancel request for it as it does so. Not sending one first
// saves a fork on the server for each hedge, which on a busy machine is
// what a hedge costs most.
func (h *hedge) abortA() {
	h.aNode.markSlow()
	close(h.abort)
	if h.acquireCancel != nil {
		h.acquireCancel()
	}
	pg := h.aConn
	if pg == nil || h.aReturned {
		return
	}
	time.AfterFunc(hedgeAbortGrace, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if !h.aReturned {
			h.aCut = true
			_ = pg.Conn().SetDeadline(time.Now())
		}
	})
}

// snapshotArgs copies what the hedge's goroutine reads after the caller
// may have returned: database/sql's argument slice and every value the
// arguments reach that the caller could change (slices, maps, pointers,
// interfaces, arrays and structs of them, deeply). pgx encodes the hedge's
// arguments only once it has a connection, perhaps long after the caller
// returned and reused its map or its [][]byte. It reports false for an
// argument it cannot copy whole (a channel, a function, an unexported
// field that refers to memory, a cycle): that read is not hedged.
func snapshotArgs(args []driver.NamedValue) ([]driver.NamedValue, bool) {
	if args == nil {
		return nil, true
	}
	out := make([]driver.NamedValue, len(args))
	copy(out, args)
	for i := range out {
		switch v := out[i].Value.(type) {
		case nil, string, int64, int, int32, float64, bool, time.Time:
		case []byte:
			if v != nil {
				out[i].Value = append([]byte(nil), v...)
			}
		default:
			cp, ok := deepCopy(reflect.ValueOf(v), 0)
			if !ok {
				return nil, false
			}
			out[i].Value = cp.Interface()
		}
	}
	return out, true
}

// maxCopyDepth bounds deepCopy: deeper values (or a cycle) are not copied.
const maxCopyDepth = 32

var (
	timeType     = reflect.TypeFor[time.Time]()
	locationType = reflect.TypeFor[*time.Location]()
)

// deepCopy returns a copy of v that shares no memory the caller can change.
func deepCopy(v reflect.Value, depth int) (reflect.Value, bool) {
	if depth > maxCopyDepth {
		return reflect.Value{}, false
	}
	t := v.Type()
	switch v.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		return v, true
	case reflect.Slice:
		if v.IsNil() {
			return v, true
		}
		return copyElems(reflect.MakeSlice(t, v.Len(), v.Len()), v, depth)
	case reflect.Array:
		return copyElems(reflect.New(t).Elem(), v, depth)
	case reflect.Map:
		if v.IsNil() {
			return v, true
		}
		cp := reflect.MakeMapWithSize(t, v.Len())
		for it := v.MapRange(); it.Next(); {
			k, ok := deepCopy(it.Key(), depth+1)
			if !ok {
				return reflect.Value{}, false
			}
			e, ok := deepCopy(it.Value(), depth+1)
			if !ok {
				return reflect.Value{}, false
			}
			cp.SetMapIndex(k, e)
		}
		return cp, true
	case reflect.Pointer:
		if v.IsNil() || t == locationType { // a *time.Location never changes
			return v, true
		}
		e, ok := deepCopy(v.Elem(), depth+1)
		if !ok {
			return reflect.Value{}, false
		}
		cp := reflect.New(t.Elem())
		cp.Elem().Set(e)
		return cp, true
	case reflect.Interface:
		if v.IsNil() {
			return v, true
		}
		e, ok := deepCopy(v.Elem(), depth+1)
		if !ok {
			return reflect.Value{}, false
		}
		cp := reflect.New(t).Elem()
		cp.Set(e)
		return cp, true
	case reflect.Struct:
		if t == timeType {
			return v, true
		}
		cp := reflect.New(t).Elem()
		cp.Set(v) // every field, unexported ones included
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				if !refFree(f.Type) {
					return reflect.Value{}, false
				}
				continue
			}
			e, ok := deepCopy(v.Field(i), depth+1)
			if !ok {
				return reflect.Value{}, false
			}
			cp.Field(i).Set(e)
		}
		return cp, true
	}
	return reflect.Value{}, false // a channel, a function, an unsafe.Pointer
}

// refFree says whether a value of type t refers to no other memory, so
// that copying it copies all of it.
func refFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		return true
	case reflect.Array:
		return refFree(t.Elem())
	case reflect.Struct:
		if t == timeType {
			return true
		}
		for i := range t.NumField() {
			if !refFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// finishA settles a hedged read once the first attempt's statement
// returned (rows, err) on the lease l (or failed before it held one). It
// returns the read's outcome: won reports that the hedge answered instead,
// its rows in rows and its lease moved into l.
func (h *hedge) finishA(ctx context.Context, l *lease, rows driver.Rows, err error) (driver.Rows, error, bool) {
	h.c.c.hedgeWatch.disarm(h)
	h.mu.Lock()
	aCut := h.aCut
	h.aReturned, h.aConn = true, nil
	switch h.phase {
	case hedgeArmed:
		h.phase = hedgeAWon
		h.mu.Unlock()
		if err == nil {
			h.aNode.latency.record(time.Since(h.armedAt))
		}
		return rows, err, false
	case hedgeBFailed:
		h.mu.Unlock()
		h.retire() // its goroutine is done; start afresh anyway
		if err == nil {
			h.aNode.latency.record(time.Since(h.armedAt))
		}
		return rows, err, false
	case hedgeFiring:
		if err == nil {
			h.phase = hedgeAWon
			h.mu.Unlock()
			h.retire()
			h.aNode.latency.record(time.Since(h.armedAt))
			time.AfterFunc(hedgeLoserGrace, h.bStop)
			return rows, nil, false
		}
		h.phase = hedgeAFailed
		done := h.bDone
		h.mu.Unlock()
		h.retire()
		if ctx.Err() != nil {
			h.bStop()
			return nil, err, false
		}
		select {
		case <-done:
		case <-ctx.Done():
			h.mu.Lock()
			if h.phase == hedgeAFailed {
				h.phase = hedgeAWon // nobody takes the hedge's result now
				h.mu.Unlock()
				h.bStop()
				return nil, err, false
			}
			h.mu.Unlock()
		}
		h.mu.Lock()
		won := h.phase == hedgeBWon
		h.mu.Unlock()
		if !won {
			return nil, err, false
		}
		l.release() // the failed first attempt's connection, if it got one
		return h.takeB(l), nil, true
	}
	// hedgeBWon: the first attempt lost.
	h.mu.Unlock()
	h.retire()
	if l.held() {
		// It answered within the grace: the connection is clean once its
		// rows are read. Cut by the deadline: pgx has closed it.
		keep := !aCut
		if err == nil {
			rows.Close()
		}
		if !keep {
			l.dirty = true
		}
		l.release()
	}
	return h.takeB(l), nil, true
}

// retire stops the conn from reusing h: its hedge's goroutine, or pgxpool
// opening a connection with its context, may outlive the read.
func (h *hedge) retire() {
	if h.c.hedge == h {
		h.c.hedge = nil
		h.c.c.hedgeWatch.remove(h)
	}
}

// target is the node the hedge was sent to, or nil.
func (h *hedge) target() *node {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bNode
}

// takeB moves the winning hedge's lease into l and returns its rows.
func (h *hedge) takeB(l *lease) driver.Rows {
	h.mu.Lock()
	defer h.mu.Unlock()
	*l = h.bLease
	h.bLease = lease{}
	// From now on the caller's context governs the hedge's rows, as it
	// would the first attempt's, until the checkout ends: then the conn
	// stops the AfterFunc, which would otherwise stay registered on a
	// long-lived context for each won hedge.
	stopAfter, cancel := context.AfterFunc(h.ctx, h.bStop), h.bStop
	h.c.endHedgeRows()
	h.c.hedgeRowsDone = func() {
		stopAfter()
		cancel()
	}
	b := l.node
	b.hedgesWon.Add(1)
	b.latency.record(time.Since(h.bAt))
	return h.bRows
}

// copyElems fills dst, a new slice or array of src's length, with deep
// copies of src's elements.
func copyElems(dst, src reflect.Value, depth int) (reflect.Value, bool) {
	for i := range src.Len() {
		e, ok := deepCopy(src.Index(i), depth+1)
		if !ok {
			return reflect.Value{}, false
		}
		dst.Index(i).Set(e)
	}
	return dst, true
}
