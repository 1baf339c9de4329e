package observe

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// stopStartLogs stops replica 2 under traffic, keeps the traffic going for
// at least hold while it is down, starts it again and returns what the
// logger received meanwhile, checking that every record is a state change
// and none shows the password.
func stopStartLogs(t *testing.T, hold time.Duration) map[string]int {
	ctx := ctxT(t, 2*time.Minute)
	o := open(t)
	o.waitStates(t, healthy, healthy, healthy)
	queries := 0
	traffic := func() {
		t.Helper()
		for i := range 50 {
			var one int
			if err := o.db.QueryRowContext(ctx, "SELECT $1::int", i).Scan(&one); err != nil {
				t.Fatal(err)
			}
			if _, err := o.db.ExecContext(ctx, "SELECT pg_catalog.set_config('application_name', 'observe', false)"); err != nil {
				t.Fatal(err)
			}
			queries += 2
		}
	}
	traffic()
	n := testcluster.Cluster().Nodes[2]
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Start(context.Background()) }) // a no-op once started
	stopped := time.Now()
	o.waitStates(t, healthy, healthy, down)
	traffic()
	for time.Since(stopped) < hold {
		traffic()
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	o.waitStates(t, healthy, healthy, healthy)
	traffic()
	traffic()

	logs := o.logs.String()
	t.Logf("%d statements; logs:\n%s", queries, logs)
	count := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		msg, _ := rec["msg"].(string)
		count[msg]++
		switch msg {
		case "pgreplica: node down", "pgreplica: node up":
			if rec["node"] != addr(2) {
				t.Errorf("%q about %v, want %s", msg, rec["node"], addr(2))
			}
		case "pgreplica: replica lagging", "pgreplica: replica caught up":
			// A restarted replica may be behind for a moment: a state
			// change too, not a per-query message.
		default:
			t.Errorf("unexpected log record: %s", line)
		}
	}
	return count
}

// TestLogsStateChangesNotQueries stops and restarts a replica under
// traffic: the logger hears of it once each way, and of no query.
//
// The replica stays down for 1.5s; TestQuickRestartLogsOnce restarts it at
// once.
func TestLogsStateChangesNotQueries(t *testing.T) {
	count := stopStartLogs(t, 1500*time.Millisecond)
	if count["pgreplica: node down"] != 1 || count["pgreplica: node up"] != 1 {
		t.Errorf("logged %v; want node down and node up once each", count)
	}
}

// TestQuickRestartLogsOnce is the case above with a replica restarted at
// once: the node's pool is reset when it is found down, so no read after
// the restart gets a connection to the old server and marks it down again.
func TestQuickRestartLogsOnce(t *testing.T) {
	count := stopStartLogs(t, 0)
	if count["pgreplica: node down"] != 1 || count["pgreplica: node up"] != 1 {
		t.Errorf("logged %v; want node down and node up once each", count)
	}
}
