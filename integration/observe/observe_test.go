// Package observe checks what pgreplica shows about a real cluster in each
// state: Connector.Status, the HealthHandler's JSON and HTTP status, the
// `pgreplica status` command, the Prometheus metrics and the logs. The
// package owns its cluster, so tests stop and lag its nodes; each restores
// them in its Cleanup. Tests run in source order, file by file: the one
// that stops the primary is the last of the last file.
package observe

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
	"github.com/pgreplica/pgreplica/pgreplicaprom"
)

// password is the application role's password: distinctive, and with the
// characters that need escaping in a URL. No output may show it.
const password = "obs3rve-S3cr3t:p@ss/w%rd"

// dsnParams make state changes show quickly.
var dsnParams = []string{"monitor_interval=100ms", "max_replica_lag=500ms"}

var cliDir string // holds the pgreplica binary once built

func TestMain(m *testing.M) {
	code := testcluster.Run(m, sandbox.Options{Password: password})
	if cliDir != "" {
		os.RemoveAll(cliDir)
	}
	os.Exit(code)
}

// observed is a pgreplica *sql.DB on the cluster with everything that
// reports on it.
type observed struct {
	db   *sql.DB
	c    *pgreplica.Connector
	logs *testcluster.SyncBuffer // JSON lines, every level
	reg  *prom.Registry
}

func open(t *testing.T) *observed {
	t.Helper()
	testcluster.NoLeaks(t)
	cfg, err := pgreplica.ParseConfig(testcluster.DSN(dsnParams...))
	if err != nil {
		t.Fatal(err)
	}
	o := &observed{logs: &testcluster.SyncBuffer{}, reg: prom.NewPedanticRegistry()}
	cfg.Logger = slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.c, err = pgreplica.NewConnector(*cfg); err != nil {
		t.Fatal(err)
	}
	o.db = sql.OpenDB(o.c)
	t.Cleanup(func() {
		o.db.Close()
		noSecret(t, "the logs", o.logs.String())
	})
	o.reg.MustRegister(pgreplicaprom.NewCollector(o.c))
	return o
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// noSecret fails t when text shows the password, whole, escaped or in part.
func noSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, s := range []string{password, url.QueryEscape(password), url.PathEscape(password),
		url.UserPassword("u", password).String()[2:], "S3cr3t", "obs3rve"} {
		if strings.Contains(text, s) {
			t.Errorf("%s shows the password (%q):\n%s", what, s, text)
		}
	}
}

// waitStates waits until every node answered a probe (or is down) and the
// nodes' states are want, in DSN order.
func (o *observed) waitStates(t *testing.T, want ...string) pgreplica.Status {
	t.Helper()
	var s pgreplica.Status
	testcluster.WaitUntil(t, 30*time.Second, fmt.Sprintf("the nodes are %v", want), func() bool {
		s = o.c.Status()
		for i, n := range s.Nodes {
			if n.State != want[i] || n.LastProbe.IsZero() && n.State != pgreplica.StateDown {
				return false
			}
		}
		return true
	})
	return s
}

// health serves the HealthHandler once; raw is the body as generic JSON.
func (o *observed) health(t *testing.T) (code int, rep pgreplica.HealthReport, raw map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	pgreplica.HealthHandler(o.c).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	body := rec.Body.Bytes()
	noSecret(t, "the health JSON", string(body))
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("health body: %v\n%s", err, body)
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	return rec.Code, rep, raw
}

// metrics returns the Prometheus exposition text.
func (o *observed) metrics(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	text := rec.Body.String()
	noSecret(t, "the metrics", text)
	return text
}

func wantMetric(t *testing.T, text, sample string) {
	t.Helper()
	if !strings.Contains(text, "\n"+sample+"\n") {
		t.Errorf("the metrics lack %q", sample)
	}
}

// cli runs the pgreplica command, built once, with the cluster's DSN in
// $PGREPLICA_DSN (so it is on no command line).
func cli(t *testing.T, args ...string) (code int, stdout string) {
	t.Helper()
	return cliDSN(t, testcluster.DSN(dsnParams...), args...)
}

// cliDSN is cli with dsn in $PGREPLICA_DSN.
func cliDSN(t *testing.T, dsn string, args ...string) (code int, stdout string) {
	t.Helper()
	bin := filepath.Join(cliDir, "pgreplica")
	if cliDir == "" {
		goBin, err := exec.LookPath("go")
		if err != nil {
			t.Fatalf("the go command is needed to build cmd/pgreplica: %v", err)
		}
		dir, err := os.MkdirTemp("", "pgreplica-cli-")
		if err != nil {
			t.Fatal(err)
		}
		cliDir, bin = dir, filepath.Join(dir, "pgreplica")
		if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/pgreplica/pgreplica/cmd/pgreplica").CombinedOutput(); err != nil {
			t.Fatalf("go build cmd/pgreplica: %v\n%s", err, out)
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "PGREPLICA_DSN="+dsn)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	noSecret(t, "pgreplica "+strings.Join(args, " "), out.String()+errb.String())
	if errb.Len() > 0 {
		t.Errorf("pgreplica %s wrote to stderr: %s", strings.Join(args, " "), errb.String())
	}
	return code, out.String()
}

// cliStates runs `pgreplica status` and returns its exit status, summary
// line and the STATE column by node address.
func cliStates(t *testing.T) (code int, summary string, states map[string]string) {
	t.Helper()
	code, out := cli(t, "status")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "NODE ") {
		t.Fatalf("pgreplica status printed:\n%s", out)
	}
	// The STATE column, found by its header: columns come and go (FROM).
	col := slices.Index(strings.Fields(lines[1]), "STATE")
	if col < 0 {
		t.Fatalf("pgreplica status has no STATE column:\n%s", out)
	}
	states = map[string]string{}
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		states[f[0]] = f[col]
	}
	t.Logf("pgreplica status (exit %d):\n%s", code, out)
	return code, lines[0], states
}

func addr(i int) string { return testcluster.Cluster().Nodes[i].Addr() }

const (
	healthy = pgreplica.StateHealthy
	lagging = pgreplica.StateLagging
	down    = pgreplica.StateDown
)

// stop stops node i and restarts it when t ends, waiting until o sees it
// healthy again.
func stop(t *testing.T, o *observed, i int) {
	t.Helper()
	n := testcluster.Cluster().Nodes[i]
	if err := n.Stop(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Start(context.Background()); err != nil {
			t.Errorf("restart node %d: %v", i, err)
			return
		}
		testcluster.WaitUntil(t, 30*time.Second, fmt.Sprintf("node %d is healthy again", i), func() bool {
			n := o.c.Status().Nodes[i]
			return n.State == healthy && !n.LastProbe.IsZero()
		})
	})
}

func TestAllHealthy(t *testing.T) {
	o := open(t)
	s := o.waitStates(t, healthy, healthy, healthy)
	if s.Primary != addr(0) || !s.PrimaryUp || s.Degraded {
		t.Errorf("status = %+v", s)
	}
	code, rep, raw := o.health(t)
	if code != 200 || rep.Status != pgreplica.HealthHealthy {
		t.Errorf("health: %d %q", code, rep.Status)
	}
	for i, n := range raw["nodes"].([]any) {
		n := n.(map[string]any)
		if n["addr"] != addr(i) || n["state"] != healthy || n["last_probe"] == nil {
			t.Errorf("health node %d = %v", i, n)
		}
		if _, ok := n["lag_seconds"].(float64); !ok {
			t.Errorf("health node %d has no lag_seconds: %v", i, n)
		}
	}
	m := o.metrics(t)
	wantMetric(t, m, "pgreplica_primary_up 1")
	wantMetric(t, m, "pgreplica_degraded 0")
	for i := range 3 {
		wantMetric(t, m, fmt.Sprintf("pgreplica_node_up{node=%q} 1", addr(i)))
	}
	code, summary, states := cliStates(t)
	if code != 0 || !strings.HasPrefix(summary, "cluster healthy") {
		t.Errorf("pgreplica status: exit %d, %q", code, summary)
	}
	for i := range 3 {
		if states[addr(i)] != healthy {
			t.Errorf("pgreplica status shows %s as %q", addr(i), states[addr(i)])
		}
	}
}

func TestAReplicaDown(t *testing.T) {
	o := open(t)
	o.waitStates(t, healthy, healthy, healthy)
	stop(t, o, 2)
	s := o.waitStates(t, healthy, healthy, down)
	if !s.PrimaryUp || s.Degraded {
		t.Errorf("status = %+v", s)
	}
	code, rep, _ := o.health(t)
	if code != 200 || rep.Status != pgreplica.HealthHealthy || rep.Nodes[2].State != down {
		t.Errorf("health: %d %+v", code, rep)
	}
	// Reads keep working, on the other replica.
	ctx, route := pgreplica.WithRoute(ctxT(t, 30*time.Second))
	for range 10 {
		var one int
		if err := o.db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		if route.Node() != addr(1) {
			t.Errorf("a read went to %s (%s), want %s", route.Node(), route.Reason(), addr(1))
		}
	}
	m := o.metrics(t)
	wantMetric(t, m, fmt.Sprintf("pgreplica_node_up{node=%q} 0", addr(2)))
	wantMetric(t, m, fmt.Sprintf("pgreplica_node_state{node=%q,state=\"down\"} 1", addr(2)))
	code, summary, states := cliStates(t)
	if code != 0 || !strings.HasPrefix(summary, "cluster healthy") || states[addr(2)] != down || states[addr(1)] != healthy {
		t.Errorf("pgreplica status: exit %d, %q, %v", code, summary, states)
	}
}

func TestAReplicaLagging(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	o := open(t)
	o.waitStates(t, healthy, healthy, healthy)
	if _, err := o.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS observe_rows (id serial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	r1 := testcluster.Cluster().Nodes[1]
	if err := r1.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r1.ResumeReplay(context.Background()); err != nil {
			t.Errorf("resume replay: %v", err)
		}
		o.waitStates(t, healthy, healthy, healthy)
	})
	testcluster.WaitUntil(t, 30*time.Second, "replica 1 is lagging", func() bool {
		if _, err := o.db.ExecContext(ctx, "INSERT INTO observe_rows DEFAULT VALUES"); err != nil {
			t.Fatal(err)
		}
		return o.c.Status().Nodes[1].State == lagging
	})
	s := o.c.Status()
	if !s.PrimaryUp || s.Degraded || s.Nodes[2].State != healthy {
		t.Errorf("status = %+v", s)
	}
	code, rep, raw := o.health(t)
	if code != 200 || rep.Status != pgreplica.HealthHealthy || rep.Nodes[1].State != lagging {
		t.Errorf("health: %d %+v", code, rep)
	}
	n1 := raw["nodes"].([]any)[1].(map[string]any)
	if lag, _ := n1["lag_seconds"].(float64); lag <= 0.5 {
		t.Errorf("lag_seconds = %v, want over max_replica_lag (0.5)", n1["lag_seconds"])
	}
	if b, _ := n1["lag_bytes"].(float64); b <= 0 {
		t.Errorf("lag_bytes = %v, want > 0", n1["lag_bytes"])
	}
	m := o.metrics(t)
	wantMetric(t, m, fmt.Sprintf("pgreplica_node_state{node=%q,state=\"lagging\"} 1", addr(1)))
	wantMetric(t, m, fmt.Sprintf("pgreplica_node_up{node=%q} 1", addr(1)))
	code, summary, states := cliStates(t)
	if code != 0 || !strings.HasPrefix(summary, "cluster healthy") || states[addr(1)] != lagging {
		t.Errorf("pgreplica status: exit %d, %q, %v", code, summary, states)
	}
}

func TestAllReplicasDownIsDegraded(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	o := open(t)
	o.waitStates(t, healthy, healthy, healthy)
	stop(t, o, 1)
	stop(t, o, 2)
	s := o.waitStates(t, healthy, down, down)
	if !s.PrimaryUp || !s.Degraded {
		t.Errorf("status = %+v, want degraded with the primary up", s)
	}
	code, rep, raw := o.health(t)
	if code != 200 || rep.Status != pgreplica.HealthDegraded || raw["status"] != "degraded" || !rep.Degraded {
		t.Errorf("health: %d %+v", code, rep)
	}
	rctx, route := pgreplica.WithRoute(ctx)
	var one int
	if err := o.db.QueryRowContext(rctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("a read with every replica down: %v", err)
	}
	if route.Node() != addr(0) || route.Reason() != pgreplica.ReasonFallback {
		t.Errorf("the read went to %s (%s), want the primary (fallback)", route.Node(), route.Reason())
	}
	m := o.metrics(t)
	wantMetric(t, m, "pgreplica_degraded 1")
	wantMetric(t, m, "pgreplica_primary_up 1")
	code, summary, _ := cliStates(t)
	if code != 0 || !strings.HasPrefix(summary, "cluster degraded") || !strings.Contains(summary, "reads go to primary") {
		t.Errorf("pgreplica status: exit %d, %q", code, summary)
	}
}

// TestPrimaryDown must stay last: it stops the primary.
func TestPrimaryDown(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	o := open(t)
	o.waitStates(t, healthy, healthy, healthy)
	stop(t, o, 0)
	s := o.waitStates(t, down, healthy, healthy)
	if s.PrimaryUp || s.Primary != addr(0) {
		t.Errorf("status = %+v, want the primary known but not up", s)
	}
	code, rep, _ := o.health(t)
	if code != http.StatusServiceUnavailable || rep.Status != pgreplica.HealthDown || rep.PrimaryUp {
		t.Errorf("health: %d %+v", code, rep)
	}
	// Reads still work, on the replicas; writes fail.
	var one int
	if err := o.db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Errorf("a read with the primary down: %v", err)
	}
	if _, err := o.db.ExecContext(ctx, "CREATE TABLE never (x int)"); err == nil {
		t.Error("a write succeeded with the primary down")
	} else {
		noSecret(t, "the write's error", err.Error())
	}
	m := o.metrics(t)
	wantMetric(t, m, "pgreplica_primary_up 0")
	wantMetric(t, m, fmt.Sprintf("pgreplica_node_up{node=%q} 0", addr(0)))
	code, summary, states := cliStates(t)
	if code != 1 || !strings.HasPrefix(summary, "cluster down") || states[addr(0)] != down {
		t.Errorf("pgreplica status: exit %d, %q, %v", code, summary, states)
	}
	if code, out := cli(t, "status", "--json"); code != 1 || !strings.Contains(out, `"status": "down"`) {
		t.Errorf("pgreplica status --json: exit %d\n%s", code, out)
	}
}
