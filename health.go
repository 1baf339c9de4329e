package pgreplica

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"time"
)

// Values of HealthReport.Status.
const (
	HealthHealthy   = "healthy"    // the primary is up and a replica serves reads, or the DSN names no replica
	HealthDegraded  = "degraded"   // the primary is up but no replica named in the DSN is usable: reads go to the primary
	HealthDown      = "down"       // the primary does not answer: writes fail
	HealthNoPrimary = "no_primary" // no node answers as writable (every node that answers is a standby): writes fail with ErrNoPrimary
)

// HealthReport is the JSON document HealthHandler serves and that
// `pgreplica status --json` prints. Durations are seconds, as floats.
// Like Status it holds no credentials and no raw error messages.
type HealthReport struct {
	// Status is HealthHealthy, HealthDegraded, HealthDown or
	// HealthNoPrimary.
	Status    string       `json:"status"`
	Primary   string       `json:"primary"`
	PrimaryUp bool         `json:"primary_up"`
	Degraded  bool         `json:"degraded"`
	Nodes     []NodeHealth `json:"nodes"`
}

// NodeHealth is one node of a HealthReport; see NodeStatus for the fields.
type NodeHealth struct {
	Addr string `json:"addr"`
	// Source is where the node came from (NodeStatus.Source).
	Source Source `json:"source"`
	Role   string `json:"role"`
	State  string `json:"state"`
	// Cause is why the node is down, frozen or full; null otherwise.
	Cause      *Cause  `json:"cause"`
	LagSeconds float64 `json:"lag_seconds"`
	LagBytes   int64   `json:"lag_bytes"`
	// LastProbe is when the node last answered a probe, in UTC; null when
	// it never did.
	LastProbe           *time.Time        `json:"last_probe"`
	ProbeLatencySeconds float64           `json:"probe_latency_seconds"`
	RTTSeconds          float64           `json:"rtt_seconds"`
	InFlight            int64             `json:"in_flight"`
	Statements          uint64            `json:"statements"`
	Errors              uint64            `json:"errors"`
	Reroutes            map[string]uint64 `json:"reroutes"`
	HedgeDelaySeconds   float64           `json:"hedge_delay_seconds"`
	HedgesSent          uint64            `json:"hedges_sent"`
	HedgesWon           uint64            `json:"hedges_won"`
	Pool                PoolStatus        `json:"pool"`
}

// NewHealthReport turns a Status into the document HealthHandler serves.
func NewHealthReport(s Status) HealthReport {
	r := HealthReport{
		Status:    HealthHealthy,
		Primary:   s.Primary,
		PrimaryUp: s.PrimaryUp,
		Degraded:  s.Degraded,
		Nodes:     make([]NodeHealth, 0, len(s.Nodes)),
	}
	switch {
	case s.Primary == "":
		r.Status = HealthNoPrimary
	case !s.PrimaryUp:
		r.Status = HealthDown
	case s.Degraded:
		r.Status = HealthDegraded
	}
	for _, n := range s.Nodes {
		nh := NodeHealth{
			Addr:                n.Addr,
			Source:              n.Source,
			Role:                n.Role,
			State:               n.State,
			Cause:               n.Cause,
			LagSeconds:          n.Lag.Seconds(),
			LagBytes:            n.LagBytes,
			ProbeLatencySeconds: n.ProbeLatency.Seconds(),
			RTTSeconds:          n.RTT.Seconds(),
			InFlight:            n.InFlight,
			Statements:          n.Statements,
			Errors:              n.Errors,
			Reroutes:            n.Reroutes,
			HedgeDelaySeconds:   n.HedgeDelay.Seconds(),
			HedgesSent:          n.HedgesSent,
			HedgesWon:           n.HedgesWon,
			Pool:                n.Pool,
		}
		if !n.LastProbe.IsZero() {
			t := n.LastProbe.UTC()
			nh.LastProbe = &t
		}
		r.Nodes = append(r.Nodes, nh)
	}
	return r
}

// HTTPStatus is the status code HealthHandler answers with: 200 while the
// primary is up (healthy or degraded), 503 when it is down or there is no
// primary.
func (r HealthReport) HTTPStatus() int {
	if r.Status == HealthDown || r.Status == HealthNoPrimary {
		return http.StatusServiceUnavailable
	}
	return http.StatusOK
}

// HealthHandler returns a handler for load balancers and health checks. It
// answers GET and HEAD with c's Status as a JSON HealthReport:
//
//	200 {"status":"healthy",…}     the primary is up and replicas serve reads (or the DSN names none)
//	200 {"status":"degraded",…}    the primary is up, no replica is usable (Status.Degraded)
//	503 {"status":"down",…}        the primary is unreachable
//	503 {"status":"no_primary",…}  no node answers as writable: every node that answers is a standby
//
// The handler never talks to the database: it reads the snapshot the
// monitor keeps up to date, so it answers at once whatever state the
// servers are in and needs no timeout of its own; it is bounded by the
// request's context only in that it writes nothing once that is done. The
// document names nodes by host:port and holds no credentials and no raw
// error messages (a down node's cause is a SQLSTATE and a short reason), so
// it may be exposed where the DSN may not.
func HealthHandler(c *Connector) http.Handler {
	return healthHandler{c: c}
}

// HealthHandlerOf is HealthHandler for the Connector behind db, a *sql.DB
// opened with sql.Open("pgreplica", …) or sql.OpenDB; see ConnectorOf. It
// fails when db uses another driver or is closed.
func HealthHandlerOf(ctx context.Context, db *sql.DB) (http.Handler, error) {
	c, err := ConnectorOf(ctx, db)
	if err != nil {
		return nil, err
	}
	return HealthHandler(c), nil
}

type healthHandler struct{ c *Connector }

func (h healthHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Context().Err() != nil {
		return // the client is gone
	}
	rep := NewHealthReport(h.c.Status())
	body, err := json.Marshal(rep)
	if err != nil { // not reachable: the report has only plain fields
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(rep.HTTPStatus())
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
