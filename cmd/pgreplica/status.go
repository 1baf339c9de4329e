package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgreplica/pgreplica"
)

const statusAbout = `
Prints each node of the cluster as pgreplica sees it: role, state (healthy,
lagging, down, frozen, full), replication lag, the latest probe's round trip
and the smoothed one (RTT, what replica_policy=nearest compares), the traffic
counters of the connector that reports them, and why a node is down, frozen
or full (CAUSE: a short reason and the SQLSTATE, e.g. "authentication failed
(28P01)", "database does not exist (3D000)", "connection refused",
"timeout", "TLS error"; never the error's text, so never a password).

FROM is where a node came from: dsn (a host of the DSN), or the discovery
that reported it (dns, patroni, custom: see discovery= and docs/operations.md).

The first line sums the cluster up: healthy (the primary is up and replicas
serve reads, or the DSN names only the primary), degraded (the primary is up
and serves the reads: no replica is usable), down (the primary does not
answer) or no_primary (no node answers as writable: every node that answers
is a standby, so writes fail).

SOURCE is either
  - a pgreplica DSN (primary first, e.g. postgres://user:pass@h1:5432,h2:5432/db):
    status opens its own connector, waits up to --wait for the first probe of
    every node (and, when a replica is behind, for max_replica_lag to tell
    whether it lags) and prints what it found. Its traffic counters are its
    own, so they are 0; or
  - the http(s):// address of an application's pgreplica.HealthHandler: status
    prints that application's view, counters included.
Without SOURCE, $PGREPLICA_DSN is used, which keeps the password off the
command line (and out of ps).

Exit status: 0 when the primary is up (healthy, or degraded: reads have
fallen back to it), 1 when the primary is unreachable (down), when there is
no primary (no_primary) or SOURCE cannot be read, 2 for a usage error.`

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", "[--json] [--watch [--interval D]] [--wait D] [SOURCE]", statusAbout)
	asJSON := fs.Bool("json", false, "print the HealthReport as JSON (one document per line with --watch)")
	watch := fs.Bool("watch", false, "print again every --interval until interrupted (Ctrl-C)")
	interval := fs.Duration("interval", 2*time.Second, "refresh interval for --watch")
	wait := fs.Duration("wait", 3*time.Second, "how long to wait for the first probe of every node (DSN only)")
	pos, code, ok := fs.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	source := os.Getenv("PGREPLICA_DSN")
	switch {
	case len(pos) == 1:
		source = pos[0]
	case len(pos) > 1:
		return fs.usageError(stderr, "want one SOURCE, got %d arguments", len(pos))
	case source == "":
		return fs.usageError(stderr, "no SOURCE given and $PGREPLICA_DSN is not set")
	}
	if *interval <= 0 {
		return fs.usageError(stderr, "--interval must be positive")
	}

	var get func(context.Context) (pgreplica.HealthReport, error)
	if strings.HasPrefix(source, "http://") || strings.HasPrefix(source, "https://") {
		get = func(ctx context.Context) (pgreplica.HealthReport, error) { return fetchReport(ctx, source) }
	} else {
		cfg, err := pgreplica.ParseConfig(source) // its errors never quote the password
		if err != nil {
			fmt.Fprintln(stderr, "pgreplica status:", err)
			return 2
		}
		// A short-lived observer: probe often so that the first figures
		// come quickly, whatever monitor_interval the DSN asks of the
		// application.
		if cfg.MonitorInterval == 0 || cfg.MonitorInterval > 200*time.Millisecond {
			cfg.MonitorInterval = 200 * time.Millisecond
		}
		// What it finds is the report, not log lines on stderr.
		cfg.Logger = slog.New(slog.DiscardHandler)
		c, err := pgreplica.NewConnector(*cfg)
		if err != nil {
			fmt.Fprintln(stderr, "pgreplica status:", err)
			return 1
		}
		defer c.Close()
		waitProbed(ctx, c, cfg, *wait)
		get = func(context.Context) (pgreplica.HealthReport, error) {
			return pgreplica.NewHealthReport(c.Status()), nil
		}
	}

	var ticker *time.Ticker
	if *watch {
		ticker = time.NewTicker(*interval)
		defer ticker.Stop()
	}
	code = 0
	for first := true; ; first = false {
		rep, err := get(ctx)
		switch {
		case err != nil:
			fmt.Fprintln(stderr, "pgreplica status:", err)
			code = 1
		case *asJSON:
			b, _ := json.Marshal(rep)
			if !*watch {
				b, _ = json.MarshalIndent(rep, "", "  ")
			}
			fmt.Fprintf(stdout, "%s\n", b)
		default:
			if *watch {
				if !first {
					fmt.Fprintln(stdout)
				}
				fmt.Fprintf(stdout, "%s  (every %s, Ctrl-C to stop)\n", time.Now().Format("15:04:05"), *interval)
			}
			writeTable(stdout, rep)
		}
		if err == nil {
			code = 0
			if rep.Status == pgreplica.HealthDown || rep.Status == pgreplica.HealthNoPrimary {
				code = 1
			}
		}
		if !*watch {
			return code
		}
		select {
		case <-ctx.Done():
			return code
		case <-ticker.C:
		}
	}
}

// waitProbed returns once every node has answered two probes or is known
// to be down or frozen, or after max. Lag is measured from the primary's WAL
// history, which a new connector lacks: when a replica is behind, it then
// keeps watching until the lag has had max_replica_lag to show (still
// within max), so that a lagging replica is reported as lagging.
func waitProbed(ctx context.Context, c *pgreplica.Connector, cfg *pgreplica.Config, max time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
			return true
		}
	}
	var probedAt time.Time
	for probedAt.IsZero() {
		done := true
		for _, n := range c.Status().Nodes {
			if n.LastProbe.IsZero() && n.State != pgreplica.StateDown && n.State != pgreplica.StateFrozen {
				done = false
			}
		}
		if done {
			probedAt = time.Now()
		} else if !pause() {
			return
		}
	}
	// The first probe of a node includes connecting to it: wait for a
	// second one, so that PROBE shows a query's round trip.
	first := map[string]time.Time{}
	for _, n := range c.Status().Nodes {
		first[n.Addr] = n.LastProbe
	}
	for again := false; !again; {
		again = true
		for _, n := range c.Status().Nodes {
			if up := n.State == pgreplica.StateHealthy || n.State == pgreplica.StateLagging || n.State == pgreplica.StateFull; up && !n.LastProbe.After(first[n.Addr]) {
				again = false
			}
		}
		if !again && !pause() {
			return
		}
	}
	maxLag := cfg.MaxReplicaLag
	if maxLag == 0 {
		maxLag = pgreplica.DefaultMaxReplicaLag
	}
	if maxLag < 0 {
		return
	}
	settled := probedAt.Add(maxLag + 2*cfg.MonitorInterval)
	for time.Now().Before(settled) {
		behind := false
		for _, n := range c.Status().Nodes {
			if n.Role == pgreplica.RoleReplica && n.State == pgreplica.StateHealthy && n.LagBytes > 0 {
				behind = true
			}
		}
		if !behind || !pause() {
			return
		}
	}
}

// fetchReport reads a HealthReport from a HealthHandler.
func fetchReport(ctx context.Context, url string) (pgreplica.HealthReport, error) {
	var rep pgreplica.HealthReport
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return rep, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return rep, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusServiceUnavailable {
		return rep, fmt.Errorf("%s answered %s", url, res.Status)
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&rep); err != nil {
		return rep, fmt.Errorf("%s: not a pgreplica health report: %w", url, err)
	}
	if rep.Status == "" {
		return rep, errors.New(url + ": not a pgreplica health report (no status)")
	}
	return rep, nil
}

// writeTable prints a report as a summary line and one row per node.
func writeTable(w io.Writer, rep pgreplica.HealthReport) {
	primary := rep.Primary
	switch {
	case primary == "":
		primary = "none (no node answers as writable: writes fail)"
	case !rep.PrimaryUp:
		primary += " (unreachable)"
	}
	reads := "replicas"
	switch {
	case rep.Degraded && rep.Primary == "":
		reads = "no node (none is usable)"
	case rep.Degraded:
		reads = "primary (no usable replica)"
	case len(rep.Nodes) == 1 && rep.Primary != "":
		reads = "primary (the DSN names no replica)"
	}
	fmt.Fprintf(w, "cluster %s   primary %s   reads go to %s\n", rep.Status, primary, reads)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tFROM\tROLE\tSTATE\tLAG\tLAG_BYTES\tPROBE\tRTT\tIN_FLIGHT\tSTATEMENTS\tERRORS\tHEDGES_WON/SENT\tCAUSE")
	for _, n := range rep.Nodes {
		state := n.State
		if n.LastProbe == nil && (state == pgreplica.StateHealthy || state == pgreplica.StateLagging) {
			state = "unknown" // not probed yet: the snapshot's "healthy" is only the DSN's word
		}
		lag, lagBytes := "-", "-"
		if n.Role == pgreplica.RoleReplica && (state == pgreplica.StateHealthy || state == pgreplica.StateLagging) {
			lag, lagBytes = seconds(n.LagSeconds), strconv.FormatInt(n.LagBytes, 10)
		}
		probe, rtt := "-", "-"
		if n.LastProbe != nil {
			probe, rtt = seconds(n.ProbeLatencySeconds), seconds(n.RTTSeconds)
		}
		cause := "-"
		if n.Cause != nil && n.Cause.Reason != "" {
			cause = n.Cause.String()
		}
		from := string(n.Source)
		if from == "" {
			from = "-" // a report from an older pgreplica
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d/%d\t%s\n",
			n.Addr, from, n.Role, state, lag, lagBytes, probe, rtt, n.InFlight, n.Statements, n.Errors, n.HedgesWon, n.HedgesSent, cause)
	}
	tw.Flush()
}

// seconds formats a duration given in seconds compactly: 0s, 850µs, 1.2ms, 3.40s.
func seconds(s float64) string {
	switch {
	case s == 0:
		return "0s"
	case s < 1e-3:
		return fmt.Sprintf("%.0fµs", s*1e6)
	case s < 1:
		return fmt.Sprintf("%.1fms", s*1e3)
	default:
		return fmt.Sprintf("%.2fs", s)
	}
}
