package patroni

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/patroni"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// liveness bounds waits for something that must happen, however loaded
// the machine (Patroni's member key alone takes its ttl, 10 s, to expire):
// not a speed figure. The figures are logged in discovery and probe
// intervals.
const liveness = 2 * time.Minute

// TestPatroniURLFollowsTheCluster opens pgreplica as README's Patroni
// example does: the DSN names one member (a replica: what a deployment
// listed went stale) and patroni_url every member's REST API. Without a
// restart it finds every member, writes on the leader, follows a
// patronictl switchover, and drops a member whose Patroni and PostgreSQL
// stopped until they are back.
func TestPatroniURLFollowsTheCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Synchronous mode off (TestLeaderCrash turns it on): a stopped sync
	// standby would hold the leader's commits until Patroni picks another.
	if err := cluster.SetSynchronousMode(ctx, false); err != nil {
		t.Fatal(err)
	}
	leader, err := cluster.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	others := otherThan(leader)
	listed := others[0] // the DSN's one host: not the leader
	var urls []string
	for _, m := range cluster.Members {
		urls = append(urls, m.APIURL())
	}
	const discoveryInterval, monitorInterval = 200 * time.Millisecond, 200 * time.Millisecond
	dsn := cluster.DSN(listed) + "&patroni_url=" + strings.Join(urls, ",") +
		fmt.Sprintf("&discovery_interval=%s&monitor_interval=%s", discoveryInterval, monitorInterval)
	table := fmt.Sprintf("purl_%d", time.Now().UnixNano())
	admin, err := pgx.Connect(ctx, cluster.AdminDSN(leader))
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (id serial PRIMARY KEY); GRANT ALL ON %[1]s, %[1]s_id_seq TO %s", table, patroni.DefaultUser))
	admin.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// testcluster.NoLeaks, but the waiter of the Patroni this test starts
	// again (internal/patroni's spawn) outlives db.Close by design.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(ignore, goleak.IgnoreAnyFunction("github.com/pgreplica/pgreplica/internal/patroni.(*Cluster).spawn.func1")); err != nil {
			t.Errorf("goroutines left after db.Close: %v", err)
		}
	})
	db, err := sql.Open("pgreplica", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	write := func() int {
		t.Helper()
		var port int
		q := fmt.Sprintf("INSERT INTO %s DEFAULT VALUES RETURNING inet_server_port()", table)
		if err := db.QueryRowContext(ctx, q).Scan(&port); err != nil {
			t.Fatal(err)
		}
		return port
	}

	// Every member, from Patroni, and writes on the leader.
	took := waitMembers(t, c, leader, cluster.Members...)
	t.Logf("every member from Patroni, %s the primary, %s after sql.Open (%.1f discovery intervals)",
		leader.Name, took.Round(time.Millisecond), float64(took)/float64(discoveryInterval))
	if p := write(); p != leader.Port {
		t.Fatalf("a write answered by port %d, want the leader %s (%d); members %v", p, leader.Name, leader.Port, statusText(c.Status()))
	}

	// A switchover to the member the DSN does not name.
	candidate := others[1]
	if err := cluster.Switchover(ctx, leader, candidate); err != nil {
		t.Fatal(err)
	}
	followed := testcluster.WaitUntil(t, liveness, "Status names "+candidate.Name+" the primary", func() bool {
		return c.Status().Primary == candidate.Addr()
	})
	took = waitMembers(t, c, candidate, cluster.Members...)
	t.Logf("primary %s followed %s after patronictl switchover returned (%.1f probe intervals); every member healthy again %s later (the old leader restarts as a standby)",
		candidate.Name, followed.Round(time.Millisecond), float64(followed)/float64(monitorInterval), took.Round(time.Millisecond))
	if p := write(); p != candidate.Port {
		t.Fatalf("a write after the switchover answered by port %d, want the new leader %s (%d); members %v", p, candidate.Name, candidate.Port, statusText(c.Status()))
	}

	// A replica stops, Patroni and PostgreSQL both: it leaves the members
	// once Patroni no longer lists it (its member key expires), and comes
	// back when they start again.
	stopped := leader // now a replica of candidate
	stopped.KillPatroni()
	t.Cleanup(func() { // the other tests need every member
		if err := stopped.StartPatroni(); err != nil {
			t.Error(err)
		}
		if err := cluster.WaitHealthy(context.Background()); err != nil {
			t.Error(err)
		}
	})
	if err := stopped.CrashPostgres(ctx); err != nil {
		t.Fatal(err)
	}
	stopAt := time.Now()
	rest := otherThan(stopped)
	took = waitMembers(t, c, candidate, rest...)
	t.Logf("%s left the members %s after it stopped (Patroni's ttl is 10 s)", stopped.Name, took.Round(time.Millisecond))
	if p := write(); p != candidate.Port {
		t.Fatalf("a write answered by port %d, want the leader %s", p, candidate.Name)
	}
	if got := readPorts(t, ctx, db, 40); got[stopped.Port] > 0 || got[listed.Port]+got[candidate.Port] != 40 {
		t.Fatalf("40 reads by port %v with %s stopped, want %s (%d) and %s (%d) only", got, stopped.Name, listed.Name, listed.Port, candidate.Name, candidate.Port)
	}

	if err := stopped.StartPatroni(); err != nil {
		t.Fatal(err)
	}
	startAt := time.Now()
	took = waitMembers(t, c, candidate, cluster.Members...)
	t.Logf("%s back among the members, healthy, %s after its Patroni started (stopped for %s)",
		stopped.Name, took.Round(time.Millisecond), startAt.Sub(stopAt).Round(time.Millisecond))
	// And it serves reads again: once it replayed what this connector
	// wrote, reads leave the primary for it too.
	testcluster.WaitUntil(t, liveness, stopped.Name+" serves a read", func() bool {
		return readPorts(t, ctx, db, 10)[stopped.Port] > 0
	})
	if p := write(); p != candidate.Port {
		t.Fatalf("a write answered by port %d, want the leader %s", p, candidate.Name)
	}
}

// waitMembers waits until the Status members are exactly the addresses of
// want, each from Patroni, healthy and probed, with primary the writable
// primary; it returns how long that took.
func waitMembers(t *testing.T, c *pgreplica.Connector, primary *patroni.Member, want ...*patroni.Member) time.Duration {
	t.Helper()
	ok := func() bool {
		s := c.Status()
		if s.Primary != primary.Addr() || len(s.Nodes) != len(want) {
			return false
		}
		for _, m := range want {
			found := false
			for _, n := range s.Nodes {
				if n.Addr == m.Addr() {
					found = n.Source == pgreplica.SourcePatroni && n.State == pgreplica.StateHealthy && !n.LastProbe.IsZero()
				}
			}
			if !found {
				return false
			}
		}
		return true
	}
	start := time.Now()
	for !ok() {
		if time.Since(start) > liveness {
			var names []string
			for _, m := range want {
				names = append(names, m.Name+"="+m.Addr())
			}
			t.Fatalf("members %v, want %v all healthy from Patroni with primary %s", statusText(c.Status()), names, primary.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func statusText(s pgreplica.Status) []string {
	out := []string{"primary=" + s.Primary}
	for _, n := range s.Nodes {
		out = append(out, fmt.Sprintf("%s(%s,%s,%s)", n.Addr, n.Source, n.Role, n.State))
	}
	return out
}

// readPorts runs n plain reads and counts the ports that answered them.
func readPorts(t *testing.T, ctx context.Context, db *sql.DB, n int) map[int]int {
	t.Helper()
	got := map[int]int{}
	for range n {
		var port int
		if err := db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			t.Fatal(err)
		}
		got[port]++
	}
	return got
}
