// Command fleet measures what a fleet of service instances using pgreplica
// costs each database server (issue 17): N independent *sql.DB, each with
// its own pgreplica Connector (its own pools and monitor), against a
// sandbox primary and two streaming replicas on loopback.
//
//	go run ./bench/fleet                                  # idle and light at N = 1, 10, 100
//	go run ./bench/fleet -n 1,10,100,500 -duration 30s
//	go run ./bench/fleet -modes refused -n 60 -duration 60s
//
// Modes:
//
//	idle     the instances open their DBs and do nothing
//	light    each instance runs one plain read a second (random phase)
//	refused  the instances reach replica1 as a role whose CONNECTION LIMIT
//	         is -limit (0: every connection refused with 53300)
//
// For idle and light it prints, per node and per instance: the backends
// the instances hold (pg_stat_activity, application_name=fleet, sampled
// every 2 s), their statements per second other than the workload's
// (pg_stat_statements: the monitoring cost), the workload's own
// statements, and the server's CPU (utime+stime of the postmaster and of every child, live
// ones from /proc/<pid>/stat, exited ones from the postmaster's
// cutime+cstime). A row with N = 0 gives the servers' own baseline. The
// tool's own process CPU is reported too (the client side of the fleet).
//
// For refused it counts replica1's "connection received" lines
// (log_connections) in its server log, by second since the instances
// opened, and prints the attempts per second in the first 5 s and after, the busiest 10 s
// after the first 5 s, and replica1's CPU over the same span.
//
// The sandbox runs with shared_preload_libraries=pg_stat_statements and
// max_connections raised for the largest N. It needs the local sandbox
// backend (PostgreSQL binaries on this machine, run as root): the CPU and
// log figures read the servers' /proc entries and log files.
package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
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

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
)

const (
	appName      = "fleet"
	workloadSQL  = "SELECT /* fleet-workload */ inet_server_port()"
	refusedRole  = "fleet_refused"
	refusedPass  = "fleet-refused-pw"
	refusedNode  = 1
	firstSeconds = 5 // the refused mode's grace period, as in issue 17
)

var (
	flagN        = flag.String("n", "1,10,100", "comma-separated instance counts")
	flagModes    = flag.String("modes", "idle,light", "comma-separated modes: idle, light, refused")
	flagDuration = flag.Duration("duration", 30*time.Second, "measured window per run")
	flagSettle   = flag.Duration("settle", 10*time.Second, "time between opening the instances and measuring (refused: none)")
	flagRamp     = flag.Duration("ramp", 0, "spread the instances' opening over this long (0: 20 ms per instance, at most 10 s; refused: at once, and its 5 s grace counts from the first)")
	flagLimit    = flag.Int("limit", 0, "refused mode: CONNECTION LIMIT of the role the instances use on replica1")
	flagParams   = flag.String("dsn-params", "", "extra DSN query parameters for every instance, e.g. monitor_interval=2s")
	flagVerbose  = flag.Bool("v", false, "log the sandbox's steps")
)

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./bench/fleet [flags]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func run() error {
	var ns []int
	for _, s := range strings.Split(*flagN, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-n: %q is not a positive count", s)
		}
		ns = append(ns, n)
	}
	modes := strings.Split(*flagModes, ",")
	for i, m := range modes {
		modes[i] = strings.TrimSpace(m)
		if !slices.Contains([]string{"idle", "light", "refused"}, modes[i]) {
			return fmt.Errorf("-modes: unknown mode %q (idle, light, refused)", m)
		}
	}
	raiseFileLimit()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	// Room for every instance's probe connection and read pools on each
	// node, the admin connections, and the walsenders.
	maxConns := max(300, 3*slices.Max(ns)+100)
	opts := sandbox.Options{Replicas: 2, Conf: fmt.Sprintf(`
max_connections = %d
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
pg_stat_statements.max = 10000
log_connections = on
`, maxConns)}
	if *flagVerbose {
		opts.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, "sandbox: "+format+"\n", args...) }
	}
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	fmt.Fprintln(os.Stderr, "starting a primary and 2 replicas...")
	c, err := sandbox.Start(startCtx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "fleet: removing the cluster:", err)
		}
	}()
	if c.Nodes[0].Dir == "" {
		return errors.New("the sandbox runs in Docker: this tool reads the servers' /proc and log files, and needs the local backend")
	}
	if err := c.Exec(startCtx, 0, fmt.Sprintf(`CREATE EXTENSION pg_stat_statements;
		CREATE ROLE %s LOGIN PASSWORD '%s'`, refusedRole, refusedPass)); err != nil {
		return err
	}
	if err := c.WaitReplayed(startCtx); err != nil {
		return err
	}
	admins := make([]*pgx.Conn, len(c.Nodes))
	for i := range c.Nodes {
		if admins[i], err = pgx.Connect(startCtx, c.AdminDSN(i)); err != nil {
			return err
		}
		defer admins[i].Close(context.Background())
	}
	pgVersion, _ := c.QueryInt(startCtx, 0, "SELECT current_setting('server_version_num')::int")
	started := time.Now()

	var rows []row
	var refused []refusedResult
	if slices.Contains(modes, "idle") || slices.Contains(modes, "light") {
		fmt.Fprintln(os.Stderr, "baseline: no instances...")
		r, err := measure(ctx, c, admins, "baseline", 0)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	for _, mode := range modes {
		for _, n := range ns {
			fmt.Fprintf(os.Stderr, "%s, N=%d...\n", mode, n)
			if mode == "refused" {
				r, err := measureRefused(ctx, c, admins, n)
				if err != nil {
					return fmt.Errorf("%s N=%d: %w", mode, n, err)
				}
				refused = append(refused, r)
				continue
			}
			r, err := measure(ctx, c, admins, mode, n)
			if err != nil {
				return fmt.Errorf("%s N=%d: %w", mode, n, err)
			}
			rows = append(rows, r)
			fmt.Fprintf(os.Stderr, "  %s N=%d: backends %v, monitoring stmts/s %.2f, workload stmts/s %.2f, server CPU ms/s %.1f, client CPU ms/s %.1f, reads %d, errors %d\n",
				mode, n, r.backendsAvg, r.monStmts, r.workStmts, r.cpuMs, r.clientCPUms, r.reads, r.readErrs)
		}
	}
	report(rows, refused, pgVersion, started)
	return nil
}

// instance is one service instance: its own *sql.DB and Connector.
type instance struct {
	db   *sql.DB
	conn *pgreplica.Connector
}

// openFleet opens n instances, spread over ramp. refusedReplica makes
// each reach replica1 as refusedRole.
func openFleet(c *sandbox.Cluster, n int, ramp time.Duration, refusedReplica bool) ([]instance, error) {
	dsn := c.DSN() + "&application_name=" + appName
	if *flagParams != "" {
		dsn += "&" + *flagParams
	}
	fleet := make([]instance, 0, n)
	for i := range n {
		cfg, err := pgreplica.ParseConfig(dsn)
		if err != nil {
			closeFleet(fleet)
			return nil, err
		}
		if refusedReplica {
			cc := cfg.Replicas[refusedNode-1].ConnConfig
			cc.User, cc.Password = refusedRole, refusedPass
		}
		conn, err := pgreplica.NewConnector(*cfg)
		if err != nil {
			closeFleet(fleet)
			return nil, err
		}
		fleet = append(fleet, instance{db: sql.OpenDB(conn), conn: conn})
		if ramp > 0 && i < n-1 {
			time.Sleep(ramp / time.Duration(n))
		}
	}
	return fleet, nil
}

func closeFleet(fleet []instance) {
	var wg sync.WaitGroup
	for _, in := range fleet {
		wg.Go(func() { in.db.Close() })
	}
	wg.Wait()
}

// row is one measured run of idle or light: per node, in DSN order.
type row struct {
	mode        string
	n           int
	seconds     float64
	backendsAvg []float64
	backendsMax []int
	monStmts    []float64 // per second: the instances' statements other than the workload's
	workStmts   []float64 // per second: the workload's
	cpuMs       []float64 // server CPU, ms per second
	reads       int64     // workload reads that succeeded
	readErrs    int64
	clientCPUms float64 // this process, ms per second
}

// snapshot is one node's counters at one instant.
type snapshot struct {
	mon, work int64
	cpuTicks  int64
}

func takeSnapshot(ctx context.Context, c *sandbox.Cluster, admin *pgx.Conn, i int) (snapshot, error) {
	var s snapshot
	err := admin.QueryRow(ctx, `
		SELECT coalesce(sum(calls) FILTER (WHERE query NOT LIKE '%fleet-workload%'), 0)::bigint,
		       coalesce(sum(calls) FILTER (WHERE query LIKE '%fleet-workload%'), 0)::bigint
		FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
		WHERE r.rolname IN ($1, $2)`, sandbox.DefaultUser, refusedRole).Scan(&s.mon, &s.work)
	if err != nil {
		return s, fmt.Errorf("node %d: pg_stat_statements: %w", i, err)
	}
	s.cpuTicks, err = serverTicks(c.Nodes[i])
	return s, err
}

// backends counts the instances' backends on a node.
func backends(ctx context.Context, admin *pgx.Conn) (int, error) {
	var n int
	err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, appName).Scan(&n)
	return n, err
}

func measure(ctx context.Context, c *sandbox.Cluster, admins []*pgx.Conn, mode string, n int) (row, error) {
	r := row{mode: mode, n: n}
	ramp := *flagRamp
	if ramp == 0 {
		ramp = min(time.Duration(n)*20*time.Millisecond, 10*time.Second)
	}
	fleet, err := openFleet(c, n, ramp, false)
	if err != nil {
		return r, err
	}
	defer closeFleet(fleet)

	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	var reads, readErrs atomic.Int64
	var measuring atomic.Bool
	if mode == "light" {
		for _, in := range fleet {
			loadWG.Go(func() {
				select { // a random phase: a fleet's reads are not in step
				case <-time.After(rand.N(time.Second)):
				case <-stopLoad:
					return
				}
				t := time.NewTicker(time.Second)
				defer t.Stop()
				for {
					var port int
					// Bounded: with no deadline a read falling back to a
					// primary that does not answer its connection attempt
					// would wait for ever (pgreplica sets no connect
					// timeout for the primary).
					rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					err := in.db.QueryRowContext(rctx, workloadSQL).Scan(&port)
					cancel()
					if measuring.Load() {
						if err != nil {
							if readErrs.Add(1) <= 3 {
								fmt.Fprintln(os.Stderr, "  read:", err)
							}
						} else {
							reads.Add(1)
						}
					}
					select {
					case <-t.C:
					case <-stopLoad:
						return
					}
				}
			})
		}
	}
	defer func() { close(stopLoad); loadWG.Wait() }()

	if n > 0 {
		select {
		case <-time.After(*flagSettle):
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	nodes := len(c.Nodes)
	before := make([]snapshot, nodes)
	for i := range nodes {
		if before[i], err = takeSnapshot(ctx, c, admins[i], i); err != nil {
			return r, err
		}
	}
	cpu0 := processCPU()
	t0 := time.Now()
	measuring.Store(true)
	r.backendsAvg, r.backendsMax = make([]float64, nodes), make([]int, nodes)
	samples := 0
	for deadline := t0.Add(*flagDuration); time.Now().Before(deadline); {
		for i := range nodes {
			b, err := backends(ctx, admins[i])
			if err != nil {
				return r, err
			}
			r.backendsAvg[i] += float64(b)
			r.backendsMax[i] = max(r.backendsMax[i], b)
		}
		samples++
		select {
		case <-time.After(min(2*time.Second, time.Until(deadline))):
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	measuring.Store(false)
	r.seconds = time.Since(t0).Seconds()
	r.clientCPUms = (processCPU() - cpu0).Seconds() * 1000 / r.seconds
	r.reads, r.readErrs = reads.Load(), readErrs.Load()
	for i := range nodes {
		after, err := takeSnapshot(ctx, c, admins[i], i)
		if err != nil {
			return r, err
		}
		b := before[i]
		r.backendsAvg[i] /= float64(samples)
		// The tool's own queries run as the superuser: not counted.
		r.monStmts = append(r.monStmts, float64(after.mon-b.mon)/r.seconds)
		r.workStmts = append(r.workStmts, float64(after.work-b.work)/r.seconds)
		r.cpuMs = append(r.cpuMs, float64(after.cpuTicks-b.cpuTicks)*1000/clockTicks/r.seconds)
	}
	return r, nil
}

// refusedResult is one run of the refused mode.
type refusedResult struct {
	n           int
	limit       int
	seconds     float64
	firstRate   float64 // refused attempts per second in the first 5 s
	afterRate   float64 // ... after the first 5 s
	busiest10s  float64 // the busiest 10 s after the first 5 s, per second
	perSecond   []int
	cpuMsAfter  float64 // replica1's CPU after the first 5 s, ms per second
	cpuMsBefore float64 // replica1's CPU with no instance (baseline), ms per second
	reads       int64
	readErrs    int64
	replicaRead [3]int64 // reads served, per node
}

func measureRefused(ctx context.Context, c *sandbox.Cluster, admins []*pgx.Conn, n int) (refusedResult, error) {
	r := refusedResult{n: n, limit: *flagLimit}
	if err := c.Exec(ctx, 0, fmt.Sprintf("ALTER ROLE %s CONNECTION LIMIT %d", refusedRole, *flagLimit)); err != nil {
		return r, err
	}
	if err := c.WaitReplayed(ctx); err != nil {
		return r, err
	}
	// The idle servers' own CPU, for comparison.
	t, err := serverTicks(c.Nodes[refusedNode])
	if err != nil {
		return r, err
	}
	time.Sleep(3 * time.Second)
	t2, err := serverTicks(c.Nodes[refusedNode])
	if err != nil {
		return r, err
	}
	r.cpuMsBefore = float64(t2-t) * 1000 / clockTicks / 3

	logPath := filepath.Join(c.Nodes[refusedNode].Dir, "server.log")
	logStart, err := fileSize(logPath)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	fleet, err := openFleet(c, n, *flagRamp, true)
	if err != nil {
		return r, err
	}
	defer closeFleet(fleet)
	// One read a second per instance, as in light: reads must not open
	// connections to a node that refuses them either.
	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	var served [3]atomic.Int64
	var readErrs atomic.Int64
	for _, in := range fleet {
		loadWG.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				var port int
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := in.db.QueryRowContext(rctx, workloadSQL).Scan(&port)
				cancel()
				if err != nil {
					readErrs.Add(1)
				} else {
					for i, nd := range c.Nodes {
						if nd.Port == port {
							served[i].Add(1)
						}
					}
				}
				select {
				case <-t.C:
				case <-stopLoad:
					return
				}
			}
		})
	}
	defer func() { close(stopLoad); loadWG.Wait() }()

	select {
	case <-time.After(firstSeconds * time.Second):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	cpu5, err := serverTicks(c.Nodes[refusedNode])
	if err != nil {
		return r, err
	}
	t5 := time.Now()
	select {
	case <-time.After(*flagDuration):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	cpuEnd, err := serverTicks(c.Nodes[refusedNode])
	if err != nil {
		return r, err
	}
	end := time.Now()
	r.seconds = end.Sub(t0).Seconds()
	r.cpuMsAfter = float64(cpuEnd-cpu5) * 1000 / clockTicks / end.Sub(t5).Seconds()
	for i := range served {
		r.replicaRead[i] = served[i].Load()
	}
	r.readErrs = readErrs.Load()

	times, err := refusals(logPath, logStart)
	if err != nil {
		return r, err
	}
	secs := int(r.seconds)
	r.perSecond = make([]int, secs+1)
	for _, at := range times {
		s := int(at.Sub(t0).Seconds())
		if s >= 0 && s <= secs {
			r.perSecond[s]++
		}
	}
	first, after := 0, 0
	for s, k := range r.perSecond {
		if s < firstSeconds {
			first += k
		} else if s < secs {
			after += k
		}
	}
	r.firstRate = float64(first) / firstSeconds
	r.afterRate = float64(after) / float64(secs-firstSeconds)
	for s := firstSeconds; s+10 <= secs; s++ {
		sum := 0
		for _, k := range r.perSecond[s : s+10] {
			sum += k
		}
		r.busiest10s = max(r.busiest10s, float64(sum)/10)
	}
	return r, nil
}

// refusals returns the times of the connection attempts logged after
// offset: PostgreSQL's default log_line_prefix starts with "%m ", e.g.
// "2026-12-07 00:50:01.123 UTC [1234] FATAL:  too many connections for role".
func refusals(path string, offset int64) ([]time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return nil, err
	}
	var out []time.Time
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// Every attempt forks a backend that logs "connection received";
		// one refused by the limit logs "too many connections for role"
		// too, unless the client gave up first (on a loaded machine the
		// authentication can outlast the 2 s connect timeout): count the
		// attempts. Only the instances (and the tool's one admin
		// connection, opened before) connect to replica1.
		if !strings.Contains(line, "connection received:") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		at, err := time.Parse("2006-01-02 15:04:05.000 MST", f[0]+" "+f[1]+" "+f[2])
		if err != nil {
			return nil, fmt.Errorf("%s: unexpected log line prefix %q: %w", path, line, err)
		}
		out = append(out, at)
	}
	return out, sc.Err()
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// serverTicks is the CPU time of a node's server: the postmaster's own,
// its exited children's (cutime+cstime: the postmaster reaps them) and its
// live children's.
func serverTicks(n *sandbox.Node) (int64, error) {
	b, err := os.ReadFile(filepath.Join(n.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	pm, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	st, err := procStat(pm)
	if err != nil {
		return 0, err
	}
	total := st.utime + st.stime + st.cutime + st.cstime
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		st, err := procStat(pid)
		if err != nil || st.ppid != int64(pm) {
			continue // gone, or not a backend of this server
		}
		total += st.utime + st.stime
	}
	return total, nil
}

type stat struct{ ppid, utime, stime, cutime, cstime int64 }

func procStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. f[0] is the state, f[1] ppid, f[11..14] utime, stime,
	// cutime, cstime.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return stat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var v [5]int64
	for i, k := range []int{1, 11, 12, 13, 14} {
		if v[i], err = strconv.ParseInt(f[k], 10, 64); err != nil {
			return stat{}, err
		}
	}
	return stat{ppid: v[0], utime: v[1], stime: v[2], cutime: v[3], cstime: v[4]}, nil
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

var nodeNames = []string{"primary", "replica1", "replica2"}

func report(rows []row, refused []refusedResult, pgVersion int64, started time.Time) {
	host, _ := os.Hostname()
	fmt.Printf("fleet: %s, %s/%s, %d CPUs (GOMAXPROCS %d), PostgreSQL %d, host %s; %s measured windows",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), pgVersion, host, *flagDuration)
	if *flagParams != "" {
		fmt.Printf(", DSN params `%s`", *flagParams)
	}
	fmt.Printf("; total run %s\n\n", time.Since(started).Round(time.Second))
	if len(rows) > 0 {
		fmt.Println("Per node: backends held by the instances (mean over the window, max), their statements per second other than the workload's (monitoring, from pg_stat_statements), the workload's statements per second, server CPU in ms per second. Per instance: the same divided by N.")
		fmt.Println()
		fmt.Println("| mode | N | node | backends (max) | per instance | monitoring stmts/s | per instance | workload stmts/s | server CPU ms/s | per instance | client CPU ms/s |")
		fmt.Println("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		var base []float64
		for _, r := range rows {
			if r.mode == "baseline" {
				base = r.cpuMs
			}
			for i := range r.cpuMs {
				per := func(v float64) string {
					if r.n == 0 {
						return "–"
					}
					return fmt.Sprintf("%.3f", v/float64(r.n))
				}
				cpuPer := "–"
				if r.n > 0 && base != nil {
					cpuPer = fmt.Sprintf("%.3f", (r.cpuMs[i]-base[i])/float64(r.n))
				}
				client := ""
				if i == 0 {
					client = fmt.Sprintf("%.1f", r.clientCPUms)
				}
				fmt.Printf("| %s | %d | %s | %.1f (%d) | %s | %.2f | %s | %.2f | %.1f | %s | %s |\n",
					r.mode, r.n, nodeNames[i], r.backendsAvg[i], r.backendsMax[i], per(r.backendsAvg[i]),
					r.monStmts[i], per(r.monStmts[i]), r.workStmts[i], r.cpuMs[i], cpuPer, client)
			}
		}
		fmt.Println()
		fmt.Println("Server CPU per instance is (node CPU − the baseline row's) / N; CPU is counted in 10 ms ticks, so at small N it is mostly noise. The client CPU column is this whole process (every instance, the tool's sampling) in ms per second.")
		for _, r := range rows {
			if r.mode == "light" {
				fmt.Printf("light N=%d: %d reads in %.1f s (%.2f per instance per second), %d errors\n", r.n, r.reads, r.seconds, float64(r.reads)/r.seconds/float64(r.n), r.readErrs)
			}
		}
		fmt.Println()
	}
	for _, r := range refused {
		fmt.Printf("refused: N=%d instances reach %s as a role with CONNECTION LIMIT %d; %.0f s from opening them\n\n", r.n, nodeNames[refusedNode], r.limit, r.seconds)
		fmt.Println("| refused attempts/s, first 5 s | after 5 s (mean) | busiest 10 s after 5 s | replica1 CPU ms/s after 5 s | replica1 CPU ms/s, no instances |")
		fmt.Println("|---:|---:|---:|---:|---:|")
		fmt.Printf("| %.1f | %.2f | %.2f | %.1f | %.1f |\n\n", r.firstRate, r.afterRate, r.busiest10s, r.cpuMsAfter, r.cpuMsBefore)
		fmt.Printf("refused attempts by second: %v\n", r.perSecond)
		fmt.Printf("reads: primary %d, replica1 %d, replica2 %d, errors %d\n\n", r.replicaRead[0], r.replicaRead[1], r.replicaRead[2], r.readErrs)
	}
}
