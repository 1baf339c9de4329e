package pgreplica

import (
	"context"
	"strconv"
	"time"
)

// How stale a read can be (docs/guarantees.md, "How stale a read can be").
//
// A replica serves a read bounded by maxLag only if every commit the
// primary had made visible maxLag before now is known to be replayed
// there. What is known is kept per replica as knownAt (monoNow): every
// commit visible on the primary at that moment is on the replica. It comes
// from two sources, each a lower bound; knownAt is the later of the two:
//
//   - The primary's probes. A probe that started at t and read the insert
//     position I: a commit is visible only once its record is in the WAL
//     (with synchronous_commit on or off), so everything visible at t lies
//     before I, and a replica that has replayed I has it.
//   - The replica's last replayed commit (pg_last_xact_replay_timestamp()).
//     The primary stamps a commit before inserting its record, so every
//     commit visible before that stamp precedes it in the WAL and is
//     replayed too. The stamp is on the primary's clock; it is moved to
//     this process's clock with the primary's clock_timestamp() read by its
//     latest probe, taken as read when that probe started (earlier than it
//     was: the conversion can only make the replica look staler).
//
// The first alone knows a replica that keeps up with a busy primary only to
// the probe before the one that saw it (the replica is a moment behind
// whatever the concurrent probe of the primary read); the second knows it
// to within its replay delay.
//
// The check counts the age of that knowledge: time goes on between probes,
// and the primary may commit in the meantime. So a probe must refresh it
// well within the bound: see probeInterval.
//
// When the primary stops answering probes, nothing it commits can reach
// its clients either (a crash, a freeze, a partition of the primary from
// this process and them alike), so the age counts only up to the start of
// the first probe it did not answer (horizon): a replica with what the
// primary had then keeps serving through the outage and the failover.

// staleProbeFloor is the shortest probe interval a short max_replica_lag
// brings the monitor to: a bound shorter than twice this is met only
// right after each probe (reads go to the primary in between).
const staleProbeFloor = 50 * time.Millisecond

// probeInterval is the monitor's interval: monitor_interval, or half of
// max_replica_lag when that is shorter (not under staleProbeFloor). A
// replica's known position is as old as the probe that found it, and up to
// a probe round trip (more on a loaded machine) older when it is applied:
// probing every half bound leaves the other half for that, so a replica
// that keeps up never drops out between probes.
func probeInterval(cfg *Config) time.Duration {
	iv := cfg.MonitorInterval
	if lag := cfg.MaxReplicaLag; lag > 0 && lag/2 < iv {
		iv = max(lag/2, min(staleProbeFloor, iv))
	}
	return iv
}

// withinLag says whether every commit the primary had made visible maxLag
// before now is known to be on the replica (noLagLimit: any lag is).
func (n *node) withinLag(maxLag time.Duration) bool {
	if maxLag == noLagLimit {
		return true
	}
	known := n.knownAt.Load()
	if known == 0 {
		return false // nothing is known yet
	}
	now := monoNow()
	if h := n.horizon.Load(); h != 0 && h < now {
		now = h // the primary committed nothing since: it is not answering
	}
	return time.Duration(now-known) <= maxLag
}

// awaitFirstProbes holds a read on a connector whose monitor has not
// finished its first round: until then no replica is known to be up, or
// within any bound, and the read would go to the primary (or, with none
// known yet, wait for one). It waits at most one probe interval (a round
// waiting for a node that does not answer takes longer).
func (c *Connector) awaitFirstProbes(ctx context.Context) {
	done := c.rolesKnown
	if done == nil {
		return // no monitor (routing unit tests)
	}
	select {
	case <-done:
		return
	default:
	}
	t := time.NewTimer(probeInterval(&c.cfg))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// staleness returns how old, at most, the data on the replica is: how long
// ago the primary may first have had a commit the replica lacks. It is
// noLagLimit when nothing is known.
func (n *node) staleness() time.Duration {
	known := n.knownAt.Load()
	if known == 0 {
		return noLagLimit
	}
	now := monoNow()
	if h := n.horizon.Load(); h != 0 && h < now {
		now = h
	}
	return time.Duration(max(now-known, 0))
}

// staleClock is what the monitor keeps to find knownAt: the current
// primary's recent probes. It is owned by the monitor goroutine.
type staleClock struct {
	of  *node  // the primary the samples are of
	tli uint32 // its timeline
	// samples are its probes: start (monoNow) and the end of the last WAL
	// record then (lastRecordEnd of the insert position), oldest first.
	samples []lsnSample
	// offset maps the primary's clock to monoNow: a primary time (unix
	// nanos) minus offset is a monoNow no later than the moment the
	// primary's clock showed it. ok says whether it was measured.
	offset int64
	ok     bool
	// down is the start of the first probe of the current primary that
	// failed since it last answered, 0 while it answers.
	down int64
	// fresh holds the replicas that were within max_replica_lag after
	// the last round; early is set when that round asked for the next one
	// early (see updateStaleness). rounds counts this primary's rounds.
	fresh  map[*node]bool
	early  bool
	rounds int
}

// updateStaleness brings knownAt and horizon of every node up to date with
// a round of probes; the monitor calls it after each round, once the
// primary and every standby's replay position and timeline are updated.
func (m *monitor) updateStaleness(primary *node, nodes []*node, results []probeResult) {
	s := &m.stale
	if primary != s.of {
		// Another primary: its positions and clock are not the old one's.
		*s = staleClock{of: primary}
	}
	if primary != nil {
		switch r := results[primary.index]; {
		case r.skipped:
		case r.err != nil:
			if s.down == 0 && !probeFull(primary, r) { // full is not down
				s.down = r.started
			}
		case !r.standby:
			s.down = 0
			if r.timeline != s.tli {
				s.samples, s.tli = s.samples[:0], r.timeline
			}
			s.samples = append(s.samples, lsnSample{at: r.started, lsn: lastRecordEnd(r.lsn)})
			if len(s.samples) > historyLen {
				s.samples = s.samples[len(s.samples)-historyLen:]
			}
			if r.clock != 0 {
				s.offset, s.ok = r.clock-r.started, true
			}
		}
	} else if s.down == 0 {
		// No node is writable: nothing is being committed now. From this
		// round on (an earlier start would only make reads less stale).
		s.down = monoNow()
	}
	if s.fresh == nil {
		s.fresh = make(map[*node]bool)
	}
	s.rounds++
	bound, now, early := m.c.cfg.MaxReplicaLag, monoNow(), false
	for _, n := range nodes {
		if n == primary || !n.standby.Load() || !n.up.Load() || n.offTimeline.Load() {
			// Not a replica of this primary's timeline (or a replica that
			// may come back as another server): nothing is known of it.
			n.knownAt.Store(0)
			n.horizon.Store(0)
			delete(s.fresh, n)
			continue
		}
		var known int64
		r := results[n.index]
		answered := !r.skipped && r.err == nil && r.standby
		switch {
		case !answered:
			// Not heard from this round: what it had replayed, it still has.
			known = n.knownAt.Load()
		case r.clock != 0 && s.ok:
			// Not later than the probe read it (a clock that jumped).
			known = min(r.clock-s.offset, r.started+int64(r.latency))
		}
		replay := n.replayLSN.Load()
		known = max(known, s.coveredAt(replay))
		n.knownAt.Store(known)
		n.horizon.Store(s.down)
		if bound <= 0 || s.down != 0 {
			continue
		}
		// A replica that was within the bound (or that this primary's
		// first round found) and that this round caught a moment behind
		// the primary's probe, with nothing newer known, would drop out
		// before the next round: probe again at once, when it has
		// replayed what it lacked. A replica that stays behind (paused)
		// asks once, when it first falls behind.
		behind := len(s.samples) > 0 && replay < s.samples[len(s.samples)-1].lsn
		dropsOut := known == 0 || time.Duration(now+int64(m.interval)-known) > bound
		if answered && behind && dropsOut && (s.fresh[n] || s.rounds == 1) {
			early = true
		}
		s.fresh[n] = known != 0 && time.Duration(now-known) <= bound
	}
	// Never two early rounds in a row: a replica that is still behind is.
	s.early = early && !s.early
	if s.early {
		m.kick()
	}
}

// coveredAt is the start of the newest probe of the primary whose position
// lsn covers, or 0.
func (s *staleClock) coveredAt(lsn uint64) int64 {
	for j := len(s.samples) - 1; j >= 0; j-- {
		if s.samples[j].lsn <= lsn {
			return s.samples[j].at
		}
	}
	return 0
}

// probeClockSQL is the probe's last column: on the primary its clock, on a
// standby the timestamp of the last commit (or abort) it replayed, NULL
// before it replayed one; in microseconds since the Unix epoch.
const probeClockSQL = `(extract(epoch FROM CASE WHEN pg_is_in_recovery() THEN pg_last_xact_replay_timestamp() ELSE clock_timestamp() END) * 1000000)::bigint`

// parseClock reads probeClockSQL's value as unix nanos; NULL is 0.
func parseClock(b []byte) (int64, error) {
	if b == nil {
		return 0, nil
	}
	us, err := strconv.ParseInt(string(b), 10, 64)
	return us * int64(time.Microsecond), err
}
