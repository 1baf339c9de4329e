package pgreplica

import (
	"time"
)

// Node roles and states reported by Status.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"

	StateHealthy = "healthy" // answers probes; a replica within max_replica_lag
	StateLagging = "lagging" // a replica behind max_replica_lag, or on another timeline than the primary: no reads
	StateDown    = "down"    // refuses connections or broke them
	StateFrozen  = "frozen"  // accepts connections but does not answer
	StateFull    = "full"    // refuses new connections (53300): no new reads for now
	StateUnknown = "unknown" // not probed yet: routing trusts the DSN's hosts (and the first members discovered) until then; a member discovered later gets no reads until probed
)

// Status is a snapshot of the cluster behind a Connector.
type Status struct {
	// Primary is the address writes go to, or "" when no node is known to
	// be the writable primary: every node that answers is a standby (a
	// one-host DSN naming a standby, say), and writes fail with
	// ErrNoPrimary.
	Primary string `json:"primary"`
	// PrimaryUp says whether the primary answered its latest probe.
	PrimaryUp bool `json:"primary_up"`
	// Degraded is set when the DSN names replicas and none can serve reads,
	// so they go to the primary (or fail with ErrNoReplica when fallback is
	// off). A one-host DSN is never degraded: its primary serves every read
	// by design (ReasonPrimaryOnly).
	Degraded bool         `json:"degraded"`
	Nodes    []NodeStatus `json:"nodes"`
}

// NodeStatus is one node's part of a Status. It never holds credentials
// or raw error messages.
type NodeStatus struct {
	Addr string `json:"addr"`
	// Source says where the node came from: SourceDSN (a host of the DSN),
	// or the discovery that reported it (SourceDNS, SourcePatroni,
	// SourceCustom, or what a Discoverer set).
	Source Source `json:"source"`
	// Role is RolePrimary for the node writes go to and for any other node
	// that answers as writable, RoleReplica for a standby.
	Role  string `json:"role"`
	State string `json:"state"`
	// Cause says why a node is down, frozen or full: the SQLSTATE the
	// server refused with, if any, and a short reason (authentication
	// failed, database does not exist, connection refused, timeout, TLS
	// error…). It is nil in the other states.
	Cause *Cause `json:"cause"`
	// LagBytes and Lag measure a replica against the primary. Lag is how
	// stale a read it serves may be: how long ago the primary may first
	// have had a commit the replica is not known to have, the age of the
	// probes that found it out included (the quantity max_replica_lag
	// bounds; see docs/guarantees.md). A replica is lagging exactly when
	// Lag is over max_replica_lag.
	LagBytes int64         `json:"lag_bytes"`
	Lag      time.Duration `json:"lag_ns"`
	// LastProbe is when the node last answered a probe (zero: never).
	LastProbe    time.Time     `json:"last_probe"`
	ProbeLatency time.Duration `json:"probe_latency_ns"`
	// RTT is the smoothed round trip of its probes (an exponentially
	// weighted moving average), which replica_policy=nearest compares; 0
	// until a probe answered. It restarts from the next probe when the
	// node comes back from down.
	RTT time.Duration `json:"rtt_ns"`
	// InFlight is how many connections pgreplica holds on it now;
	// Statements and Errors count every statement routed to it.
	InFlight   int64  `json:"in_flight"`
	Statements uint64 `json:"statements"`
	Errors     uint64 `json:"errors"`
	// Reroutes counts reads sent elsewhere because of this node, by reason:
	// down, lag, read_only_error, retry, standby_error (it refused a read
	// only the primary can serve), full (it refused a new connection).
	Reroutes map[string]uint64 `json:"reroutes"`
	// HedgeDelay is how long a read on this node waits before it is hedged
	// (0: hedging is off); HedgesSent counts hedges sent to this node and
	// HedgesWon those it answered first.
	HedgeDelay time.Duration `json:"hedge_delay_ns"`
	HedgesSent uint64        `json:"hedges_sent"`
	HedgesWon  uint64        `json:"hedges_won"`
	Pool       PoolStatus    `json:"pool"`
}

// PoolStatus are a node pool's figures, from pgxpool.
type PoolStatus struct {
	Max      int32 `json:"max"`
	Total    int32 `json:"total"`
	Idle     int32 `json:"idle"`
	Acquired int32 `json:"acquired"`
	// AcquireCount and EmptyAcquireCount count acquires, and those that
	// had to wait for a connection.
	AcquireCount      int64 `json:"acquire_count"`
	EmptyAcquireCount int64 `json:"empty_acquire_count"`
}

// Status returns a snapshot of every member: the DSN's hosts in its order,
// then those discovery added, in the order they joined.
func (c *Connector) Status() Status {
	topo := c.topo.Load()
	var s Status
	usable := false
	for _, n := range c.allNodes() {
		ns := n.status(n == topo.primary, c.cfg.MaxReplicaLag)
		if n == topo.primary {
			s.Primary, s.PrimaryUp = n.addr, n.up.Load()
		} else if (ns.State == StateHealthy || ns.State == StateUnknown && n.up.Load()) && ns.Role == RoleReplica {
			usable = true
		}
		s.Nodes = append(s.Nodes, ns)
	}
	s.Degraded = !usable && !(c.primaryOnly() && topo.primary != nil)
	return s
}

// setCause records why the node failed (nil: it answered).
func (n *node) setCause(err error) {
	if err == nil {
		if n.cause.Load() != nil {
			n.cause.Store(nil)
		}
		return
	}
	c := errorCause(err)
	n.cause.Store(&c)
}

func (n *node) status(isPrimary bool, maxLag time.Duration) NodeStatus {
	ns := NodeStatus{
		Addr:         n.addr,
		Source:       n.source,
		Role:         RoleReplica,
		LagBytes:     n.lagBytes.Load(),
		Lag:          time.Duration(n.lagNanos.Load()),
		ProbeLatency: time.Duration(n.probeNanos.Load()),
		RTT:          time.Duration(n.rttNanos.Load()),
		InFlight:     n.inFlight.Load(),
		Statements:   n.statements.Load(),
		Errors:       n.errors.Load(),
		Reroutes:     make(map[string]uint64, numRerouteReasons),
		HedgeDelay:   time.Duration(n.hedgeDelay.Load()),
		HedgesSent:   n.hedgesSent.Load(),
		HedgesWon:    n.hedgesWon.Load(),
	}
	if isPrimary || !n.standby.Load() {
		ns.Role = RolePrimary
		ns.LagBytes, ns.Lag = 0, 0
	} else if st := n.staleness(); st != noLagLimit && !n.offTimeline.Load() {
		ns.Lag = st // what routing compares with max_replica_lag
	}
	if t := n.probedAt.Load(); t != 0 {
		ns.LastProbe = time.Unix(0, t)
	}
	cause := n.cause.Load()
	// Full while its full mark lasts, and while no probe got through since
	// one was refused with 53300: a slow probe round can outlast the mark.
	full := n.serverFull() || cause != nil && cause.SQLState == "53300"
	switch {
	case n.up.Load() && full:
		ns.State = StateFull
	case n.up.Load() && n.probedAt.Load() == 0:
		ns.State = StateUnknown
	case !n.up.Load() && n.probedAt.Load() == 0 && cause == nil:
		ns.State = StateUnknown // a discovered member not probed yet: no reads
	case !n.up.Load() && n.frozen.Load():
		ns.State = StateFrozen
	case !n.up.Load():
		ns.State = StateDown
	case ns.Role == RoleReplica && (n.offTimeline.Load() || maxLag > 0 && !n.withinLag(maxLag)):
		// Lagging means what routing sees: its reads are not within the bound.
		ns.State = StateLagging
	default:
		ns.State = StateHealthy
	}
	switch ns.State {
	case StateFull:
		ns.Cause = &Cause{SQLState: "53300", Reason: sqlStateReasons["53300"]}
	case StateDown, StateFrozen:
		if cause != nil {
			cc := *cause
			ns.Cause = &cc
		} else if ns.State == StateFrozen {
			ns.Cause = &Cause{Reason: "timeout"}
		}
	}
	for r := range numRerouteReasons {
		ns.Reroutes[r.String()] = n.reroutes[r].Load()
	}
	if n.pool != nil {
		st := n.pool.Stat()
		ns.Pool = PoolStatus{
			Max:               n.limit.Load(), // the role's (rolesettings.go)
			Total:             st.TotalConns(),
			Idle:              st.IdleConns(),
			Acquired:          st.AcquiredConns(),
			AcquireCount:      st.AcquireCount(),
			EmptyAcquireCount: st.EmptyAcquireCount(),
		}
	}
	return ns
}
