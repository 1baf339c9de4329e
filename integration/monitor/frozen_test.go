package monitor

import (
	"context"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestOneProbeTimeoutKeepsReadsInFlight: a replica that stops answering for
// longer than one probe timeout but not two (a loaded machine, issue 19) is
// taken out of routing for new reads, but a read already running on it is
// not cut: once the server resumes, the read completes with its answer.
func TestOneProbeTimeoutKeepsReadsInFlight(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	primary, victim := cl.Nodes[0], cl.Nodes[1]
	// Only one replica, no fallback and no hedge: the read can only be
	// answered by the victim, so an error or another port is a cut read.
	db := testcluster.OpenVia(t, []string{primary.Addr(), victim.Addr()},
		"monitor_interval=200ms", "fallback_to_primary=false", "hedge_after=off")
	c, err := pgreplica.ConnectorOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Thaw() })
	testcluster.WaitUntil(t, time.Minute, "the replica healthy", func() bool { return state(c, victim.Addr()) == pgreplica.StateHealthy })

	// The read sleeps on the replica; it is in flight once the replica's
	// pg_stat_activity shows it. It sleeps long enough to be seen on a
	// loaded machine and still run after the freeze and thaw below; one
	// that ends before it is seen (it may have found the replica briefly
	// out of routing: no fallback) is sent again.
	type answer struct {
		port int
		err  error
	}
	startRead := func() chan answer {
		done := make(chan answer, 1)
		go func() {
			var port int
			err := db.QueryRowContext(ctx, "SELECT inet_server_port() FROM pg_sleep(2) AS monitor_frozen_read").Scan(&port)
			done <- answer{port, err}
		}()
		return done
	}
	direct := testcluster.Direct(t, 1)
	if err := direct.PingContext(ctx); err != nil { // opened before the read starts
		t.Fatal(err)
	}
	var done chan answer
	testcluster.WaitUntil(t, time.Minute, "a read running on the replica", func() bool {
		if done == nil {
			done = startRead()
		}
		select {
		case a := <-done:
			t.Logf("a read ended before it was seen running (port %d, %v): sent again", a.port, a.err)
			done = nil
			return false
		default:
		}
		var n int
		err := direct.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%monitor_frozen_read%' AND pid <> pg_backend_pid()").Scan(&n)
		return err == nil && n > 0
	})
	if err := victim.Freeze(); err != nil {
		t.Fatal(err)
	}
	// Wait for the first probe timeout (the node leaves routing), then
	// resume it at once. A second timeout cannot end before another full
	// probe timeout has passed after the first: the next probe starts no
	// sooner than half an interval after the first round, and has the
	// whole probe timeout to answer.
	testcluster.WaitUntil(t, time.Minute, "the replica reported frozen", func() bool { return state(c, victim.Addr()) == pgreplica.StateFrozen })
	seen := time.Now()
	if err := victim.Thaw(); err != nil {
		t.Fatal(err)
	}
	late := time.Since(seen)
	probeTimeout := min(max(200*time.Millisecond, 500*time.Millisecond), 5*time.Second) // the monitor's, for monitor_interval=200ms
	a := <-done
	if late > probeTimeout {
		t.Skipf("resumed %v after the first timeout was seen, past one probe timeout (%v): this run says nothing (read: port %d, %v)", late, probeTimeout, a.port, a.err)
	}
	if a.err != nil || a.port != victim.Port {
		t.Fatalf("read in flight across one probe timeout: port %d, err %v; want port %d, no error", a.port, a.err, victim.Port)
	}
	t.Logf("resumed %v after the first probe timeout was seen; the read in flight answered from port %d", late, a.port)
	testcluster.WaitUntil(t, time.Minute, "the replica healthy again", func() bool { return state(c, victim.Addr()) == pgreplica.StateHealthy })
}

func state(c *pgreplica.Connector, addr string) string {
	for _, n := range c.Status().Nodes {
		if n.Addr == addr {
			return n.State
		}
	}
	return "missing"
}
