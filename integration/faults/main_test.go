// Package faults injects real faults into a real primary with two streaming
// replicas and checks what an application sees: stop a replica with
// pg_ctl -m immediate, freeze one with SIGSTOP, make one lag with
// pg_wal_replay_pause(), promote one with pg_ctl promote.
package faults

import (
	"context"
	"database/sql"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }

// monitorParams make faults visible within a fraction of a second.
const monitorParams = "monitor_interval=200ms"

// load runs plain reads from several goroutines until stopped and records
// which server answered each one and when it started.
type load struct {
	db      *sql.DB
	timeout time.Duration

	mu       sync.Mutex
	reads    []readResult
	failed   []error
	failedAt []readResult // when each failed read started and ended

	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
	n    atomic.Int64
}

type readResult struct {
	start, end time.Time
	port       int
	reason     pgreplica.Reason // the route's reason (WithRoute)
}

func startLoad(t *testing.T, db *sql.DB, workers int, timeout time.Duration) *load {
	l := &load{db: db, timeout: timeout, stop: make(chan struct{})}
	for range workers {
		l.wg.Go(l.worker)
	}
	t.Cleanup(func() { l.finish() }) // also when the test fails early
	return l
}

func (l *load) worker() {
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		ctx, route := pgreplica.WithRoute(ctx)
		start := time.Now()
		var port int
		err := l.db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port)
		cancel()
		end := time.Now()
		l.n.Add(1)
		l.mu.Lock()
		if err != nil {
			l.failed = append(l.failed, err)
			l.failedAt = append(l.failedAt, readResult{start: start, end: end})
		} else {
			l.reads = append(l.reads, readResult{start: start, end: end, port: port, reason: route.Reason()})
		}
		l.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}

// servedSince says whether a read that started after since was served by
// port.
func (l *load) servedSince(since time.Time, port int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reads {
		if r.port == port && r.start.After(since) {
			return true
		}
	}
	return false
}

// finish stops the load and returns what it saw.
func (l *load) finish() ([]readResult, []error) {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	return l.reads, l.failed
}

func connector(t *testing.T, db *sql.DB) *pgreplica.Connector {
	t.Helper()
	c, err := pgreplica.ConnectorOf(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func nodeState(c *pgreplica.Connector, addr string) string {
	for _, n := range c.Status().Nodes {
		if n.Addr == addr {
			return n.State
		}
	}
	return "missing"
}

// portsAfter counts the reads that started after t, by port.
func portsAfter(reads []readResult, after time.Time) map[int]int {
	m := map[int]int{}
	for _, r := range reads {
		if r.start.After(after) {
			m[r.port]++
		}
	}
	return m
}

func reportFailures(t *testing.T, failed []error) {
	t.Helper()
	for i, err := range failed {
		if i == 5 {
			t.Errorf("… %d failed reads in all", len(failed))
			break
		}
		t.Errorf("failed read: %v", err)
	}
}

func portsBefore(reads []readResult, before time.Time) map[int]int {
	m := map[int]int{}
	for _, r := range reads {
		if r.end.Before(before) {
			m[r.port]++
		}
	}
	return m
}

// waitServed waits until each of ports has answered at least one read.
func (l *load) waitServed(t *testing.T, ports ...int) {
	t.Helper()
	// A liveness bound: 10 s was not always enough on a machine whose
	// other test runs kept the replicas' probes waiting.
	testcluster.WaitUntil(t, time.Minute, "the load reaches every replica", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		seen := map[int]bool{}
		for _, r := range l.reads {
			seen[r.port] = true
		}
		for _, p := range ports {
			if !seen[p] {
				return false
			}
		}
		return true
	})
}

// roundWatch follows the monitor's probes of a few nodes (ones the test
// leaves alone), so that a bound on how fast a fault is noticed can be
// counted in probe rounds instead of being a fixed figure that a loaded
// machine misses: each answered probe stamps its node's LastProbe, so a
// newer LastProbe is a new round for that node. longest is the longest gap
// between two rounds of one node: how long a round takes on this machine
// now. A round that falls between two samples only makes a gap longer (a
// bound derived from it more lenient, never stricter), and the gaps are
// the monitor's own timestamps, not the sampler's.
type roundWatch struct {
	mu   sync.Mutex
	last map[string]time.Time // each watched node's newest LastProbe
	gap  time.Duration        // the longest gap between two rounds seen
	n    int                  // rounds seen, all watched nodes together
	seen time.Time            // the newest LastProbe of any watched node

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// watchRounds follows the probes of the nodes at addrs.
func watchRounds(t *testing.T, c *pgreplica.Connector, addrs ...string) *roundWatch {
	w := &roundWatch{last: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	watched := map[string]bool{}
	for _, a := range addrs {
		watched[a] = true
	}
	go func() {
		defer close(w.done)
		for {
			for _, n := range c.Status().Nodes {
				if !watched[n.Addr] || n.LastProbe.IsZero() {
					continue
				}
				w.mu.Lock()
				if last := w.last[n.Addr]; n.LastProbe.After(last) {
					if !last.IsZero() {
						w.gap = max(w.gap, n.LastProbe.Sub(last))
						w.n++
					}
					w.last[n.Addr] = n.LastProbe
					if n.LastProbe.After(w.seen) {
						w.seen = n.LastProbe
					}
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

// longest is the longest gap between two rounds seen so far, and how many
// rounds that is from.
func (w *roundWatch) longest() (time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gap, w.n
}

// through waits until a round stamped after at is seen, so that the rounds
// up to at (the one that noticed a fault, say) are all counted, and then
// returns longest.
func (w *roundWatch) through(t *testing.T, at time.Time) (time.Duration, int) {
	t.Helper()
	testcluster.WaitUntil(t, time.Minute, "a monitor round after "+at.Format("15:04:05.000"), func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.seen.After(at)
	})
	return w.longest()
}

// reset forgets the gaps seen so far, but not the rounds: the gap from the
// last round before it to the first after it still counts.
func (w *roundWatch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gap, w.n = 0, 0
}

func (w *roundWatch) finish() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// pollSlack is what testcluster.WaitUntil's polling (every 20 ms) adds to
// a duration it measures, with a Status call and a read of room.
const pollSlack = 50 * time.Millisecond

// dialTime is how long opening new connections to node i takes on this
// machine now (TCP, the backend's start, authentication, one query), n at
// once: what a read waits for when its node's pool has to dial for n
// readers together (the client's SCRAM runs under -race too). The longest
// of them, the worst of two bursts, so that a bound derived from it
// follows the machine's load.
func dialTime(t *testing.T, ctx context.Context, i, n int) time.Duration {
	t.Helper()
	var (
		mu      sync.Mutex
		longest time.Duration
		failed  error
		wg      sync.WaitGroup
	)
	for range 2 {
		for range n {
			wg.Go(func() {
				start := time.Now()
				pc, err := pgx.Connect(ctx, testcluster.Cluster().NodeDSN(i))
				if err == nil {
					var one int
					err = pc.QueryRow(ctx, "SELECT 1").Scan(&one)
					_ = pc.Close(ctx)
				}
				mu.Lock()
				defer mu.Unlock()
				longest = max(longest, time.Since(start))
				if err != nil {
					failed = err
				}
			})
		}
		wg.Wait()
	}
	if failed != nil {
		t.Fatalf("dialling node %d to time it: %v", i, failed)
	}
	return longest
}
