// Package pgreplicaprom exports the status of a pgreplica Connector as
// Prometheus metrics. It lives in its own package so that the driver does
// not depend on client_golang.
//
//	db, _ := sql.Open("pgreplica", dsn)
//	c, _ := pgreplica.ConnectorOf(ctx, db)
//	prometheus.MustRegister(pgreplicaprom.NewCollector(c))
//
// Every scrape takes one Connector.Status snapshot, which costs no database
// round trip: the figures are those of the Connector's monitor and of the
// traffic it routed. Per-node metrics carry the label node="host:port";
// the exported names are:
//
//	pgreplica_primary_up                     gauge    the primary answered its latest probe
//	pgreplica_degraded                       gauge    no replica is usable: reads go to the primary
//	pgreplica_node_up                        gauge    {node} the node answers probes (healthy, lagging or full)
//	pgreplica_node_is_primary                gauge    {node} the node is the writable primary
//	pgreplica_node_state                     gauge    {node,state} 1 for the node's state, 0 for the others
//	pgreplica_replication_lag_seconds        gauge    {node} replicas only
//	pgreplica_replication_lag_bytes          gauge    {node} replicas only
//	pgreplica_probe_latency_seconds          gauge    {node} of the latest answered probe
//	pgreplica_rtt_seconds                    gauge    {node} smoothed round trip of the probes (replica_policy=nearest)
//	pgreplica_hedge_delay_seconds            gauge    {node} how long a read on it waits before it is hedged (0: off)
//	pgreplica_hedges_sent_total              counter  {node} hedged reads sent to it
//	pgreplica_hedges_won_total               counter  {node} of those, the ones it answered first
//	pgreplica_last_probe_timestamp_seconds   gauge    {node} once a probe answered
//	pgreplica_in_flight_connections          gauge    {node} connections pgreplica holds now
//	pgreplica_statements_total               counter  {node} statements routed to the node
//	pgreplica_statement_errors_total         counter  {node} of those, the ones that failed
//	pgreplica_reroutes_total                 counter  {node,reason} reads sent elsewhere because of the node
//	pgreplica_pool_max_connections           gauge    {node}
//	pgreplica_pool_connections               gauge    {node} open connections of the pool
//	pgreplica_pool_idle_connections          gauge    {node}
//	pgreplica_pool_acquired_connections      gauge    {node}
//	pgreplica_pool_acquires_total            counter  {node}
//	pgreplica_pool_empty_acquires_total      counter  {node} acquires that had to wait for a connection
//
// Reroute reasons are down, lag, read_only_error, retry, standby_error and
// full (see pgreplica.NodeStatus.Reroutes). Nothing exported holds
// credentials.
package pgreplicaprom

import (
	"slices"

	"github.com/pgreplica/pgreplica"
	prom "github.com/prometheus/client_golang/prometheus"
)

// Option configures NewCollector.
type Option func(*options)

type options struct {
	constLabels prom.Labels
}

// WithConstLabels adds labels with fixed values to every metric, such as
// cluster="orders", to tell apart the collectors of several Connectors
// registered in one registry.
func WithConstLabels(l prom.Labels) Option {
	return func(o *options) {
		if o.constLabels == nil {
			o.constLabels = prom.Labels{}
		}
		for k, v := range l {
			o.constLabels[k] = v
		}
	}
}

// states are the values of the state label of pgreplica_node_state.
var states = []string{pgreplica.StateHealthy, pgreplica.StateLagging, pgreplica.StateFull, pgreplica.StateDown, pgreplica.StateFrozen, pgreplica.StateUnknown}

type collector struct {
	c *pgreplica.Connector

	primaryUp, degraded *prom.Desc

	up, isPrimary, state         *prom.Desc
	lagSeconds, lagBytes         *prom.Desc
	probeLatency, lastProbe      *prom.Desc
	rtt                          *prom.Desc
	hedgeDelay, hedgesSent       *prom.Desc
	hedgesWon                    *prom.Desc
	inFlight                     *prom.Desc
	statements, errors, reroutes *prom.Desc

	poolMax, poolTotal, poolIdle, poolAcquired *prom.Desc
	poolAcquires, poolEmptyAcquires            *prom.Desc
}

// NewCollector returns a collector of c's Status. Register it once per
// Connector; it stays valid after the Connector is closed (the figures then
// stop changing).
func NewCollector(c *pgreplica.Connector, opts ...Option) prom.Collector {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	desc := func(name, help string, labels ...string) *prom.Desc {
		return prom.NewDesc("pgreplica_"+name, help, labels, o.constLabels)
	}
	node := []string{"node"}
	return &collector{
		c: c,

		primaryUp: desc("primary_up", "Whether the primary answered its latest probe (1) or not (0)."),
		degraded:  desc("degraded", "Whether no replica can serve reads, so that they go to the primary (1) or not (0)."),

		up:           desc("node_up", "Whether the node answers probes (1: healthy, lagging or full) or not (0: down or frozen).", node...),
		isPrimary:    desc("node_is_primary", "Whether the node is the writable primary (1) or a replica (0).", node...),
		state:        desc("node_state", "The node's state: 1 for the current one (healthy, lagging, down, frozen), 0 for the others.", "node", "state"),
		lagSeconds:   desc("replication_lag_seconds", "How long ago the primary had WAL that the replica has not replayed yet.", node...),
		lagBytes:     desc("replication_lag_bytes", "How many bytes of WAL the replica is behind the primary's flush position.", node...),
		probeLatency: desc("probe_latency_seconds", "Round trip of the node's latest answered probe.", node...),
		rtt:          desc("rtt_seconds", "Smoothed round trip of the node's probes (an exponentially weighted moving average), which replica_policy=nearest compares.", node...),
		hedgeDelay:   desc("hedge_delay_seconds", "How long a read on the node waits for a first response before it is hedged to another node (0: hedging off).", node...),
		hedgesSent:   desc("hedges_sent_total", "Hedged reads sent to the node because the node a read went to first was slow to answer.", node...),
		hedgesWon:    desc("hedges_won_total", "Hedged reads sent to the node that it answered first.", node...),
		lastProbe:    desc("last_probe_timestamp_seconds", "When the node last answered a probe, in seconds since the Unix epoch.", node...),
		inFlight:     desc("in_flight_connections", "Connections to the node that pgreplica holds for statements right now.", node...),
		statements:   desc("statements_total", "Statements routed to the node.", node...),
		errors:       desc("statement_errors_total", "Statements routed to the node that returned an error.", node...),
		reroutes:     desc("reroutes_total", "Reads sent to another node because of this one, by reason (down, lag, read_only_error, retry, standby_error, full).", "node", "reason"),

		poolMax:           desc("pool_max_connections", "Maximum size of the node's connection pool.", node...),
		poolTotal:         desc("pool_connections", "Connections open in the node's pool, idle, acquired or being opened.", node...),
		poolIdle:          desc("pool_idle_connections", "Idle connections in the node's pool.", node...),
		poolAcquired:      desc("pool_acquired_connections", "Connections of the node's pool in use.", node...),
		poolAcquires:      desc("pool_acquires_total", "Connections acquired from the node's pool.", node...),
		poolEmptyAcquires: desc("pool_empty_acquires_total", "Acquires from the node's pool that had to wait because no idle connection was ready.", node...),
	}
}

func (c *collector) descs() []*prom.Desc {
	return []*prom.Desc{
		c.primaryUp, c.degraded,
		c.up, c.isPrimary, c.state, c.lagSeconds, c.lagBytes, c.probeLatency, c.rtt, c.lastProbe,
		c.inFlight, c.statements, c.errors, c.reroutes,
		c.hedgeDelay, c.hedgesSent, c.hedgesWon,
		c.poolMax, c.poolTotal, c.poolIdle, c.poolAcquired, c.poolAcquires, c.poolEmptyAcquires,
	}
}

// Describe sends the descriptors of every metric the collector exports.
func (c *collector) Describe(ch chan<- *prom.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

// Collect takes one Status snapshot and sends its metrics.
func (c *collector) Collect(ch chan<- prom.Metric) {
	s := c.c.Status()
	gauge := func(d *prom.Desc, v float64, labels ...string) {
		ch <- prom.MustNewConstMetric(d, prom.GaugeValue, v, labels...)
	}
	counter := func(d *prom.Desc, v float64, labels ...string) {
		ch <- prom.MustNewConstMetric(d, prom.CounterValue, v, labels...)
	}
	gauge(c.primaryUp, b2f(s.PrimaryUp))
	gauge(c.degraded, b2f(s.Degraded))
	for _, n := range s.Nodes {
		a := n.Addr
		gauge(c.up, b2f(n.State == pgreplica.StateHealthy || n.State == pgreplica.StateLagging || n.State == pgreplica.StateFull), a)
		gauge(c.isPrimary, b2f(n.Role == pgreplica.RolePrimary), a)
		for _, st := range states {
			gauge(c.state, b2f(n.State == st), a, st)
		}
		if n.Role == pgreplica.RoleReplica {
			gauge(c.lagSeconds, n.Lag.Seconds(), a)
			gauge(c.lagBytes, float64(n.LagBytes), a)
		}
		if !n.LastProbe.IsZero() {
			gauge(c.probeLatency, n.ProbeLatency.Seconds(), a)
			gauge(c.rtt, n.RTT.Seconds(), a)
			gauge(c.lastProbe, float64(n.LastProbe.UnixNano())/1e9, a)
		}
		gauge(c.inFlight, float64(n.InFlight), a)
		gauge(c.hedgeDelay, n.HedgeDelay.Seconds(), a)
		counter(c.hedgesSent, float64(n.HedgesSent), a)
		counter(c.hedgesWon, float64(n.HedgesWon), a)
		counter(c.statements, float64(n.Statements), a)
		counter(c.errors, float64(n.Errors), a)
		reasons := make([]string, 0, len(n.Reroutes))
		for r := range n.Reroutes {
			reasons = append(reasons, r)
		}
		slices.Sort(reasons)
		for _, r := range reasons {
			counter(c.reroutes, float64(n.Reroutes[r]), a, r)
		}
		gauge(c.poolMax, float64(n.Pool.Max), a)
		gauge(c.poolTotal, float64(n.Pool.Total), a)
		gauge(c.poolIdle, float64(n.Pool.Idle), a)
		gauge(c.poolAcquired, float64(n.Pool.Acquired), a)
		counter(c.poolAcquires, float64(n.Pool.AcquireCount), a)
		counter(c.poolEmptyAcquires, float64(n.Pool.EmptyAcquireCount), a)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
