package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// asMain makes the test binary behave as the pgreplica command, so that
// tests can run it as a process of its own (signals, exit status).
const asMain = "PGREPLICA_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		return
	}
	os.Exit(testcluster.Run(m, sandbox.Options{}))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runCmd runs the command line in-process.
func runCmd(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// noPassword fails t if text shows the sandbox password in any form.
func noPassword(t *testing.T, what, text string) {
	t.Helper()
	p := sandbox.DefaultPassword
	for _, s := range []string{p, url.QueryEscape(p), url.PathEscape(p), url.UserPassword("u", p).String()[2:], "Pa55"} {
		if strings.Contains(text, s) {
			t.Errorf("%s shows the password (%q):\n%s", what, s, text)
		}
	}
}

func TestHelpOnEveryCommand(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	for _, c := range commands {
		for _, flag := range []string{"--help", "-h"} {
			code, out, errOut := runCmd(t, ctx, c.name, flag)
			if code != 0 || !strings.HasPrefix(out, "Usage: pgreplica "+c.name) || errOut != "" {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q", c.name, flag, code, out, errOut)
			}
		}
	}
	if code, out, _ := runCmd(t, ctx, "--help"); code != 0 || !strings.Contains(out, "status") || !strings.Contains(out, "demo") {
		t.Errorf("--help: exit %d, %q", code, out)
	}
	if code, _, errOut := runCmd(t, ctx); code != 2 || !strings.Contains(errOut, "Usage") {
		t.Errorf("no command: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCmd(t, ctx, "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCmd(t, ctx, "status", "--bogus"); code != 2 || !strings.Contains(errOut, "bogus") {
		t.Errorf("status --bogus: exit %d, stderr %q", code, errOut)
	}
	t.Setenv("PGREPLICA_DSN", "")
	if code, _, errOut := runCmd(t, ctx, "status"); code != 2 || !strings.Contains(errOut, "PGREPLICA_DSN") {
		t.Errorf("status without a DSN: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCmd(t, ctx, "status", "postgres://u:Pa55w0rd@h/db?replica_polcy=x"); code != 2 ||
		!strings.Contains(errOut, "replica_polcy") || strings.Contains(errOut, "Pa55w0rd") {
		t.Errorf("status with a bad DSN: exit %d, stderr %q", code, errOut)
	}
}

var tableHeader = regexp.MustCompile(`(?m)^NODE +FROM +ROLE +STATE +LAG +LAG_BYTES +PROBE +RTT +IN_FLIGHT +STATEMENTS +ERRORS +HEDGES_WON/SENT +CAUSE$`)

// tableRows returns the rows of a status table by node address, without
// the FROM column (see tableFrom).
func tableRows(t *testing.T, out string) map[string][]string {
	rows := map[string][]string{}
	for addr, f := range tableFields(t, out) {
		rows[addr] = append([]string{f[0]}, f[2:]...)
	}
	return rows
}

// tableFrom returns the FROM column of a status table by node address.
func tableFrom(t *testing.T, out string) map[string]string {
	from := map[string]string{}
	for addr, f := range tableFields(t, out) {
		from[addr] = f[1]
	}
	return from
}

func tableFields(t *testing.T, out string) map[string][]string {
	t.Helper()
	loc := tableHeader.FindStringIndex(out)
	if loc == nil {
		t.Fatalf("no table header in:\n%s", out)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out[loc[1]:]), "\n") {
		f := strings.Fields(line)
		if len(f) < 13 {
			t.Fatalf("row %q has %d columns, want 13", line, len(f))
		}
		// CAUSE, the last column, may have spaces: "authentication failed (28P01)".
		rows[f[0]] = append(f[:12:12], strings.Join(f[12:], " "))
	}
	return rows
}

func TestStatusTable(t *testing.T) {
	cl := testcluster.Cluster()
	code, out, errOut := runCmd(t, ctxT(t, time.Minute), "status", cl.DSN())
	t.Logf("pgreplica status:\n%s", out)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if !strings.HasPrefix(out, "cluster healthy   primary "+cl.Nodes[0].Addr()+"   reads go to replicas\n") {
		t.Errorf("summary line: %q", strings.SplitN(out, "\n", 2)[0])
	}
	rows, from := tableRows(t, out), tableFrom(t, out)
	if len(rows) != len(cl.Nodes) {
		t.Fatalf("%d rows, want %d", len(rows), len(cl.Nodes))
	}
	for i, n := range cl.Nodes {
		r := rows[n.Addr()]
		if from[n.Addr()] != "dsn" {
			t.Errorf("FROM of %s = %q, want dsn", n.Addr(), from[n.Addr()])
		}
		wantRole := "replica"
		if i == 0 {
			wantRole = "primary"
		}
		if r == nil || r[1] != wantRole || r[2] != "healthy" || r[5] == "-" || r[6] == "-" {
			t.Errorf("row of %s = %v, want role %s, healthy, a probe time", n.Addr(), r, wantRole)
		}
		if i == 0 && (r[3] != "-" || r[4] != "-") {
			t.Errorf("the primary shows a lag: %v", r)
		}
	}
	noPassword(t, "the status table", out)
}

func TestStatusJSON(t *testing.T) {
	cl := testcluster.Cluster()
	t.Setenv("PGREPLICA_DSN", cl.DSN()) // the DSN from the environment
	code, out, errOut := runCmd(t, ctxT(t, time.Minute), "status", "--json")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	var rep pgreplica.HealthReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not a HealthReport: %v\n%s", err, out)
	}
	if rep.Status != pgreplica.HealthHealthy || rep.Primary != cl.Nodes[0].Addr() || !rep.PrimaryUp || rep.Degraded {
		t.Errorf("report = %+v", rep)
	}
	if len(rep.Nodes) != len(cl.Nodes) {
		t.Fatalf("%d nodes, want %d", len(rep.Nodes), len(cl.Nodes))
	}
	for i, n := range rep.Nodes {
		if n.Addr != cl.Nodes[i].Addr() || n.State != pgreplica.StateHealthy || n.LastProbe == nil || n.ProbeLatencySeconds <= 0 {
			t.Errorf("node %d = %+v", i, n)
		}
	}
	noPassword(t, "status --json", out)
}

func TestStatusOfAHealthEndpoint(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	db := testcluster.Open(t, "monitor_interval=100ms")
	for range 5 {
		if _, err := db.ExecContext(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	h, err := pgreplica.HealthHandlerOf(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	c, _ := pgreplica.ConnectorOf(ctx, db)
	for deadline := time.Now().Add(10 * time.Second); ; {
		probed := true
		for _, n := range c.Status().Nodes {
			probed = probed && !n.LastProbe.IsZero()
		}
		if probed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nodes not probed within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, out, errOut := runCmd(t, ctx, "status", srv.URL)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q\n%s", code, errOut, out)
	}
	primary := tableRows(t, out)[testcluster.Cluster().Nodes[0].Addr()]
	if primary == nil || primary[8] != "5" {
		t.Errorf("the primary's row %v should show the application's 5 statements:\n%s", primary, out)
	}

	srv404 := httptest.NewServer(http.NotFoundHandler())
	defer srv404.Close()
	if code, _, errOut := runCmd(t, ctx, "status", srv404.URL); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("a URL that is no health endpoint: exit %d, stderr %q", code, errOut)
	}
}

// closedPorts returns addresses on which nothing listens.
func closedPorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	return addrs
}

func TestStatusExitsNonZeroWhenThePrimaryIsUnreachable(t *testing.T) {
	addrs := closedPorts(t, 2)
	dsn := "postgres://app:Secr3tPa55@" + strings.Join(addrs, ",") + "/db?sslmode=disable&connect_timeout=2"
	code, out, errOut := runCmd(t, ctxT(t, time.Minute), "status", dsn)
	if code != 1 {
		t.Errorf("exit %d, want 1; stderr %q", code, errOut)
	}
	if !strings.HasPrefix(out, "cluster down") {
		t.Errorf("summary line %q, want cluster down", strings.SplitN(out, "\n", 2)[0])
	}
	for _, a := range addrs {
		if r := tableRows(t, out)[a]; r == nil || r[2] != "down" {
			t.Errorf("row of %s = %v, want down", a, r)
		}
	}
	if strings.Contains(out+errOut, "Secr3tPa55") {
		t.Errorf("the password is shown:\n%s%s", out, errOut)
	}
	code, out, _ = runCmd(t, ctxT(t, time.Minute), "status", "--json", dsn)
	var rep pgreplica.HealthReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Status != pgreplica.HealthDown {
		t.Errorf("--json: exit %d, err %v, report %+v", code, err, rep)
	}
}

func TestStatusWatchRefreshesUntilInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb testcluster.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"status", "--watch", "--interval", "50ms", "--json", testcluster.Cluster().DSN()}, &out, &errb)
	}()
	for deadline := time.Now().Add(30 * time.Second); strings.Count(out.String(), "\n") < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 3 reports within 30s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d, stderr %q", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("status --watch did not return after its context was cancelled")
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var rep pgreplica.HealthReport
		if err := json.Unmarshal([]byte(line), &rep); err != nil || rep.Status != pgreplica.HealthHealthy {
			t.Errorf("line %q: %v, %+v", line, err, rep)
		}
	}
}

// TestSandboxCommand runs `pgreplica sandbox` as a process, uses the DSN it
// prints and interrupts it.
func TestSandboxCommand(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	cmd := exec.CommandContext(ctx, os.Args[0], "sandbox", "--replicas", "1")
	cmd.Env = append(os.Environ(), asMain+"=1")
	var stderr testcluster.SyncBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var printed strings.Builder
	var dsn string
	var nodeAddrs []string
	sc := bufio.NewScanner(stdout)
	nodeLine := regexp.MustCompile(`^  (primary|replica\d+) +(127\.0\.0\.1:\d+)  postgres://`)
	for sc.Scan() {
		line := sc.Text()
		printed.WriteString(line + "\n")
		if v, ok := strings.CutPrefix(line, "  export PGREPLICA_DSN="); ok {
			dsn = strings.Trim(v, "'")
		}
		if m := nodeLine.FindStringSubmatch(line); m != nil {
			nodeAddrs = append(nodeAddrs, m[2])
		}
		if strings.HasPrefix(line, "Press Ctrl-C") {
			break
		}
	}
	t.Logf("pgreplica sandbox printed:\n%s", printed.String())
	rest := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(stdout)
		rest <- string(b)
		exited <- cmd.Wait()
	}()
	if dsn == "" || len(nodeAddrs) != 2 {
		cmd.Process.Kill()
		t.Fatalf("no DSN or not 2 nodes in the output; stderr:\n%s", stderr.String())
	}

	db, err := sql.Open("pgreplica", dsn)
	if err != nil {
		t.Fatal(err)
	}
	rctx, route := pgreplica.WithRoute(ctx)
	var one int
	if err := db.QueryRowContext(rctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Errorf("SELECT 1 through pgreplica: %v", err)
	}
	if route.Node() != nodeAddrs[1] {
		t.Errorf("SELECT 1 was served by %s, want the replica %s", route.Node(), nodeAddrs[1])
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE sandbox_cmd (x int)"); err != nil {
		t.Errorf("a write through pgreplica: %v", err)
	}
	db.Close()

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("after SIGINT: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("pgreplica sandbox did not exit within a minute of SIGINT")
	}
	if tail := <-rest; !strings.Contains(tail, "Done.") {
		t.Errorf("no goodbye after SIGINT: %q", tail)
	}
	for _, a := range nodeAddrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the sandbox exited", a)
		}
	}
}

func TestDemo(t *testing.T) {
	var out bytes.Buffer
	var errb testcluster.SyncBuffer
	began := time.Now()
	code := runDemo(ctxT(t, 3*time.Minute), nil, &out, &errb)
	t.Logf("pgreplica demo (%.1fs):\n%s", time.Since(began).Seconds(), out.String())
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	text := out.String()
	summary := regexp.MustCompile(`(?m)^requests (\d+) +failed requests (\d+) +stale read-backs (\d+)$`).FindStringSubmatch(text)
	if summary == nil {
		t.Fatal("no summary line")
	}
	if summary[2] != "0" || summary[3] != "0" {
		t.Errorf("failed %s, stale %s; want 0 and 0", summary[2], summary[3])
	}
	if summary[1] == "0" {
		t.Error("the demo made no requests")
	}
	for _, want := range []string{"replica1 is lagging", "replica1 served 0 of the statements started since it was seen lagging",
		"replica2 is down", "replica2 served 0 of the statements started since it was seen down", "reads come back to it", "demo took "} {
		if !strings.Contains(text, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	noPassword(t, "the demo's output", text)
}
