package pgreplicaprom_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
	"github.com/pgreplica/pgreplica/pgreplicaprom"
)

// password is the cluster's application password; no metric may show it.
const password = "pr0m-Secr3t:p@ss/w%rd"

func TestMain(m *testing.M) {
	os.Exit(testcluster.Run(m, sandbox.Options{Password: password}))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func connector(t *testing.T, db *sql.DB) *pgreplica.Connector {
	t.Helper()
	c, err := pgreplica.ConnectorOf(ctxT(t, 5*time.Second), db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitAllHealthy waits until every node answered a probe and is healthy.
func waitAllHealthy(t *testing.T, c *pgreplica.Connector) {
	t.Helper()
	testcluster.WaitUntil(t, 30*time.Second, "every node is probed and healthy", func() bool {
		for _, n := range c.Status().Nodes {
			if n.LastProbe.IsZero() || n.State != pgreplica.StateHealthy {
				return false
			}
		}
		return true
	})
}

// value reads one sample of a gathered metric, by name and label values
// given as name, value pairs; ok is false when there is none.
func value(t *testing.T, g prom.Gatherer, name string, labels ...string) (v float64, ok bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func addrs() (primary, r1, r2 string) {
	n := testcluster.Cluster().Nodes
	return n[0].Addr(), n[1].Addr(), n[2].Addr()
}

func TestCollectorPassesLint(t *testing.T) {
	db := testcluster.Open(t, "monitor_interval=100ms")
	c := connector(t, db)
	waitAllHealthy(t, c)
	problems, err := testutil.CollectAndLint(pgreplicaprom.NewCollector(c))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// A pedantic registry checks the descriptors against what is collected.
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(pgreplicaprom.NewCollector(c, pgreplicaprom.WithConstLabels(prom.Labels{"cluster": "test"})))
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	if v, ok := value(t, reg, "pgreplica_node_up", "cluster", "test"); !ok || v != 1 {
		t.Errorf("pgreplica_node_up{cluster=test} = %v, %v", v, ok)
	}
}

// read_your_writes=off: in the default mode the first read after the
// writes may ask the primary for their WAL position, a statement of the
// primary's in pgreplica_statements_total, or not when a probe covered
// them first; the known sequence is the point here.
func TestCollectorAfterKnownTrafficAndAStoppedReplica(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	db := testcluster.Open(t, "monitor_interval=100ms", "max_replica_lag=5s", "read_your_writes=off")
	c := connector(t, db)
	col := pgreplicaprom.NewCollector(c)
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(col)
	waitAllHealthy(t, c)
	primary, r1, r2 := addrs()

	// A known sequence of statements, each attributed to its node.
	served := map[string]int{}
	run := func(f func(ctx context.Context) error) {
		t.Helper()
		rctx, route := pgreplica.WithRoute(ctx)
		if err := f(rctx); err != nil {
			t.Fatal(err)
		}
		served[route.Node()]++
	}
	run(func(ctx context.Context) error {
		_, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS prom_rows (id int)")
		return err
	})
	for i := range 5 {
		run(func(ctx context.Context) error {
			_, err := db.ExecContext(ctx, "INSERT INTO prom_rows VALUES ($1)", i)
			return err
		})
	}
	for range 30 {
		run(func(ctx context.Context) error {
			var one int
			return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		})
	}
	if served[primary] != 6 || served[r1]+served[r2] != 30 {
		t.Fatalf("statements served = %v; want 6 on the primary %s and 30 on the replicas", served, primary)
	}

	expected := fmt.Sprintf(`
# HELP pgreplica_statements_total Statements routed to the node.
# TYPE pgreplica_statements_total counter
pgreplica_statements_total{node=%q} %d
pgreplica_statements_total{node=%q} %d
pgreplica_statements_total{node=%q} %d
# HELP pgreplica_node_is_primary Whether the node is the writable primary (1) or a replica (0).
# TYPE pgreplica_node_is_primary gauge
pgreplica_node_is_primary{node=%[1]q} 1
pgreplica_node_is_primary{node=%[3]q} 0
pgreplica_node_is_primary{node=%[5]q} 0
# HELP pgreplica_node_up Whether the node answers probes (1: healthy, lagging or full) or not (0: down or frozen).
# TYPE pgreplica_node_up gauge
pgreplica_node_up{node=%[1]q} 1
pgreplica_node_up{node=%[3]q} 1
pgreplica_node_up{node=%[5]q} 1
# HELP pgreplica_primary_up Whether the primary answered its latest probe (1) or not (0).
# TYPE pgreplica_primary_up gauge
pgreplica_primary_up 1
# HELP pgreplica_degraded Whether no replica can serve reads, so that they go to the primary (1) or not (0).
# TYPE pgreplica_degraded gauge
pgreplica_degraded 0
`, primary, served[primary], r1, served[r1], r2, served[r2])
	if err := testutil.CollectAndCompare(col, strings.NewReader(expected),
		"pgreplica_statements_total", "pgreplica_node_is_primary", "pgreplica_node_up",
		"pgreplica_primary_up", "pgreplica_degraded"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(col, "pgreplica_replication_lag_seconds", "pgreplica_replication_lag_bytes"); n != 4 {
		t.Errorf("%d lag samples, want 2 per replica and none for the primary", n)
	}
	if n := testutil.CollectAndCount(col, "pgreplica_reroutes_total"); n != 3*6 {
		t.Errorf("%d reroute samples, want 6 reasons for each of 3 nodes", n)
	}
	if v, ok := value(t, reg, "pgreplica_rtt_seconds", "node", r1); !ok || v <= 0 || v > 1 {
		t.Errorf("smoothed RTT of %s = %v, %v; want a measured round trip", r1, v, ok)
	}
	if v, _ := value(t, reg, "pgreplica_pool_max_connections", "node", r1); v != pgreplica.DefaultReplicaMaxConns {
		t.Errorf("pool max of %s = %v, want %d", r1, v, pgreplica.DefaultReplicaMaxConns)
	}
	if v, _ := value(t, reg, "pgreplica_pool_acquires_total", "node", primary); v < 1 {
		t.Errorf("pool acquires of the primary = %v, want at least 1", v)
	}

	// The fault: stop replica 2.
	node2 := testcluster.Cluster().Nodes[2]
	if err := node2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node2.Start(context.Background()); err != nil {
			t.Errorf("restart replica 2: %v", err)
		}
		waitAllHealthy(t, c)
	})
	testcluster.WaitUntil(t, 30*time.Second, "pgreplica_node_up of the stopped replica is 0", func() bool {
		v, ok := value(t, reg, "pgreplica_node_up", "node", r2)
		return ok && v == 0
	})
	if v, _ := value(t, reg, "pgreplica_node_state", "node", r2, "state", pgreplica.StateDown); v != 1 {
		t.Errorf(`pgreplica_node_state{state="down"} of %s = %v, want 1`, r2, v)
	}
	before, _ := value(t, reg, "pgreplica_reroutes_total", "node", r2, "reason", "down")
	r1Before, _ := value(t, reg, "pgreplica_statements_total", "node", r1)
	const reads = 20
	for range reads {
		var one int
		if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("read with a replica down: %v", err)
		}
	}
	after, _ := value(t, reg, "pgreplica_reroutes_total", "node", r2, "reason", "down")
	if after < before+reads {
		t.Errorf(`pgreplica_reroutes_total{reason="down"} of %s went from %v to %v over %d reads; want +%d at least`, r2, before, after, reads, reads)
	}
	if r1After, _ := value(t, reg, "pgreplica_statements_total", "node", r1); r1After != r1Before+reads {
		t.Errorf("statements on %s went from %v to %v; want every one of the %d reads there", r1, r1Before, r1After, reads)
	}
	if v, _ := value(t, reg, "pgreplica_degraded"); v != 0 {
		t.Errorf("pgreplica_degraded = %v with one replica still up", v)
	}

	// The exposition text shows no credentials.
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, secret := range []string{password, url.QueryEscape(password), url.PathEscape(password), "Secr3t"} {
		if strings.Contains(string(body), secret) {
			t.Fatalf("the metrics text contains the password (%q)", secret)
		}
	}
	if !strings.Contains(string(body), fmt.Sprintf("pgreplica_node_up{node=%q} 0", r2)) {
		t.Errorf("the metrics text lacks the stopped replica's node_up 0:\n%s", body)
	}
}
