package pgreplica

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

// healthConnector is a Connector with nodes but no pools or monitor: only
// what Status reads. Node 0 is the primary.
func healthConnector(replicas int) *Connector {
	c := &Connector{cfg: Config{MaxReplicaLag: time.Second}}
	for i := 0; i <= replicas; i++ {
		n := &node{index: i, addr: fmt.Sprintf("10.0.0.%d:5432", i+1)}
		n.up.Store(true)
		n.standby.Store(i != 0)
		n.probedAt.Store(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
		n.probeNanos.Store(int64(1500 * time.Microsecond))
		n.rttNanos.Store(int64(2 * time.Millisecond))
		n.setBehind(-time.Hour)
		c.nodes = append(c.nodes, n)
	}
	c.topo.Store(&topology{primary: c.nodes[0], replicas: c.nodes[1:], nodes: c.nodes})
	return c
}

func serveHealth(t *testing.T, h http.Handler, method string) (*http.Response, HealthReport) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/healthz", nil))
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	var rep HealthReport
	if method == http.MethodGet {
		if err := json.Unmarshal(body, &rep); err != nil {
			t.Fatalf("%s: body is not a HealthReport: %v\n%s", method, err, body)
		}
	}
	return res, rep
}

func TestHealthHandlerStates(t *testing.T) {
	for _, tc := range []struct {
		name       string
		change     func(c *Connector)
		wantCode   int
		wantStatus string
		wantStates []string
	}{
		{"all healthy", func(*Connector) {}, 200, HealthHealthy, []string{StateHealthy, StateHealthy, StateHealthy}},
		{"a replica down", func(c *Connector) { c.nodes[2].up.Store(false) }, 200, HealthHealthy, []string{StateHealthy, StateHealthy, StateDown}},
		{"a replica lagging", func(c *Connector) { c.nodes[1].setBehind(1500 * time.Millisecond) }, 200, HealthHealthy, []string{StateHealthy, StateLagging, StateHealthy}},
		{"a replica frozen", func(c *Connector) { c.nodes[1].up.Store(false); c.nodes[1].frozen.Store(true) }, 200, HealthHealthy, []string{StateHealthy, StateFrozen, StateHealthy}},
		{"all replicas down", func(c *Connector) { c.nodes[1].up.Store(false); c.nodes[2].up.Store(false) }, 200, HealthDegraded, []string{StateHealthy, StateDown, StateDown}},
		{"primary down", func(c *Connector) { c.nodes[0].up.Store(false) }, 503, HealthDown, []string{StateDown, StateHealthy, StateHealthy}},
		{"no primary known", func(c *Connector) {
			c.topo.Store(&topology{replicas: c.nodes, nodes: c.nodes})
			c.nodes[0].up.Store(false)
		}, 503, HealthNoPrimary, []string{StateDown, StateHealthy, StateHealthy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := healthConnector(2)
			tc.change(c)
			res, rep := serveHealth(t, HealthHandler(c), http.MethodGet)
			if res.StatusCode != tc.wantCode {
				t.Errorf("HTTP status = %d, want %d", res.StatusCode, tc.wantCode)
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if rep.Status != tc.wantStatus {
				t.Errorf("status = %q, want %q", rep.Status, tc.wantStatus)
			}
			if len(rep.Nodes) != len(tc.wantStates) {
				t.Fatalf("%d nodes, want %d", len(rep.Nodes), len(tc.wantStates))
			}
			for i, want := range tc.wantStates {
				if got := rep.Nodes[i].State; got != want {
					t.Errorf("node %d state = %q, want %q", i, got, want)
				}
			}
			if rep.Degraded != (tc.wantStatus == HealthDegraded) && tc.wantStatus != HealthDown && tc.wantStatus != HealthNoPrimary {
				t.Errorf("degraded = %v with status %q", rep.Degraded, rep.Status)
			}
			head, _ := serveHealth(t, HealthHandler(c), http.MethodHead)
			if head.StatusCode != tc.wantCode {
				t.Errorf("HEAD status = %d, want %d", head.StatusCode, tc.wantCode)
			}
		})
	}
}

// TestHealthOneNode: a one-host DSN is a single-node deployment. Its
// primary serving every read is the design, not a fallback: healthy, 200.
// When that one node answers as a standby there is no primary: 503, and
// the node is shown as the replica it is.
func TestHealthOneNode(t *testing.T) {
	c := healthConnector(0)
	s := c.Status()
	if s.Degraded || s.Primary != c.nodes[0].addr || !s.PrimaryUp {
		t.Errorf("one primary: status %+v, want not degraded, primary up", s)
	}
	res, rep := serveHealth(t, HealthHandler(c), http.MethodGet)
	if res.StatusCode != 200 || rep.Status != HealthHealthy || rep.Degraded {
		t.Errorf("one primary: %d %+v, want 200 healthy", res.StatusCode, rep)
	}
	if c.fallbackReason() != ReasonPrimaryOnly || ReasonPrimaryOnly.String() != "primary_only" {
		t.Errorf("one node: a read's reason is %s, want primary_only", c.fallbackReason())
	}

	// The monitor found it is a standby and no node writable: no primary.
	c.nodes[0].standby.Store(true)
	c.topo.Store(&topology{replicas: c.nodes, nodes: c.nodes})
	s = c.Status()
	if s.Primary != "" || s.PrimaryUp || s.Degraded || s.Nodes[0].Role != RoleReplica {
		t.Errorf("one standby: status %+v, want no primary, the node a replica", s)
	}
	res, rep = serveHealth(t, HealthHandler(c), http.MethodGet)
	if res.StatusCode != 503 || rep.Status != HealthNoPrimary {
		t.Errorf("one standby: %d %q, want 503 no_primary", res.StatusCode, rep.Status)
	}
	if _, err := c.primary(); !errors.Is(err, ErrNoPrimary) {
		t.Errorf("one standby: writes get %v, want ErrNoPrimary", err)
	}

	two := healthConnector(1)
	two.nodes[1].up.Store(false)
	if two.fallbackReason() != ReasonFallback || !two.Status().Degraded {
		t.Errorf("a named replica down: reason %s, degraded %v; want fallback, degraded", two.fallbackReason(), two.Status().Degraded)
	}
}

// TestStatusCause: a down node's cause is a SQLSTATE and a short reason,
// shown only while it is down, frozen or full, and never the error's text.
func TestStatusCause(t *testing.T) {
	c := healthConnector(2)
	secret := &pgconn.PgError{Code: "28P01", Message: `password authentication failed for user "app" (Secr3t)`}
	c.nodes[1].setCause(fmt.Errorf("connect to postgres://app:Secr3t@h/db: %w", secret))
	c.nodes[1].up.Store(false)
	c.nodes[2].up.Store(false)
	c.nodes[2].frozen.Store(true)
	c.nodes[0].setCause(errors.New("stale")) // up: not shown
	s := c.Status()
	if got := s.Nodes[1].Cause; got == nil || *got != (Cause{SQLState: "28P01", Reason: "authentication failed"}) {
		t.Errorf("down node's cause = %+v", got)
	}
	if got := s.Nodes[2].Cause; got == nil || got.Reason != "timeout" {
		t.Errorf("frozen node's cause = %+v, want timeout", got)
	}
	if s.Nodes[0].Cause != nil {
		t.Errorf("a healthy node has a cause: %+v", s.Nodes[0].Cause)
	}
	body, _ := json.Marshal(NewHealthReport(s))
	if strings.Contains(string(body), "Secr3t") || !strings.Contains(string(body), `"cause":{"sqlstate":"28P01","reason":"authentication failed"}`) {
		t.Errorf("health JSON: %s", body)
	}
	c.nodes[1].setCause(nil)
	if c.Status().Nodes[1].Cause != nil {
		t.Error("cause kept after the node answered")
	}
	// Refused with 53300 and never let in since: full, even once the full
	// mark has expired (a probe round can outlast it).
	c.nodes[1].up.Store(true)
	c.nodes[1].setCause(&pgconn.PgError{Code: "53300"})
	if ns := c.Status().Nodes[1]; ns.State != StateFull || ns.Cause == nil || ns.Cause.String() != "too many connections (53300)" {
		t.Errorf("refused with 53300: state %s, cause %+v; want full, too many connections", ns.State, ns.Cause)
	}
}

func TestErrorCause(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&pgconn.PgError{Code: "28000"}, "authentication failed (28000)"},
		{&pgconn.PgError{Code: "3D000"}, "database does not exist (3D000)"},
		{&pgconn.PgError{Code: "53300"}, "too many connections (53300)"},
		{&pgconn.PgError{Code: "57P03"}, "server starting up or shutting down (57P03)"},
		{&pgconn.PgError{Code: "XX000"}, "server error (XX000)"},
		{fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), "connection refused"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{errProbeTimeout, "timeout"},
		{fmt.Errorf("tls error: %w", errors.New("server refused TLS connection")), "TLS error"},
		{&tls.CertificateVerificationError{Err: errors.New("bad")}, "TLS error"},
		{&net.DNSError{Err: "no such host", Name: "nope", IsNotFound: true}, "host not found"},
		{io.ErrUnexpectedEOF, "connection closed by server"},
		{&pgconn.ConnectError{}, "error"}, // a wrapper of nothing: its Error() would panic
	} {
		if got := errorClass(tc.err); got != tc.want {
			t.Errorf("errorClass(%T) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestHealthReportFields(t *testing.T) {
	c := healthConnector(1)
	c.nodes[1].setBehind(250 * time.Millisecond) // Lag counts on from here
	c.nodes[1].lagBytes.Store(8192)
	c.nodes[1].statements.Store(7)
	c.nodes[1].errors.Store(2)
	c.nodes[1].reroutes[rerouteDown].Store(3)
	c.nodes[0].probedAt.Store(0) // never answered

	rec := httptest.NewRecorder()
	HealthHandler(c).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	body := rec.Body.String()
	var raw struct {
		Nodes []map[string]any `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	r := raw.Nodes[1]
	if lag, _ := r["lag_seconds"].(float64); lag < 0.25 || lag > 0.25+time.Minute.Seconds() || r["lag_bytes"] != 8192.0 || r["probe_latency_seconds"] != 0.0015 || r["rtt_seconds"] != 0.002 {
		t.Errorf("replica durations/bytes wrong: %s", body)
	}
	if r["statements"] != 7.0 || r["errors"] != 2.0 {
		t.Errorf("replica counters wrong: %s", body)
	}
	if rr, _ := r["reroutes"].(map[string]any); rr["down"] != 3.0 || len(rr) != int(numRerouteReasons) {
		t.Errorf("reroutes = %v, want down=3 among %d reasons", r["reroutes"], numRerouteReasons)
	}
	if r["last_probe"] != "2025-01-02T03:04:05Z" {
		t.Errorf("last_probe = %v", r["last_probe"])
	}
	if raw.Nodes[0]["last_probe"] != nil {
		t.Errorf("a node never probed has last_probe %v, want null", raw.Nodes[0]["last_probe"])
	}
	for _, ns := range []string{"lag_ns", "probe_latency_ns", "rtt_ns"} {
		if strings.Contains(body, ns) {
			t.Errorf("the health document carries %s; it should use seconds: %s", ns, body)
		}
	}
	if got := rec.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q", got)
	}
}

func TestHealthHandlerRejectsOtherMethods(t *testing.T) {
	rec := httptest.NewRecorder()
	HealthHandler(healthConnector(1)).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}

func TestHealthHandlerWritesNothingForAGoneClient(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	HealthHandler(healthConnector(1)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx))
	if rec.Body.Len() != 0 {
		t.Errorf("wrote %q for a cancelled request", rec.Body.String())
	}
}

func TestHealthHandlerOf(t *testing.T) {
	const password = "s3cret-Pa55:w@rd"
	db, err := sql.Open(DriverName, "postgres://app:"+strings.NewReplacer(":", "%3A", "@", "%40").Replace(password)+
		"@127.0.0.1:1,127.0.0.1:2/db?sslmode=disable&monitor_interval=10s&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	h, err := HealthHandlerOf(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	var rep HealthReport
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Nodes) != 2 || rep.Nodes[0].Addr != "127.0.0.1:1" || rep.Nodes[1].Addr != "127.0.0.1:2" {
		t.Errorf("nodes = %+v", rep.Nodes)
	}
	if strings.Contains(rec.Body.String(), "Pa55") {
		t.Errorf("the password leaks into the health document: %s", rec.Body.String())
	}

	other, _, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := HealthHandlerOf(context.Background(), other); err == nil || !strings.Contains(err.Error(), "pgreplica driver") {
		t.Errorf("HealthHandlerOf on a *sql.DB of another driver: err = %v", err)
	}
}

// A frozen node keeps the cause that took it out: reads whose dials were
// abandoned when it was marked down, or whose handshakes abortConns cut,
// fail with errors of their own, and these used to replace the probe's
// timeout ("frozen (error)", seen under a concurrent CI pair). The failure
// that takes an up node out still names its cause.
func TestFrozenNodeKeepsItsCause(t *testing.T) {
	fc := newFakeCluster(t, 2, defaultCfg())
	c := fc.c
	m := &monitor{c: c, interval: time.Second, lagging: make([]bool, 3), noControl: make([]bool, 3)}
	ok := probeResult{standby: true, lsn: 100, flushLSN: 100, timeline: 1, replayedTLI: 1, started: monoNow()}
	primary := probeResult{lsn: 100, flushLSN: 100, timeline: 1, started: monoNow()}
	m.apply(c.nodes, []probeResult{primary, {err: errProbeTimeout}, ok})
	frozen, other := c.nodes[1], c.nodes[2]
	c.connectFailed(frozen, fmt.Errorf("failed to connect: %w", errNodeDown))
	c.connectFailed(frozen, fmt.Errorf("failed to receive message: %w", net.ErrClosed))
	if ns := c.Status().Nodes[1]; ns.State != StateFrozen || ns.Cause == nil || ns.Cause.Reason != "timeout" {
		t.Errorf("frozen node after two echoes of its outage: state %s, cause %+v; want frozen, timeout", ns.State, ns.Cause)
	}
	c.connectFailed(other, fmt.Errorf("dial: %w", syscall.ECONNREFUSED))
	if ns := c.Status().Nodes[2]; ns.State != StateDown || ns.Cause == nil || ns.Cause.Reason != "connection refused" {
		t.Errorf("an up node whose connection was refused: state %s, cause %+v; want down, connection refused", ns.State, ns.Cause)
	}
}
