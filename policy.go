package pgreplica

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Candidate is a usable replica offered to a Policy.
type Candidate struct {
	// Index is the node's position in the DSN's host list, from 0: the
	// first replica listed is 1. It does not change with the topology: after
	// a failover, the node listed first (Index 0) can be a candidate, once it
	// has rejoined as a standby. A discovered node's Index is the lowest
	// one free when it joined, from 1 up; a removed node's Index is given to
	// a new member only once the removed node's statements finished.
	Index int
	// Addr is host:port.
	Addr string
	// InFlight is how many connections pgreplica holds on it right now.
	InFlight int
	// Lag is how far behind the primary it was at the last probe.
	Lag time.Duration
	// RTT is its smoothed round-trip time, from the monitor's probes; 0
	// while none has been measured.
	RTT time.Duration
}

// Policy chooses which usable replica serves a read. Choose gets at least
// one candidate and returns an index into candidates; it is called
// concurrently and must not retain the slice. An out-of-range answer is
// treated as 0.
type Policy interface {
	Choose(candidates []Candidate) int
}

type randomPolicy struct{}

// Random picks a usable replica uniformly at random (the default).
func Random() Policy { return randomPolicy{} }

func (randomPolicy) Choose(c []Candidate) int { return rand.IntN(len(c)) }

type roundRobinPolicy struct{ next atomic.Uint64 }

// RoundRobin takes usable replicas in turn.
func RoundRobin() Policy { return &roundRobinPolicy{} }

func (p *roundRobinPolicy) Choose(c []Candidate) int {
	return int((p.next.Add(1) - 1) % uint64(len(c)))
}

type weightedPolicy struct{ weights []float64 }

// Weighted picks a usable replica at random in proportion to its weight:
// weights[i] belongs to the i-th replica of the DSN (the host at Index
// i+1). A replica without a weight, or with weight 0, is chosen only when
// all candidates weigh 0; that includes the node listed first when it
// serves as a replica after a failover.
func Weighted(weights ...float64) Policy {
	return weightedPolicy{weights: append([]float64(nil), weights...)}
}

func (p weightedPolicy) weight(c Candidate) float64 {
	if i := c.Index - 1; i >= 0 && i < len(p.weights) {
		return p.weights[i]
	}
	return 0
}

func (p weightedPolicy) Choose(c []Candidate) int {
	total := 0.0
	for _, cand := range c {
		total += p.weight(cand)
	}
	if total <= 0 {
		return rand.IntN(len(c))
	}
	r := rand.Float64() * total
	for i, cand := range c {
		r -= p.weight(cand)
		if r < 0 {
			return i
		}
	}
	return len(c) - 1
}

type leastBusyPolicy struct{}

// LeastBusy picks the usable replica on which pgreplica holds the fewest
// connections, breaking ties at random.
func LeastBusy() Policy { return leastBusyPolicy{} }

func (leastBusyPolicy) Choose(c []Candidate) int {
	best, ties := 0, 1
	for i := 1; i < len(c); i++ {
		switch {
		case c[i].InFlight < c[best].InFlight:
			best, ties = i, 1
		case c[i].InFlight == c[best].InFlight:
			// Reservoir sampling keeps ties uniform without a second pass.
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}

// defaultLatencyWindow is latency_window's default: MongoDB's
// localThresholdMS, wide enough to take in every replica of one zone.
const defaultLatencyWindow = 15 * time.Millisecond

type nearestPolicy struct{ window time.Duration }

// Nearest picks among the usable replicas whose smoothed round-trip time
// is within window of the fastest one's, the one on which pgreplica holds
// the fewest connections, breaking ties at random. A replica not measured
// yet (RTT 0) counts as within the window. A negative window is 0: only
// the fastest replicas.
func Nearest(window time.Duration) Policy {
	return nearestPolicy{window: max(window, 0)}
}

func (p nearestPolicy) Choose(c []Candidate) int {
	fastest := time.Duration(-1)
	for _, cand := range c {
		if cand.RTT > 0 && (fastest < 0 || cand.RTT < fastest) {
			fastest = cand.RTT
		}
	}
	best, ties := -1, 0
	for i, cand := range c {
		if fastest >= 0 && cand.RTT > 0 && cand.RTT-fastest > p.window {
			continue // too far
		}
		switch {
		case best < 0 || cand.InFlight < c[best].InFlight:
			best, ties = i, 1
		case cand.InFlight == c[best].InFlight:
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best // the fastest is always within the window: never -1
}
