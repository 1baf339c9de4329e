// Package discovery tests that pgreplica follows the members a control
// plane reports (DNS A and SRV records served by a real dnsmasq, a custom
// Discoverer) on a real primary and three streaming replicas.
package discovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{Replicas: 3})) }

// liveness bounds waits for something that must happen, however loaded
// the machine: not a speed figure.
const liveness = time.Minute

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// open opens dsn with edit applied to its Config; closed when t ends.
func open(t *testing.T, dsn string, edit func(*pgreplica.Config)) (*sql.DB, *pgreplica.Connector) {
	t.Helper()
	cfg, err := pgreplica.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(cfg)
	}
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// nodeByAddr finds addr in a Status.
func nodeByAddr(s pgreplica.Status, addr string) (pgreplica.NodeStatus, bool) {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n, true
		}
	}
	return pgreplica.NodeStatus{}, false
}

func addrs(s pgreplica.Status) []string {
	var out []string
	for _, n := range s.Nodes {
		out = append(out, fmt.Sprintf("%s(%s,%s,%s)", n.Addr, n.Source, n.Role, n.State))
	}
	return out
}

// waitMembers waits until the members are exactly want (addresses), each
// healthy, with primary writable, and every one's source is src.
func waitMembers(t *testing.T, c *pgreplica.Connector, primary string, src pgreplica.Source, want ...string) {
	t.Helper()
	ok := func() bool {
		s := c.Status()
		if s.Primary != primary || len(s.Nodes) != len(want) {
			return false
		}
		for _, a := range want {
			n, found := nodeByAddr(s, a)
			if !found || n.Source != src || n.State != pgreplica.StateHealthy || n.LastProbe.IsZero() {
				return false
			}
		}
		return true
	}
	start := time.Now()
	for !ok() {
		if time.Since(start) > liveness {
			t.Fatalf("members %v, want %v all healthy from %s with primary %s", addrs(c.Status()), want, src, primary)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readPorts runs n plain reads and counts the ports that answered them.
func readPorts(t *testing.T, ctx context.Context, db *sql.DB, n int) map[int]int {
	t.Helper()
	got := map[int]int{}
	for range n {
		got[testcluster.Port(t, ctx, db)]++
	}
	return got
}

func writePort(t *testing.T, ctx context.Context, db *sql.DB) int {
	t.Helper()
	var port int
	// A CTE that writes: the primary's statement, whatever the classifier.
	if err := db.QueryRowContext(ctx, "WITH w AS (INSERT INTO discovery_writes DEFAULT VALUES RETURNING 1) SELECT inet_server_port() FROM w").Scan(&port); err != nil {
		t.Fatal(err)
	}
	return port
}

// probedAfterWrite waits until db's write just made is replayed on the
// replicas and a probe round that began after that found every node.
func probedAfterWrite(t *testing.T, ctx context.Context, c *pgreplica.Connector) {
	t.Helper()
	testcluster.WaitReplayed(t, ctx)
	replayed := time.Now()
	testcluster.WaitUntil(t, liveness, "a probe round after the write", func() bool {
		for _, n := range c.Status().Nodes {
			if !n.LastProbe.After(replayed) {
				return false
			}
		}
		return true
	})
}

var tableOnce sync.Once

func writesTable(t *testing.T, ctx context.Context) {
	tableOnce.Do(func() {
		if err := testcluster.Cluster().Exec(ctx, 0, "CREATE TABLE IF NOT EXISTS discovery_writes (id serial PRIMARY KEY); GRANT ALL ON discovery_writes, discovery_writes_id_seq TO PUBLIC"); err != nil {
			t.Fatal(err)
		}
	})
}

// (1) A host that resolves to several addresses is one node per address,
// re-resolved at the interval: a headless Service's pods.
func TestDNSAddressesBecomeNodes(t *testing.T) {
	testcluster.NoLeaks(t) // first: the DNS server and forwarders end before the check
	ctx := testCtx(t)
	writesTable(t, ctx)
	cl := testcluster.Cluster()
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	var targets []string
	for _, n := range cl.Nodes {
		targets = append(targets, n.Addr())
	}
	port := forwarders(t, ips, targets)
	at := func(i int) string { return fmt.Sprintf("%s:%d", ips[i], port) }
	hosts := func(idx ...int) string {
		var b strings.Builder
		for _, i := range idx {
			fmt.Fprintf(&b, "%s pg.test\n", ips[i])
		}
		return b.String()
	}
	dns := startDNS(t, hosts(0, 1, 2), "")

	// The DSN of docs/operations.md's Kubernetes example, on this cluster.
	dsn := cl.DSNVia(fmt.Sprintf("pg.test:%d", port)) + "&discovery=dns&discovery_dns_server=" + dns.Addr() + "&discovery_interval=200ms"
	db, c := open(t, dsn, nil)
	waitMembers(t, c, at(0), pgreplica.SourceDNS, at(0), at(1), at(2))
	if p := writePort(t, ctx, db); p != cl.Nodes[0].Port {
		t.Fatalf("a write answered by %s", testcluster.Role(p))
	}
	// The default mode: reads follow db's write to a replica once one is
	// known to have it; both are, once a probe round after it found them.
	probedAfterWrite(t, ctx, c)
	got := readPorts(t, ctx, db, 60)
	if got[cl.Nodes[1].Port] == 0 || got[cl.Nodes[2].Port] == 0 || got[cl.Nodes[1].Port]+got[cl.Nodes[2].Port] != 60 {
		t.Fatalf("60 reads by port: %v, want replica1 and replica2 only; status %+v", got, c.Status())
	}

	// A pod replaced: replica2's address leaves, replica3's joins.
	dns.SetHosts(hosts(0, 1, 3))
	waitMembers(t, c, at(0), pgreplica.SourceDNS, at(0), at(1), at(3))
	got = readPorts(t, ctx, db, 60)
	if got[cl.Nodes[2].Port] != 0 || got[cl.Nodes[3].Port] == 0 || got[cl.Nodes[1].Port]+got[cl.Nodes[3].Port] != 60 {
		t.Fatalf("60 reads by port after the change: %v, want replica1 and replica3 only", got)
	}
	t.Logf("members %v", addrs(c.Status()))
}

// srvConf is dnsmasq configuration for _postgresql._tcp.pg.test naming
// node i as n<i>.pg.test at its port.
func srvConf(idx ...int) string {
	cl := testcluster.Cluster()
	var b strings.Builder
	for i, n := range cl.Nodes {
		host, _, _ := strings.Cut(n.Addr(), ":")
		fmt.Fprintf(&b, "host-record=n%d.pg.test,%s\n", i, host)
	}
	for _, i := range idx {
		fmt.Fprintf(&b, "srv-host=_postgresql._tcp.pg.test,n%d.pg.test,%d\n", i, cl.Nodes[i].Port)
	}
	return b.String()
}

func srvAddr(i int) string {
	return fmt.Sprintf("n%d.pg.test:%d", i, testcluster.Cluster().Nodes[i].Port)
}

// (2) SRV records give each member's host and port.
func TestSRVRecordsGiveHostAndPort(t *testing.T) {
	testcluster.NoLeaks(t)
	ctx := testCtx(t)
	writesTable(t, ctx)
	cl := testcluster.Cluster()
	dns := startDNS(t, "", srvConf(0, 1, 2))
	dsn := cl.DSNVia("pg.test") + "&discovery=srv&discovery_dns_server=" + dns.Addr()
	db, c := open(t, dsn, nil)
	waitMembers(t, c, srvAddr(0), pgreplica.SourceDNS, srvAddr(0), srvAddr(1), srvAddr(2))
	if p := writePort(t, ctx, db); p != cl.Nodes[0].Port {
		t.Fatalf("a write answered by %s", testcluster.Role(p))
	}
	// The default mode: reads follow db's write to a replica once one is
	// known to have it; both are, once a probe round after it found them.
	probedAfterWrite(t, ctx, c)
	got := readPorts(t, ctx, db, 60)
	if got[cl.Nodes[1].Port] == 0 || got[cl.Nodes[2].Port] == 0 || got[cl.Nodes[1].Port]+got[cl.Nodes[2].Port] != 60 {
		t.Fatalf("60 reads by port: %v, want replica1 and replica2 only; status %+v", got, c.Status())
	}
}

type readRecord struct {
	start, end time.Time
	port       int
	err        error
}

// (3) Under 8 readers, a new replica is made (pg_basebackup from the
// running primary) and joins, and another leaves and is stopped: the new
// one serves no read before its first probe answered, the removed one none
// after it left the members, its reads in flight finish there, and no read
// fails, its stop included.
func TestMembersJoinAndLeaveUnderReaders(t *testing.T) {
	testcluster.NoLeaks(t)
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	// Addresses and ports of the cluster as TestMain made it: the readers
	// and the sampler must not read cl.Nodes while AddReplica changes it.
	r1, r2 := cl.Nodes[1].Port, cl.Nodes[2].Port
	gone1 := srvAddr(1)
	dns := startDNS(t, "", srvConf(0, 1, 2))
	// max_replica_lag=off: under a lag bound a never-probed node is out of
	// reads by its unknown lag too; off leaves the rule to membership alone.
	dsn := cl.DSNVia("pg.test") + "&discovery=srv&discovery_dns_server=" + dns.Addr() + "&discovery_interval=100ms&monitor_interval=200ms&max_replica_lag=off"
	db, c := open(t, dsn, nil)
	db.SetMaxOpenConns(16)
	waitMembers(t, c, srvAddr(0), pgreplica.SourceDNS, srvAddr(0), srvAddr(1), srvAddr(2))

	var (
		mu      sync.Mutex
		records []readRecord
		stop    atomic.Bool
		wg      sync.WaitGroup
		began   [8]atomic.Int64 // each reader's read under way: its start (UnixNano), 0 between reads
	)
	for r := range 8 {
		wg.Go(func() {
			q := "SELECT inet_server_port()"
			if r%2 == 1 { // long reads: some are in flight on the replica that leaves
				q = "SELECT inet_server_port() FROM pg_sleep(0.05)"
			}
			for !stop.Load() {
				rec := readRecord{start: time.Now()}
				began[r].Store(rec.start.UnixNano())
				rec.err = db.QueryRowContext(ctx, q).Scan(&rec.port)
				rec.end = time.Now()
				began[r].Store(0)
				mu.Lock()
				records = append(records, rec)
				mu.Unlock()
			}
		})
	}
	// The sampler: the joining node must show no statement while it has
	// never answered a probe; it notes that probe, and when the leaving
	// node is first seen gone.
	var (
		joinAddr   atomic.Pointer[string]
		early      atomic.Value // string: a snapshot breaking the rule
		firstProbe atomic.Pointer[time.Time]
		goneAt     atomic.Pointer[time.Time]
		samples    atomic.Int64
	)
	sampling := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-sampling:
				return
			default:
			}
			s := c.Status()
			samples.Add(1)
			if a := joinAddr.Load(); a != nil {
				if n, ok := nodeByAddr(s, *a); ok {
					if n.LastProbe.IsZero() && (n.Statements > 0 || n.InFlight > 0) {
						early.CompareAndSwap(nil, fmt.Sprintf("%+v", n))
					}
					if !n.LastProbe.IsZero() && firstProbe.Load() == nil {
						at := n.LastProbe
						firstProbe.Store(&at)
					}
				}
			}
			if _, ok := nodeByAddr(s, gone1); !ok && goneAt.Load() == nil {
				now := time.Now()
				goneAt.Store(&now)
			}
			time.Sleep(200 * time.Microsecond)
		}
	})
	count := func(port int) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, r := range records {
			if r.err == nil && r.port == port {
				k++
			}
		}
		return k
	}
	testcluster.WaitUntil(t, liveness, "replica1 and replica2 serve reads", func() bool {
		return count(r1) > 0 && count(r2) > 0
	})

	// A new replica: a base backup of the primary under the readers.
	backup := time.Now()
	added, err := cl.AddReplica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // TestMain's cluster has 3 replicas for the other tests
		if err := cl.RemoveReplica(context.Background(), added); err != nil {
			t.Error(err)
		}
	})
	tookBackup := time.Since(backup)
	rn, joinName := added.Port, testcluster.Role(added.Port)
	a := srvAddr(added.Index)
	joinAddr.Store(&a)
	joining := time.Now()
	dns.SetConf(srvConf(0, 1, 2, added.Index)) // it joins
	testcluster.WaitUntil(t, liveness, joinName+" serves reads", func() bool { return count(rn) > 0 })
	joined := time.Now()

	removing := time.Now()
	dns.SetConf(srvConf(0, 2, added.Index)) // replica1 leaves
	testcluster.WaitUntil(t, liveness, "replica1 leaves the members", func() bool { return goneAt.Load() != nil })
	gone := *goneAt.Load()
	// Drained: every reader has finished the read it had under way when
	// replica1 left (those are the only reads it may still serve). Then
	// it stops, as a control plane takes a removed member down.
	testcluster.WaitUntil(t, liveness, "the reads under way when replica1 left finish", func() bool {
		for i := range began {
			if b := began[i].Load(); b != 0 && b <= gone.UnixNano() {
				return false
			}
		}
		return true
	})
	if err := cl.Nodes[1].StopClean(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), liveness)
		defer cancel()
		if err := cl.Nodes[1].Start(ctx); err != nil {
			t.Error(err)
		}
		testcluster.WaitReplayed(t, ctx)
	})
	// Keep reading for a while after it stopped: 400 more reads.
	mu.Lock()
	target := len(records) + 400
	mu.Unlock()
	testcluster.WaitUntil(t, liveness, "400 more reads", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(records) >= target
	})
	stop.Store(true)
	close(sampling)
	wg.Wait()

	var (
		failed, afterGone, inFlightAtRemoval, beforeProbe int
		byPort, afterStop                                 = map[string]int{}, map[string]int{}
	)
	probed := firstProbe.Load()
	for _, r := range records {
		if r.err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("read failed (began %s after the backup began): %v", r.start.Sub(backup).Round(time.Millisecond), r.err)
			}
			continue
		}
		byPort[testcluster.Role(r.port)]++
		if r.start.After(stopped) {
			afterStop[testcluster.Role(r.port)]++
		}
		switch r.port {
		case r1:
			if r.start.After(gone) {
				afterGone++
			}
			if r.start.Before(gone) && r.end.After(gone) {
				inFlightAtRemoval++ // drained: it finished there
			}
		case rn:
			if probed == nil || r.end.Before(*probed) {
				beforeProbe++
			}
		}
	}
	t.Logf("%d reads by node %v (%v after replica1 stopped); %d status samples; base backup and start of %s under the readers %v; it served reads %v after the records named it; replica1 left %v after the records changed; %d reads under way on it then finished there",
		len(records), byPort, afterStop, samples.Load(), joinName, tookBackup.Round(time.Millisecond),
		joined.Sub(joining).Round(time.Millisecond), gone.Sub(removing).Round(time.Millisecond), inFlightAtRemoval)
	if failed > 0 {
		t.Errorf("%d of %d reads failed", failed, len(records))
	}
	if s, ok := early.Load().(string); ok {
		t.Errorf("%s had statements before its first probe answered: %s", joinName, s)
	}
	if beforeProbe > 0 {
		t.Errorf("%s answered %d reads that ended before its first probe (%v)", joinName, beforeProbe, probed)
	}
	if afterGone > 0 {
		t.Errorf("replica1 served %d reads that began after it left the members", afterGone)
	}
	if afterStop[joinName] == 0 || afterStop["replica2"] == 0 {
		t.Errorf("reads after replica1 stopped by node %v, want %s and replica2 among them", afterStop, joinName)
	}
	if _, ok := nodeByAddr(c.Status(), gone1); ok {
		t.Errorf("replica1 is back among the members: %v", addrs(c.Status()))
	}
}

// (4) A custom Discoverer: members come and go as it says; when it fails,
// the members stay, and its error reaches the log without credentials.
func TestCustomDiscoverer(t *testing.T) {
	testcluster.NoLeaks(t)
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	var (
		mu      sync.Mutex
		members []int // node indexes
		fail    bool
	)
	set := func(f bool, idx ...int) {
		mu.Lock()
		members, fail = idx, f
		mu.Unlock()
	}
	set(false, 0, 1)
	var log testcluster.SyncBuffer
	db, c := open(t, cl.DSNVia(cl.Nodes[0].Addr())+"&discovery_interval=100ms", func(cfg *pgreplica.Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
		cfg.Discoverer = pgreplica.DiscoverFunc(func(ctx context.Context) ([]pgreplica.Member, error) {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				return nil, errors.New(`GET "http://pgreplica:hunter2secret@consul:8500/v1/catalog/service/pg": connection refused`)
			}
			var ms []pgreplica.Member
			for _, i := range members {
				host, _, _ := strings.Cut(cl.Nodes[i].Addr(), ":")
				src := pgreplica.Source("") // custom
				if i == 2 {
					src = pgreplica.SourcePatroni // what a Discoverer sets is shown
				}
				ms = append(ms, pgreplica.Member{Host: host, Port: uint16(cl.Nodes[i].Port), Source: src})
			}
			return ms, nil
		})
	})
	a := func(i int) string { return cl.Nodes[i].Addr() }
	waitMembers(t, c, a(0), pgreplica.SourceCustom, a(0), a(1))

	set(false, 0, 1, 2)
	testcluster.WaitUntil(t, liveness, "replica2 joins", func() bool {
		n, ok := nodeByAddr(c.Status(), a(2))
		return ok && n.State == pgreplica.StateHealthy && n.Source == pgreplica.SourcePatroni
	})
	set(false, 0, 2)
	testcluster.WaitUntil(t, liveness, "replica1 leaves", func() bool {
		_, ok := nodeByAddr(c.Status(), a(1))
		return !ok
	})
	got := readPorts(t, ctx, db, 40)
	if got[cl.Nodes[2].Port] != 40 {
		t.Fatalf("40 reads by port: %v, want replica2's only", got)
	}

	set(true)
	testcluster.WaitUntil(t, liveness, "the failure is logged", func() bool {
		return strings.Contains(log.String(), "discovery failed")
	})
	if s := c.Status(); len(s.Nodes) != 2 || s.Primary != a(0) {
		t.Fatalf("after a failed discovery the members are %v", addrs(s))
	}
	if strings.Contains(log.String(), "hunter2secret") {
		t.Fatalf("the log shows the Discoverer's credentials:\n%s", log.String())
	}
	t.Logf("log:\n%s", log.String())
}
