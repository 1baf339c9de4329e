package pgreplica

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// epoch anchors monoNow: time.Since reads the monotonic clock, so wall
// clock jumps cannot reorder a write and a probe.
var epoch = time.Now()

func monoNow() int64 { return int64(time.Since(epoch)) }

// lsnSample is one probe of the primary: the WAL insert position it
// reported, read after the probe started at (monoNow) time at.
type lsnSample struct {
	at  int64
	lsn uint64
}

// session is a read-your-writes session: reads made with its context see
// every write acknowledged earlier through the same session, from a replica
// that has replayed it or else from the primary. It is safe for concurrent
// use. A session belongs to one cluster: WAL positions mean nothing on
// another.
//
// A write costs the session no round trip: it only notes the time. The
// monitor's next probe of the primary, which started after the write,
// reports a WAL position that covers it; until then the session's reads go
// to the primary, afterwards to any replica that has replayed that
// position.
type session struct {
	// lsn is the WAL position the session's writes are known to have
	// reached: a replica qualifies when it has replayed at least this.
	lsn atomic.Uint64
	// pending is the monoNow time after the latest write whose position is
	// not known yet, or 0. The first probe of the primary that starts after
	// it reports a position that covers the write, at no cost to the write.
	pending atomic.Int64

	// claim is a position read from a token and not yet checked against
	// the primary, or 0; claimAt is when the token was restored. A token
	// comes from a client and may be forged: a claim at or below a position
	// the primary reported is taken as it is; above it, it is capped by the
	// first probe that started after claimAt (an honest token's write was
	// acknowledged before that probe, so the cap never cuts it).
	claim   atomic.Uint64
	claimAt int64
	// clamped is set when a claim was cut down to the primary's position.
	clamped atomic.Bool
	// garbage is set when the session was restored from a token that does
	// not parse.
	garbage bool

	// conn is the Connector the session last wrote through (or settled a
	// claim with): SessionToken asks its primary when a write is pending.
	conn atomic.Pointer[Connector]
	// wrote is set by the first write through this Session value.
	wrote atomic.Bool
	// open counts writes sent through the query path whose result is still
	// being read: pgx hands back the first row of INSERT … RETURNING before
	// the implicit commit, so until the checkout ends the write is not yet
	// acknowledged and no probe can cover it.
	open atomic.Int32
}

// WithSession returns a context carrying a new read-your-writes session, or
// ctx itself when it already carries one.
func WithSession(ctx context.Context) context.Context {
	if o := optionsFrom(ctx); o != nil && o.session != nil {
		return ctx
	}
	s := &session{}
	return with(ctx, func(o *routeOptions) { o.session = s })
}

// noteWrite records that a write through the session, on c, was
// acknowledged now.
func (s *session) noteWrite(c *Connector) {
	// conn before pending: whoever sees the pending write sees the
	// connector that can resolve it.
	if s.conn.Load() != c {
		s.conn.Store(c)
	}
	if !s.wrote.Load() {
		s.wrote.Store(true)
	}
	now := monoNow()
	for {
		p := s.pending.Load()
		if p >= now || s.pending.CompareAndSwap(p, now) {
			return
		}
	}
}

// beginWrite records a write sent through the query path on c, whose
// result is still being read; noteWrite follows when its checkout ends.
// From now on the session counts as having written, so that a token taken
// before then is conservative instead of covering nothing.
func (s *session) beginWrite(c *Connector) {
	s.open.Add(1)
	if s.conn.Load() != c {
		s.conn.Store(c)
	}
	if !s.wrote.Load() {
		s.wrote.Store(true)
	}
}

// floor returns the replay position a replica needs to serve this session,
// or needPrimary when its latest write (or the position of the token it
// was restored from) is not yet covered by a probe of the primary.
func (s *session) floor(c *Connector) (minLSN uint64, needPrimary bool) {
	if s.open.Load() > 0 {
		return 0, true
	}
	sample := c.primarySample.Load()
	if cl := s.claim.Load(); cl != 0 {
		if s.conn.Load() != c {
			s.conn.Store(c)
		}
		switch {
		case sample != nil && cl <= sample.lsn:
			s.settleClaim(cl, cl)
		case sample != nil && sample.at > s.claimAt:
			s.settleClaim(cl, sample.lsn)
		default:
			return 0, true
		}
	}
	if p := s.pending.Load(); p != 0 {
		if sample == nil || sample.at <= p {
			return 0, true
		}
		s.raise(sample.lsn)
		s.pending.CompareAndSwap(p, 0) // a newer write keeps its own pending time
	}
	return s.lsn.Load(), false
}

// settleClaim replaces the claim cl by the trusted position lsn ≤ cl.
func (s *session) settleClaim(cl, lsn uint64) {
	if lsn < cl {
		s.clamped.Store(true)
	}
	s.raise(lsn)
	s.claim.CompareAndSwap(cl, 0) // only ever set once, when restored
}

func (s *session) raise(lsn uint64) {
	for {
		cur := s.lsn.Load()
		if lsn <= cur || s.lsn.CompareAndSwap(cur, lsn) {
			return
		}
	}
}

// Session tokens are "1." followed by a WAL position in lower-case hex
// (the 64-bit form of PostgreSQL's pg_lsn): "1.3000148". The "1." is the
// format version. A token reveals nothing but that position.
const tokenPrefix = "1."

// unknownLSN is the position a token carries when a write's position could
// not be learnt (the primary did not answer): whoever restores it clamps it
// to the primary's position at that time, which covers the write.
const unknownLSN = math.MaxUint64

func formatToken(lsn uint64) string {
	return tokenPrefix + strconv.FormatUint(lsn, 16)
}

func parseToken(token string) (uint64, bool) {
	hex, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok || hex == "" || len(hex) > 16 {
		return 0, false
	}
	for i := 0; i < len(hex); i++ { // ParseUint would also take a sign
		c := hex[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return 0, false
		}
	}
	lsn, err := strconv.ParseUint(hex, 16, 64)
	return lsn, err == nil
}

// SessionToken returns a token for the read-your-writes session ctx
// carries, or "" when it carries none. WithSessionToken turns it back into
// a session in another request or process, whose reads see every write the
// session made before SessionToken was called.
//
// The token is short, printable ASCII (fit for a cookie or a header) and
// holds nothing but a WAL position. When the latest write's position is
// not known yet (no probe of the primary since), SessionToken asks the
// primary for it: one round trip, bounded by ctx and by the monitor's probe
// timeout. Should the primary not answer, the token makes whoever restores
// it wait for a fresh probe of the primary instead, which is as safe.
func SessionToken(ctx context.Context) string {
	o := optionsFrom(ctx)
	if o == nil || o.session == nil {
		return ""
	}
	return formatToken(o.session.position(ctx))
}

// position returns a WAL position that covers every write made through s,
// asking the primary when one is pending.
func (s *session) position(ctx context.Context) uint64 {
	if c := s.conn.Load(); c != nil {
		if _, needPrimary := s.floor(c); needPrimary {
			s.settleNow(ctx, c)
		}
	}
	if s.pending.Load() != 0 || s.open.Load() > 0 {
		// A write whose position is unknown, or not even committed yet
		// (INSERT … RETURNING whose rows are still open): whoever restores
		// the token reads from the primary until its next probe.
		return unknownLSN
	}
	// A claim that no connector could check yet is passed on as it came.
	return max(s.lsn.Load(), s.claim.Load())
}

// settleNow resolves the pending write and the claim with the primary's
// current WAL insert position: the query starts after both, so its answer
// covers the write and any honest claim.
func (s *session) settleNow(ctx context.Context, c *Connector) {
	p, cl := s.pending.Load(), s.claim.Load()
	if p == 0 && cl == 0 {
		return
	}
	lsn, err := c.insertLSN(ctx)
	if err != nil {
		return
	}
	if cl != 0 {
		s.settleClaim(cl, min(cl, lsn))
	}
	if p != 0 {
		s.raise(lsn)
		s.pending.CompareAndSwap(p, 0)
	}
}

// WithSessionToken returns a context carrying a session restored from a
// token made by SessionToken, typically in an earlier request of the same
// client, and perhaps by another process: its reads see every write the
// token covers. When ctx already carries a session, the new one covers that
// session's writes too.
//
// A token from a client cannot be trusted. One that does not parse
// (including "") is ignored: the context gets a fresh session. A position
// beyond the primary's is clamped to the primary's position at the first
// probe after the token was restored, so a forged token can do no more than
// a write just before the request would: send that client's reads to the
// primary until a replica has caught up.
func WithSessionToken(ctx context.Context, token string) context.Context {
	s := restoreSession(optionsFrom(ctx), token)
	return with(ctx, func(o *routeOptions) { o.session = s })
}

func restoreSession(prev *routeOptions, token string) *session {
	s := &session{}
	if prev != nil && prev.session != nil {
		old := prev.session
		s.lsn.Store(old.lsn.Load())
		s.pending.Store(old.pending.Load())
		s.conn.Store(old.conn.Load())
		if cl := old.claim.Load(); cl != 0 {
			s.claim.Store(cl)
			s.claimAt = old.claimAt
		}
	}
	if token == "" {
		return s
	}
	lsn, ok := parseToken(token)
	if !ok {
		s.garbage = true
		return s
	}
	if lsn > s.claim.Load() {
		s.claim.Store(lsn)
		s.claimAt = monoNow()
	}
	return s
}

// insertLSNSQL asks the primary for its WAL insert position, which covers
// every commit it acknowledged.
const insertLSNSQL = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint"

// insertLSN asks the primary for its current WAL insert position, on a
// connection of its pool.
func (c *Connector) insertLSN(ctx context.Context) (uint64, error) {
	if c.closed.Load() {
		return 0, ErrClosed
	}
	n, err := c.primary()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, min(max(c.cfg.MonitorInterval, 500*time.Millisecond), 5*time.Second))
	defer cancel()
	var l lease
	if err := c.acquirePrimary(ctx, n, &l); err != nil {
		c.primaryFailed(err)
		return 0, fmt.Errorf("pgreplica: primary %s: %w", n.addr, err)
	}
	defer l.release()
	n.statements.Add(1)
	lsn, err := queryUint(ctx, l.sc, insertLSNSQL)
	if err != nil {
		n.errors.Add(1)
		c.primaryFailed(err)
		return 0, err
	}
	return lsn, nil
}

// queryUint runs a query returning one non-negative integer.
func queryUint(ctx context.Context, q driver.QueryerContext, query string) (uint64, error) {
	rows, err := q.QueryContext(ctx, query, nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	dest := make([]driver.Value, len(rows.Columns()))
	if len(dest) != 1 {
		return 0, fmt.Errorf("pgreplica: %d columns, want 1", len(dest))
	}
	if err := rows.Next(dest); err != nil {
		return 0, err
	}
	switch v := dest[0].(type) {
	case int64:
		if v >= 0 {
			return uint64(v), nil
		}
	case []byte:
		return strconv.ParseUint(string(v), 10, 64)
	case string:
		return strconv.ParseUint(v, 10, 64)
	}
	return 0, errors.New("pgreplica: unexpected WAL position")
}

// replayLSNSQL asks a standby how far it has replayed.
const replayLSNSQL = "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint"

// catchUpPolls and catchUpPause bound how long a session read waits for a
// replica to replay its writes before the primary serves it: replicas that
// keep up replay a commit within a millisecond or two, far sooner than the
// monitor's next probe would report it.
const (
	catchUpPolls = 3
	catchUpPause = time.Millisecond
)

// settleBounds learns the WAL position of the writes a read must see when
// no probe of the primary has reported it yet (a write just acknowledged,
// or a token's claim): one small query on the primary per pending write,
// after which the sessions know the position and a replica that has
// replayed it may serve this read and the later ones. Writes still open
// (INSERT … RETURNING whose rows are being read) stay unresolved.
func (c *conn) settleBounds(ctx context.Context, o *routeOptions, cl classification) {
	sessions := [3]*session{c.c.ryw}
	if o != nil {
		sessions[1] = o.session
	}
	if cl.catalog {
		sessions[2] = &c.c.ddl
	}
	for _, s := range sessions {
		if s == nil {
			continue
		}
		if _, needPrimary := s.floor(c.c); needPrimary && s.open.Load() == 0 {
			s.settleNow(ctx, c.c)
		}
	}
}

// catchUp asks a replica directly whether it has replayed minLSN, when the
// monitor's last probes say none has: on the replica connection this
// checkout holds, else on one taken from a replica that is otherwise
// usable, polling a few times a millisecond apart. A replica found caught
// up has its known position raised, so that routing picks it (and the
// lease taken here is the one the read runs on). It reports whether one
// was found.
func (c *conn) catchUp(ctx context.Context, maxLag time.Duration, minLSN, tried uint64) bool {
	if n, _ := c.c.pickReplica(c, maxLag, minLSN, tried); n != nil {
		return true // one is known to have it already
	}
	l := &c.replica
	if l.held() && !l.node.usableReplica(maxLag, 0) {
		l.release()
	}
	if !l.held() {
		n, err := c.c.pickReplica(c, maxLag, 0, tried)
		if n == nil || err != nil {
			return false
		}
		if err := n.acquire(ctx, l); err != nil {
			if ctx.Err() == nil {
				c.c.connectFailed(n, err)
			}
			return false
		}
	}
	n := l.node
	for i := 0; i < catchUpPolls; i++ {
		if i > 0 {
			t := time.NewTimer(catchUpPause)
			select {
			case <-ctx.Done():
				t.Stop()
				return false
			case <-t.C:
			}
		}
		lsn, err := queryUint(ctx, l.sc, replayLSNSQL)
		if err != nil {
			// Let the read's own path judge the replica; this connection
			// may be broken.
			c.dropReplica(l, err)
			return false
		}
		if lsn >= minLSN {
			n.noteReplayed(lsn)
			return n.usableReplica(maxLag, minLSN)
		}
	}
	return false
}

// noteReplayed raises the node's known replay position to lsn, which the
// node itself just reported; a probe that started earlier may lower it
// again, which only costs another check.
func (n *node) noteReplayed(lsn uint64) {
	for {
		cur := n.replayLSN.Load()
		if lsn <= cur || n.replayLSN.CompareAndSwap(cur, lsn) {
			return
		}
	}
}
