package faults

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// farDelay is what the proxy adds in each direction: a replica in another
// availability zone.
const farDelay = 20 * time.Millisecond

// One replica local, one behind a +20 ms proxy: with replica_policy=nearest
// reads stay local, move to the far replica when the local one dies, with
// no failed read, and come back once it is healthy again.
func TestNearestPolicyFollowsTheNearReplica(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	near, far := cl.Nodes[1], cl.Nodes[2]
	proxy, err := sandbox.NewLatencyProxy(far.Addr(), farDelay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = near.Start(ctx) })
	db := testcluster.OpenVia(t, []string{cl.Nodes[0].Addr(), near.Addr(), proxy.Addr()},
		monitorParams, "replica_policy=nearest")
	t.Cleanup(func() { proxy.Close() }) // before the leak check of OpenVia
	c := connector(t, db)

	// Both replicas measured: the far one's smoothed RTT shows the proxy.
	testcluster.WaitUntil(t, 10*time.Second, "both replicas probed and healthy", func() bool {
		s := c.Status()
		return rttOf(s, near.Addr()) > 0 && rttOf(s, proxy.Addr()) > 0 &&
			nodeState(c, near.Addr()) == pgreplica.StateHealthy && nodeState(c, proxy.Addr()) == pgreplica.StateHealthy
	})
	s := c.Status()
	nearRTT, farRTT := rttOf(s, near.Addr()), rttOf(s, proxy.Addr())
	t.Logf("smoothed RTT: near %v, far %v", nearRTT, farRTT)
	if farRTT < 2*farDelay || nearRTT >= farRTT-15*time.Millisecond {
		t.Fatalf("Status RTT: near %v, far %v; want the far one at least %v and over 15ms more than the near one", nearRTT, farRTT, 2*farDelay)
	}

	nearShare(t, db, near.Port, far.Port, "before the fault")

	// The near replica dies under load: reads move to the far one.
	l := startLoad(t, db, 8, 5*time.Second)
	l.waitServed(t, near.Port)
	if err := near.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	detect := testcluster.WaitUntil(t, 5*time.Second, "near replica marked down", func() bool {
		return nodeState(c, near.Addr()) == pgreplica.StateDown
	})
	detected := time.Now()
	t.Logf("near replica stopped; marked down %v later", detect)
	// Until the far replica served a read that began after the detection
	// (its pool is cold: new connections through the delay on a busy
	// machine), and a second more.
	testcluster.WaitUntil(t, 30*time.Second, "a read served by the far replica", func() bool {
		return l.servedSince(detected, far.Port)
	})
	time.Sleep(time.Second)
	starting := time.Now()
	if err := near.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := testcluster.WaitUntil(t, 10*time.Second, "near replica probed healthy again", func() bool {
		return nodeState(c, near.Addr()) == pgreplica.StateHealthy
	})
	t.Logf("near replica restarted; healthy %v after Start returned, smoothed RTT %v", back, rttOf(c.Status(), near.Addr()))
	reads, failed := l.finish()
	reportFailures(t, failed)
	during := map[int]int{}
	for _, r := range reads {
		if r.start.After(detected) && r.end.Before(starting) {
			during[r.port]++
		}
	}
	if during[far.Port] == 0 || len(during) != 1 {
		t.Fatalf("reads while the near replica was down, by port: %v (far is %d)", during, far.Port)
	}
	t.Logf("under load: %d reads, %d failed; %d served by the far replica while the near one was down",
		len(reads), len(failed), during[far.Port])

	nearShare(t, db, near.Port, far.Port, "after the restart")
}

// nearShare runs 500 plain reads from 4 goroutines and fails t unless at
// least 99% of those the policy placed were served by the near replica,
// and none failed. A read a hedge answered is not the policy's choice (a
// near replica whose pool is cold after a restart is slow to connect on a
// loaded machine, and the far one may rightly win the hedge): counted
// apart, and logged.
func nearShare(t *testing.T, db *sql.DB, nearPort, farPort int, when string) {
	t.Helper()
	const reads, workers = 500, 4
	var mu sync.Mutex
	byPort := map[int]int{}
	hedged := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range reads / workers {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				rctx, route := pgreplica.WithRoute(ctx)
				var port int
				err := db.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&port)
				cancel()
				if err != nil {
					t.Errorf("%s: read failed: %v", when, err)
					return
				}
				mu.Lock()
				if route.Reason() == pgreplica.ReasonHedge {
					hedged++
				} else {
					byPort[port]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	placed := reads - hedged
	t.Logf("%s: %d reads, %d answered by a hedge; the rest by port: near %d, far %d, other %d", when, reads, hedged,
		byPort[nearPort], byPort[farPort], placed-byPort[nearPort]-byPort[farPort])
	if placed < reads/2 || byPort[nearPort]*100 < placed*99 {
		t.Fatalf("%s: %d of %d reads the policy placed were on the near replica (%v; %d hedged), want at least 99%%, and most reads placed", when, byPort[nearPort], placed, byPort, hedged)
	}
}

func rttOf(s pgreplica.Status, addr string) time.Duration {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n.RTT
		}
	}
	return 0
}
