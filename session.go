package pgreplica

import (
	"context"
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

// Session is a read-your-writes session: reads made with its context see
// every write acknowledged earlier through the same session, from a replica
// that has replayed it or else from the primary. It is safe for concurrent
// use.
type Session struct {
	// lsn is the WAL position the session's writes are known to have
	// reached: a replica qualifies when it has replayed at least this.
	lsn atomic.Uint64
	// pending is the monoNow time after the latest write whose position is
	// not known yet, or 0. The first probe of the primary that starts after
	// it reports a position that covers the write, at no cost to the write.
	pending atomic.Int64
}

// WithSession returns a context carrying a new read-your-writes session, or
// ctx itself when it already carries one.
func WithSession(ctx context.Context) context.Context {
	if o := optionsFrom(ctx); o != nil && o.session != nil {
		return ctx
	}
	s := &Session{}
	return with(ctx, func(o *routeOptions) { o.session = s })
}

// noteWrite records that a write through the session was acknowledged now.
func (s *Session) noteWrite() {
	now := monoNow()
	for {
		p := s.pending.Load()
		if p >= now || s.pending.CompareAndSwap(p, now) {
			return
		}
	}
}

// floor returns the replay position a replica needs to serve this session,
// or needPrimary when its latest write is not yet covered by a probe.
func (s *Session) floor(c *Connector) (minLSN uint64, needPrimary bool) {
	if p := s.pending.Load(); p != 0 {
		sample := c.primarySample.Load()
		if sample == nil || sample.at <= p {
			return 0, true
		}
		s.raise(sample.lsn)
		s.pending.CompareAndSwap(p, 0) // a newer write keeps its own pending time
	}
	return s.lsn.Load(), false
}

func (s *Session) raise(lsn uint64) {
	for {
		cur := s.lsn.Load()
		if lsn <= cur || s.lsn.CompareAndSwap(cur, lsn) {
			return
		}
	}
}
