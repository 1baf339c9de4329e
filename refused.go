package pgreplica

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A node that refuses new connections with 53300 is full: it gets no new
// connection attempt from this connector (reads, hedges or the monitor's
// probe) until a backoff has passed, and then exactly one attempt goes
// first. Each refusal in a row doubles the backoff, with jitter, so that a
// fleet's instances spread their retries instead of dialling in step; a
// new connection to the node ends the streak. A refused connection costs
// the server a process and an authentication (about 3.5 ms of CPU), and a
// fleet refused by a limit would otherwise spend a core on retries.
//
// fullUntil holds the state: 0 when the node is not full; a positive unix
// nanos time until which it is backed off; a negative one, -t, while the
// first attempt after the backoff is under way (until t at most), during
// which everyone else still keeps away.

// refusedCap bounds the backoff after a server-wide refusal (max_connections,
// or the slots reserved for superusers), in monitor intervals: such a server
// is often full for a moment only (a burst, another client's pool).
const refusedCap = 16

// quotaBackoff is the backoff, in monitor intervals, after the second
// refusal in a row by a role's or a database's CONNECTION LIMIT: a limit an
// administrator set, which a fleet that outgrew it meets on every attempt
// until the fleet or the limit changes. With jitter a retry comes every 64
// to 128 intervals: 60 instances then make fewer than one refused attempt
// a second.
const quotaBackoff = 128

// isConnectionQuota reports a 53300 raised by a role's or a database's
// CONNECTION LIMIT rather than by max_connections. The message is
// translated with lc_messages; the name of the server function that raised
// it is not.
func isConnectionQuota(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" {
		return false
	}
	switch pe.Routine {
	case "InitializeSessionUserId", "CheckMyDatabase":
		return true
	}
	return false
}

// refusedBackoff is the backoff after the k-th refusal in a row (k ≥ 1),
// before jitter.
func refusedBackoff(k int32, interval time.Duration, quota bool) time.Duration {
	if quota && k >= 2 {
		return quotaBackoff * interval
	}
	return interval << min(k-1, 4) // 1, 2, 4, 8, 16 intervals (refusedCap)
}

// refused records that a new connection to n was refused with 53300.
// Refusals of attempts that started before the node was marked (several
// reads dialled at once) do not lengthen the backoff.
func (n *node) refused(err error, interval time.Duration) {
	now := time.Now().UnixNano()
	if t := n.fullUntil.Load(); t > now {
		return // already backed off
	}
	k := n.fullStreak.Add(1)
	d := refusedBackoff(k, interval, isConnectionQuota(err))
	d = d/2 + rand.N(d/2+1) // "equal jitter": between half and all of it
	n.fullUntil.Store(now + int64(d))
}

// connected records that a new connection to n was opened: it has a free
// slot, whatever it refused before.
func (n *node) connected() {
	if n.fullStreak.Load() != 0 || n.fullUntil.Load() != 0 {
		n.fullStreak.Store(0)
		n.fullUntil.Store(0)
	}
}

// fullBlocks says whether the node is backed off after refusing a
// connection: true until the backoff passes; then false for exactly one
// caller, whose attempt either refreshes the mark (refused again) or ends
// it (a new connection). The others stay away meanwhile, for at most
// fullProbation; a first attempt that needed no new connection (an idle
// one served it) ends the mark with that.
func (n *node) fullBlocks(probation time.Duration) bool {
	t := n.fullUntil.Load()
	if t == 0 {
		return false
	}
	now := time.Now().UnixNano()
	switch {
	case t > 0 && now < t:
		return true
	case t > 0:
		return !n.fullUntil.CompareAndSwap(t, -(now + int64(probation)))
	case now < -t:
		return true
	}
	n.fullUntil.CompareAndSwap(t, 0) // the first attempt was not refused
	return false
}

// serverFull says whether the node refused a new connection lately and is
// still backed off, or its first attempt since is under way.
func (n *node) serverFull() bool {
	t := n.fullUntil.Load()
	if t < 0 {
		t = -t
	}
	return t != 0 && time.Now().UnixNano() < t
}

// afterConnect wraps a pgconn AfterConnect hook to record each new
// connection to n (see connected).
func (n *node) afterConnect(next pgconn.AfterConnectFunc) pgconn.AfterConnectFunc {
	return func(ctx context.Context, pc *pgconn.PgConn) error {
		if next != nil {
			if err := next(ctx, pc); err != nil {
				return err
			}
		}
		n.connected()
		return nil
	}
}

// isConnectTimeout reports a new connection abandoned by its connect
// timeout (pgx's own, a dial's, or the connect context's deadline), as
// opposed to one the server answered or a host that refused the dial.
func isConnectTimeout(err error) bool {
	var ne net.Error
	return pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
