package pgreplica

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
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
		c.nodes = append(c.nodes, n)
	}
	c.topo.Store(&topology{primary: c.nodes[0], replicas: c.nodes[1:]})
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
		{"a replica lagging", func(c *Connector) { c.nodes[1].lagNanos.Store(int64(1500 * time.Millisecond)) }, 200, HealthHealthy, []string{StateHealthy, StateLagging, StateHealthy}},
		{"a replica frozen", func(c *Connector) { c.nodes[1].up.Store(false); c.nodes[1].frozen.Store(true) }, 200, HealthHealthy, []string{StateHealthy, StateFrozen, StateHealthy}},
		{"all replicas down", func(c *Connector) { c.nodes[1].up.Store(false); c.nodes[2].up.Store(false) }, 200, HealthDegraded, []string{StateHealthy, StateDown, StateDown}},
		{"primary down", func(c *Connector) { c.nodes[0].up.Store(false) }, 503, HealthDown, []string{StateDown, StateHealthy, StateHealthy}},
		{"no primary known", func(c *Connector) {
			c.topo.Store(&topology{replicas: c.nodes})
			c.nodes[0].up.Store(false)
		}, 503, HealthDown, []string{StateDown, StateHealthy, StateHealthy}},
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
			if rep.Degraded != (tc.wantStatus == HealthDegraded) && tc.wantStatus != HealthDown {
				t.Errorf("degraded = %v with status %q", rep.Degraded, rep.Status)
			}
			head, _ := serveHealth(t, HealthHandler(c), http.MethodHead)
			if head.StatusCode != tc.wantCode {
				t.Errorf("HEAD status = %d, want %d", head.StatusCode, tc.wantCode)
			}
		})
	}
}

func TestHealthReportFields(t *testing.T) {
	c := healthConnector(1)
	c.nodes[1].lagNanos.Store(int64(250 * time.Millisecond))
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
	if r["lag_seconds"] != 0.25 || r["lag_bytes"] != 8192.0 || r["probe_latency_seconds"] != 0.0015 || r["rtt_seconds"] != 0.002 {
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
