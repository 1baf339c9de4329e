// Command tail measures read latency through pgreplica while one replica
// stalls (issue 12): a sandbox primary and two streaming replicas on
// loopback, 8 readers doing point SELECTs by primary key with 2 ms of think
// time between reads, and replica1 stopped for 300 ms every 2 s (SIGSTOP to
// the postmaster and every backend, then SIGCONT: what an I/O stall looks
// like from outside). 300 ms is shorter than pgreplica's default probe
// timeout, so its monitor never calls the replica frozen.
//
//	go run ./bench/tail                               # healthy, stall, pgx-stall, 30 s each
//	go run ./bench/tail -scenarios stall -duration 60s
//	go run ./bench/tail -dsn-params 'hedge_after=off;hedge_after=auto'
//
// Scenarios:
//
//	healthy    pgreplica on the whole cluster, no stall
//	stall      pgreplica on the whole cluster, replica1 stalling
//	pgx-stall  database/sql with driver "pgx" straight to replica1, stalling
//
// -dsn-params adds query parameters to the cluster DSN of the pgreplica
// scenarios; with several variants separated by ";" (or the flag given
// more than once), every pgreplica scenario runs once per variant, one
// after the other against the same cluster. "-" stands for no extra
// parameters, so -dsn-params '-;hedge_after=auto' compares today's
// behaviour with the new key.
//
// It prints a markdown table (reads, errors, reads/s, p50, p99, p99.9 and
// max over an exact sort of every successful read's latency, reads of
// 100 ms or more, and which node served what share according to
// pgreplica's Connector.Status) and details under it. Run it as root on a
// machine with PostgreSQL server binaries (or a Docker engine): the
// sandbox runs PostgreSQL as the postgres OS user. On exit, Ctrl-C or an
// error it thaws the replica and removes the cluster.
package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx" for pgx-stall

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
)

const (
	selectSQL = "SELECT id, name, price FROM items WHERE id = $1"
	// stallNode is the replica that stalls (Nodes[1], "replica1").
	stallNode = 1
	// slowRead is the threshold of the "reads ≥ 100 ms" column.
	slowRead = 100 * time.Millisecond
)

var (
	flagScenarios = flag.String("scenarios", "healthy,stall,pgx-stall", "comma-separated scenarios to run: healthy, stall, pgx-stall")
	flagDuration  = flag.Duration("duration", 30*time.Second, "measured time per scenario")
	flagWarmup    = flag.Duration("warmup", 3*time.Second, "unmeasured reads before each scenario (no stall)")
	flagReaders   = flag.Int("readers", 8, "concurrent readers")
	flagThink     = flag.Duration("think", 2*time.Millisecond, "pause of each reader between two reads")
	flagStall     = flag.Duration("stall", 300*time.Millisecond, "how long replica1 stays stopped")
	flagPeriod    = flag.Duration("period", 2*time.Second, "one stall starts every period")
	flagRows      = flag.Int("rows", 10000, "rows in the items table")
	flagRounds    = flag.Int("rounds", 1, "run the whole scenario list this many times; the table pools the rounds")
	flagVerbose   = flag.Bool("v", false, "log the sandbox's steps")
	dsnParams     paramList
)

func init() {
	flag.Var(&dsnParams, "dsn-params", `extra DSN query parameters for the pgreplica scenarios, e.g. 'hedge_after=auto'; `+
		`several variants separated by ';' (or repeat the flag) run each pgreplica scenario once per variant; '-' is none`)
}

// paramList is the -dsn-params flag: one DSN query string per variant.
type paramList []string

func (p *paramList) String() string { return strings.Join(*p, ";") }

func (p *paramList) Set(v string) error {
	for _, s := range strings.Split(v, ";") {
		s = strings.TrimSpace(s)
		if s == "-" {
			s = ""
		}
		if s != "" {
			if _, err := url.ParseQuery(s); err != nil {
				return fmt.Errorf("%q is not a URL query (key=value&key=value): %v", s, err)
			}
		}
		*p = append(*p, s)
	}
	return nil
}

// scenario is one row of the table.
type scenario struct {
	kind   string // healthy, stall, pgx-stall
	params string // extra DSN query for pgreplica; "" for none
}

func (s scenario) pgreplica() bool { return s.kind != "pgx-stall" }
func (s scenario) stalls() bool    { return s.kind != "healthy" }

func (s scenario) label() string {
	name := map[string]string{
		"healthy":   "pgreplica, healthy cluster",
		"stall":     "pgreplica, one replica stalling",
		"pgx-stall": "pgx straight to the stalling replica",
	}[s.kind]
	if s.params != "" {
		name += ", `" + s.params + "`"
	}
	return name
}

// result accumulates one scenario over every round.
type result struct {
	sc        scenario
	latencies []time.Duration // successful reads
	elapsed   time.Duration   // measured wall time, summed over rounds
	errors    int
	errMsgs   []string // the first few distinct messages
	// statements per node (DSN order) from Connector.Status, measured
	// window only; nil for pgx.
	statements []uint64
	reroutes   map[string]uint64 // replica1's, by reason, and the cluster's hedges
	stalls     []time.Duration   // freeze call to thaw return
	procs      []int             // processes found stopped, per stall
	unstopped  int               // processes found running while frozen
	states     map[string]int    // replica1's state in Status, sampled
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./bench/tail [flags]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tail:", err)
		os.Exit(1)
	}
}

func run() error {
	scs, err := scenarios()
	if err != nil {
		return err
	}
	if *flagReaders < 1 || *flagRows < 1 || *flagRounds < 1 || *flagDuration <= 0 {
		return errors.New("-readers, -rows, -rounds and -duration must be positive")
	}
	if *flagStall <= 0 || *flagStall >= *flagPeriod {
		return errors.New("-stall must be positive and shorter than -period")
	}

	// Ctrl-C, SIGTERM or SIGHUP cancel ctx; everything below unwinds
	// through its defers (thaw, close the databases, remove the cluster).
	// The signals stay caught until run returns, so a second Ctrl-C does
	// not cut the cleanup short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	opts := sandbox.Options{Replicas: 2}
	if *flagVerbose {
		opts.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "sandbox: "+format+"\n", args...)
		}
	}
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	fmt.Fprintln(os.Stderr, "starting a primary and 2 replicas...")
	c, err := sandbox.Start(startCtx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "tail: interrupted; replica1 is thawed, removing the cluster")
		}
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "tail: removing the cluster:", err)
		}
	}()
	if err := seed(startCtx, c); err != nil {
		return err
	}
	pgVersion, _ := c.QueryInt(startCtx, 0, "SELECT current_setting('server_version_num')::int")

	results := make([]*result, len(scs))
	for i, sc := range scs {
		results[i] = &result{sc: sc, states: map[string]int{}, reroutes: map[string]uint64{}}
	}
	started := time.Now()
	for round := 1; round <= *flagRounds; round++ {
		for _, r := range results {
			fmt.Fprintf(os.Stderr, "round %d/%d: %s...\n", round, *flagRounds, r.sc.label())
			if err := runScenario(ctx, c, r); err != nil {
				if ctx.Err() != nil {
					return errors.New("interrupted; no table printed")
				}
				return fmt.Errorf("%s: %w", r.sc.label(), err)
			}
			n := len(r.latencies)
			fmt.Fprintf(os.Stderr, "  %d reads so far, %d errors\n", n, r.errors)
		}
	}
	report(os.Stdout, c, results, started, pgVersion)
	return nil
}

// scenarios expands -scenarios and -dsn-params into the table's rows.
func scenarios() ([]scenario, error) {
	variants := []string(dsnParams)
	if len(variants) == 0 {
		variants = []string{""}
	}
	var out []scenario
	seen := map[string]bool{}
	for _, k := range strings.Split(*flagScenarios, ",") {
		k = strings.TrimSpace(k)
		switch k {
		case "healthy", "stall":
			for _, v := range variants {
				out = append(out, scenario{kind: k, params: v})
			}
		case "pgx-stall":
			out = append(out, scenario{kind: k})
		case "all":
			return nil, errors.New(`-scenarios: list them ("healthy,stall,pgx-stall" is the default)`)
		default:
			return nil, fmt.Errorf("-scenarios: unknown scenario %q (healthy, stall, pgx-stall)", k)
		}
		if seen[k] {
			return nil, fmt.Errorf("-scenarios: %q given twice", k)
		}
		seen[k] = true
	}
	return out, nil
}

// seed creates items on the primary and waits until both replicas have
// replayed it.
func seed(ctx context.Context, c *sandbox.Cluster) error {
	fmt.Fprintf(os.Stderr, "seeding %d rows...\n", *flagRows)
	err := c.Exec(ctx, 0, fmt.Sprintf(`
		CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
		INSERT INTO items SELECT i, 'item ' || i, (i %% 1000) + 0.99 FROM generate_series(1, %d) i`, *flagRows))
	if err != nil {
		return err
	}
	// On its own: VACUUM cannot run inside a multi-statement string's
	// implicit transaction.
	if err := c.Exec(ctx, 0, "VACUUM ANALYZE items"); err != nil {
		return err
	}
	return c.WaitReplayed(ctx)
}

// runScenario opens a fresh *sql.DB, warms it up without a stall, then
// measures for -duration with the stall loop running if the scenario has
// one, and adds what it measured to r.
func runScenario(ctx context.Context, c *sandbox.Cluster, r *result) error {
	var (
		db   *sql.DB
		conn *pgreplica.Connector
		err  error
	)
	if r.sc.pgreplica() {
		dsn := c.DSN()
		if r.sc.params != "" {
			dsn += "&" + r.sc.params // c.DSN() already has ?sslmode=disable
		}
		db, err = sql.Open("pgreplica", dsn)
	} else {
		db, err = sql.Open("pgx", c.NodeDSN(stallNode))
	}
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(2 * *flagReaders)
	db.SetMaxIdleConns(2 * *flagReaders)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	if r.sc.pgreplica() {
		if conn, err = pgreplica.ConnectorOf(ctx, db); err != nil {
			return err
		}
		defer conn.Close()
		if err := waitProbed(ctx, conn); err != nil {
			return err
		}
	} else {
		var port int
		if err := db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			return err
		}
		if port != c.Nodes[stallNode].Port {
			return fmt.Errorf("pgx read served by port %d, want replica1's %d", port, c.Nodes[stallNode].Port)
		}
	}
	runtime.GC()

	// A watchdog: nothing should take this long; if it does, cancel the
	// reads rather than hang.
	rctx, cancel := context.WithTimeout(ctx, *flagWarmup+*flagDuration+time.Minute)
	defer cancel()

	warm := readAll(rctx, db, *flagWarmup)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if warm.errors > 0 {
		// The warm-up runs without a stall: an error there means the
		// scenario cannot measure anything (a DSN key the server refuses,
		// say), so stop instead of timing failures.
		return fmt.Errorf("%d of %d reads failed during the warm-up (no stall yet), first: %s",
			warm.errors, warm.errors+len(warm.latencies), strings.Join(quoteAll(warm.errMsgs), "; "))
	}

	var before []uint64
	var reroutesBefore map[string]uint64
	if conn != nil {
		before, reroutesBefore = counters(conn)
	}

	// The stall loop and the state sampler run for the measured window
	// only; both are waited for before returning.
	var (
		wg       sync.WaitGroup
		stallErr error
	)
	sctx, stopSide := context.WithCancel(rctx)
	defer func() {
		stopSide()
		wg.Wait()
	}()
	if r.sc.stalls() {
		wg.Go(func() { stallErr = stallLoop(sctx, c.Nodes[stallNode], r) })
	}
	var statesMu sync.Mutex
	if conn != nil {
		wg.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-sctx.Done():
					return
				case <-t.C:
				}
				st := conn.Status().Nodes[stallNode].State
				statesMu.Lock()
				r.states[st]++
				statesMu.Unlock()
			}
		})
	}

	m := readAll(rctx, db, *flagDuration)
	stopSide()
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if stallErr != nil {
		return stallErr
	}
	if rctx.Err() != nil {
		return errors.New("reads did not finish within a minute of the end of the window")
	}

	r.latencies = append(r.latencies, m.latencies...)
	r.elapsed += m.elapsed
	r.errors += m.errors
	for _, msg := range m.errMsgs {
		if len(r.errMsgs) < 5 && !slices.Contains(r.errMsgs, msg) {
			r.errMsgs = append(r.errMsgs, msg)
		}
	}
	if conn != nil {
		after, reroutesAfter := counters(conn)
		if r.statements == nil {
			r.statements = make([]uint64, len(after))
		}
		for i := range after {
			r.statements[i] += after[i] - before[i]
		}
		for k, v := range reroutesAfter {
			r.reroutes[k] += v - reroutesBefore[k]
		}
	}
	return nil
}

// waitProbed waits until pgreplica's monitor has probed every node, so
// that the warm-up routes by measured state, not by the DSN alone.
func waitProbed(ctx context.Context, conn *pgreplica.Connector) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		unknown := 0
		for _, n := range conn.Status().Nodes {
			if n.State == pgreplica.StateUnknown {
				unknown++
			}
		}
		if unknown == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgreplica's monitor has not probed %d node(s) after 15 s", unknown)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// counters reads pgreplica's per-node statement counts and replica1's
// reroute counts.
func counters(conn *pgreplica.Connector) ([]uint64, map[string]uint64) {
	st := conn.Status()
	stmts := make([]uint64, len(st.Nodes))
	for i, n := range st.Nodes {
		stmts[i] = n.Statements
	}
	// replica1's reroutes, and the hedges of the whole cluster alongside.
	rr := maps.Clone(st.Nodes[stallNode].Reroutes)
	for _, n := range st.Nodes {
		rr["hedges sent (all nodes)"] += n.HedgesSent
		rr["hedges won (all nodes)"] += n.HedgesWon
	}
	return stmts, rr
}

// measured is what readAll returns.
type measured struct {
	latencies []time.Duration
	elapsed   time.Duration
	errors    int
	errMsgs   []string
}

// readAll runs -readers readers for d: each picks a random id, times
// QueryRowContext(...).Scan, and sleeps -think. A read that starts before
// the end of the window is completed and counted. Only successful reads
// are latency samples; a read that returns another row than asked for is
// an error.
func readAll(ctx context.Context, db *sql.DB, d time.Duration) measured {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		m       measured
		nerrors atomic.Int64
	)
	start := time.Now()
	until := start.Add(d)
	// Per-reader capacity: one read per think time at most, plus slack.
	capacity := int(d/(*flagThink+100*time.Microsecond)) + 64
	for i := range *flagReaders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(i)))
			lat := make([]time.Duration, 0, capacity)
			var msgs []string
			var (
				id    int
				name  string
				price string // numeric arrives as text through pgx stdlib
			)
			for time.Now().Before(until) {
				want := 1 + rng.IntN(*flagRows)
				t0 := time.Now()
				err := db.QueryRowContext(ctx, selectSQL, want).Scan(&id, &name, &price)
				el := time.Since(t0)
				if err == nil && id != want {
					err = fmt.Errorf("asked for id %d, got %d", want, id)
				}
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					nerrors.Add(1)
					if len(msgs) < 5 {
						msgs = append(msgs, err.Error())
					}
				} else {
					lat = append(lat, el)
				}
				time.Sleep(*flagThink)
			}
			mu.Lock()
			m.latencies = append(m.latencies, lat...)
			for _, s := range msgs {
				if len(m.errMsgs) < 5 && !slices.Contains(m.errMsgs, s) {
					m.errMsgs = append(m.errMsgs, s)
				}
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	m.elapsed = time.Since(start)
	m.errors = int(nerrors.Load())
	return m
}

// stallLoop stops node every -period for -stall: the first stall starts
// period-stall after the window opens, so a 30 s window with the defaults
// holds 15 stalls. It checks every stall that the postmaster and all its
// children are really stopped, and it always leaves the node thawed.
func stallLoop(ctx context.Context, n *sandbox.Node, r *result) (err error) {
	defer func() {
		if terr := n.Thaw(); terr != nil && err == nil {
			err = terr
		}
	}()
	next := time.Now().Add(*flagPeriod - *flagStall)
	for {
		if !sleepUntil(ctx, next) {
			return nil
		}
		t0 := time.Now()
		if err := n.Freeze(); err != nil {
			return err
		}
		stopped, running := checkStopped(n)
		sleepUntil(ctx, t0.Add(*flagStall)) // cut short only by the end of the window
		if err := n.Thaw(); err != nil {
			return err
		}
		r.stalls = append(r.stalls, time.Since(t0))
		r.procs = append(r.procs, stopped)
		r.unstopped += running
		next = next.Add(*flagPeriod)
	}
}

// sleepUntil sleeps until t and reports whether ctx is still live.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// checkStopped counts, independently of the sandbox, the node's processes
// (its postmaster and the postmaster's children, every backend included)
// that are stopped and those that are not. It reads /proc and the node's
// postmaster.pid, so it knows only local nodes; for a Docker node (frozen
// by a container pause) it returns -1, 0.
func checkStopped(n *sandbox.Node) (stopped, running int) {
	if n.Dir == "" {
		return -1, 0
	}
	b, err := os.ReadFile(filepath.Join(n.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, 1
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, 1
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := procState(pid)
		if !ok || (pid != pm && ppid != pm) {
			continue
		}
		if state == "T" || state == "t" {
			stopped++
		} else if state != "Z" && state != "X" {
			running++
		}
	}
	return stopped, running
}

// procState reads the state and parent pid from /proc/pid/stat.
func procState(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command may contain ") "
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err == nil
}

// quantile is the nearest-rank quantile of sorted samples (the value at
// rank ceil(q*n)) and how many samples sit at that rank or above it.
func quantile(sorted []time.Duration, q float64) (time.Duration, int) {
	n := len(sorted)
	if n == 0 {
		return 0, 0
	}
	rank := int(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1], n - rank + 1
}

func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 1:
		return fmt.Sprintf("%.2f ms", v)
	case v < 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.0f ms", v)
	}
}

func nodeName(i int) string {
	switch i {
	case 0:
		return "primary"
	case stallNode:
		return "replica1"
	default:
		return "replica" + strconv.Itoa(i)
	}
}

func report(w *os.File, c *sandbox.Cluster, results []*result, started time.Time, pgVersion int64) {
	fmt.Fprintf(w, "\n`%s` (%s, %d round(s) of %s per scenario after %s of warm-up)\n\n",
		strings.TrimSpace("go run ./bench/tail "+shellJoin(os.Args[1:])), started.UTC().Format("2006-01-02 15:04 UTC"), *flagRounds, *flagDuration, *flagWarmup)
	fmt.Fprintf(w, "%d readers, %s think time, replica1 stopped %s every %s in the stall scenarios; "+
		"PostgreSQL %d, %s, GOMAXPROCS=%d, %d CPUs\n\n",
		*flagReaders, *flagThink, *flagStall, *flagPeriod, pgVersion, runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU())

	fmt.Fprintln(w, "| | reads | errors | reads/s | p50 | p99 | p99.9 | max | reads ≥ 100 ms | served by |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		lat := slices.Clone(r.latencies)
		slices.Sort(lat)
		p50, _ := quantile(lat, 0.50)
		p99, _ := quantile(lat, 0.99)
		p999, _ := quantile(lat, 0.999)
		var maxLat time.Duration
		if len(lat) > 0 {
			maxLat = lat[len(lat)-1]
		}
		slow := len(lat) - countBelow(lat, slowRead)
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %s | %s | %s | %s | %d | %s |\n",
			r.sc.label(), len(lat)+r.errors, r.errors, float64(len(lat)+r.errors)/r.elapsed.Seconds(),
			ms(p50), ms(p99), ms(p999), ms(maxLat), slow, shares(r, len(c.Nodes)))
	}

	fmt.Fprintln(w)
	for _, r := range results {
		lat := slices.Clone(r.latencies)
		slices.Sort(lat)
		_, tail := quantile(lat, 0.999)
		fmt.Fprintf(w, "- %s: %d successful reads in %.1f s; p99.9 is the %s-slowest read (%d samples at or above it)",
			r.sc.label(), len(lat), r.elapsed.Seconds(), ordinal(tail), tail)
		if r.errors > 0 {
			fmt.Fprintf(w, "; %d errors, first: %s", r.errors, strings.Join(quoteAll(r.errMsgs), "; "))
		}
		if len(r.stalls) > 0 {
			lo, hi := slices.Min(r.stalls), slices.Max(r.stalls)
			fmt.Fprintf(w, "; %d stalls of %s–%s (freeze to thaw)", len(r.stalls), ms(lo), ms(hi))
			if plo := slices.Min(r.procs); plo >= 0 {
				fmt.Fprintf(w, ", %d–%d processes stopped each time, %d found running while frozen",
					plo, slices.Max(r.procs), r.unstopped)
			}
		}
		if r.statements != nil {
			fmt.Fprintf(w, "; statements by node %s", counts(r.statements))
			if len(r.states) > 0 {
				fmt.Fprintf(w, "; pgreplica's monitor saw replica1 as %s (sampled every 100 ms)", stateList(r.states))
			}
			if rr := nonzero(r.reroutes); rr != "" {
				fmt.Fprintf(w, "; reroutes away from replica1, and hedges: %s", rr)
			}
		}
		fmt.Fprintln(w)
	}
}

// countBelow returns how many samples of sorted are shorter than d.
func countBelow(sorted []time.Duration, d time.Duration) int {
	i, _ := slices.BinarySearch(sorted, d)
	return i
}

func shares(r *result, nodes int) string {
	if r.statements == nil {
		return "replica1 100% (single-host DSN)"
	}
	var total uint64
	for _, v := range r.statements {
		total += v
	}
	parts := make([]string, 0, nodes)
	for i, v := range r.statements {
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(v) / float64(total)
		}
		parts = append(parts, fmt.Sprintf("%s %.0f%%", nodeName(i), pct))
	}
	return strings.Join(parts, " · ")
}

func counts(v []uint64) string {
	parts := make([]string, len(v))
	for i, n := range v {
		parts[i] = fmt.Sprintf("%s %d", nodeName(i), n)
	}
	return strings.Join(parts, ", ")
}

func stateList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d×", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func nonzero(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// shellJoin quotes args for a shell where they need it.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " ;&|'\"$*?()<>") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func quoteAll(msgs []string) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = strconv.Quote(m)
	}
	return out
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return strconv.Itoa(n) + suffix
}
