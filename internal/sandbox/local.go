package sandbox

// The local backend: PostgreSQL server binaries of this machine, one
// postmaster per node, driven with initdb, pg_ctl and pg_basebackup.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgreplica/pgreplica/internal/proc"
)

// serverPrograms are the programs the local backend needs in one directory.
var serverPrograms = []string{"initdb", "pg_ctl", "pg_basebackup", "postgres"}

// findBinDir finds the directory of the PostgreSQL server programs:
// `pg_config --bindir`, else the highest-versioned /usr/lib/postgresql/*/bin,
// else the directory of initdb on PATH. A candidate counts only if it holds
// every program of serverPrograms (Debian's libpq-dev ships a pg_config
// whose bindir has no server).
func findBinDir() (string, bool) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServerPrograms(dir) {
			return dir, true
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, dir := range dirs {
		if hasServerPrograms(dir) {
			return dir, true
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if dir := filepath.Dir(p); hasServerPrograms(dir) {
			return dir, true
		}
	}
	return "", false
}

func hasServerPrograms(dir string) bool {
	if dir == "" {
		return false
	}
	for _, p := range serverPrograms {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// compareVersions compares dotted version strings numerically ("9.6" < "15").
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return strings.Compare(a, b)
}

// localEnv runs PostgreSQL programs, as the postgres OS user when the test
// process is root (PostgreSQL refuses to run as root).
type localEnv struct {
	bin     string
	cred    *syscall.Credential // nil unless running as root
	secrets []string            // redacted from command output
}

func newLocalEnv(bin string, secrets ...string) (*localEnv, error) {
	e := &localEnv{bin: bin, secrets: secrets}
	if os.Geteuid() != 0 {
		return e, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("sandbox: running as root, so PostgreSQL must run as the postgres OS user: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("sandbox: postgres OS user: %w", err)
	}
	e.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	return e, nil
}

// own makes path belong to the postgres OS user when running as root.
func (e *localEnv) own(path string) error {
	if e.cred == nil {
		return nil
	}
	return os.Chown(path, int(e.cred.Uid), int(e.cred.Gid))
}

func (e *localEnv) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return e.own(path)
}

func (e *localEnv) appendFile(path, content string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	return errors.Join(err, f.Close())
}

// run runs a PostgreSQL program in dir and returns its combined output.
// The error names step and carries the output's tail, secrets redacted.
func (e *localEnv) run(ctx context.Context, step, dir string, env []string, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, prog), args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	if e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// pg_ctl start leaves a postmaster behind. It redirects the
	// postmaster's output to the log file, but never let a stray
	// inherited pipe make Wait block for the server's lifetime.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	text := redact(out.String(), e.secrets...)
	if err != nil {
		if step != "" {
			prog = step + ": " + prog
		}
		return text, fmt.Errorf("%s: %w%s", prog, err, indentTail(text, 15))
	}
	return text, nil
}

// cleanEnv is the process environment without libpq/PostgreSQL variables
// (PGHOST, PGPORT, PGDATA, ...) that would redirect the programs.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// indentTail returns the last n lines of s, indented, after a newline; or
// "" when s is blank.
func indentTail(s string, n int) string {
	if strings.TrimSpace(s) == "" {
		return ""
	}
	return "\n\t" + strings.ReplaceAll(lastLines(s, n), "\n", "\n\t")
}

// checkReachable fails with a clear message when the postgres OS user could
// not traverse to dir (e.g. TMPDIR under /root, mode 0700).
func (e *localEnv) checkReachable(dir string) error {
	if e.cred == nil {
		return nil
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok {
			perm := fi.Mode().Perm()
			var can bool
			switch {
			case st.Uid == e.cred.Uid:
				can = perm&0o100 != 0
			case st.Gid == e.cred.Gid:
				can = perm&0o010 != 0
			default:
				can = perm&0o001 != 0
			}
			if !can {
				return fmt.Errorf("the postgres OS user cannot traverse %s (mode %#o) to reach %s; set TMPDIR to a directory it can reach, such as /tmp", d, perm, dir)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// baseDirPrefix names the sandbox directories in os.TempDir().
const baseDirPrefix = "pgreplica-sandbox-"

// sharedConf is appended to the primary's postgresql.conf; pg_basebackup
// copies it to the replicas. Node-specific settings come from node.conf.
const sharedConf = `
# --- pgreplica sandbox ---
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
# reconnect quickly after the primary restarts
wal_retrieve_retry_interval = 200ms
max_connections = 300
shared_buffers = 32MB
fsync = off
full_page_writes = off
synchronous_commit = on
password_encryption = scram-sha-256
include_if_exists = '../node.conf'
`

const hbaConf = `# pgreplica sandbox: password auth over TCP; the Unix socket lives in a
# directory only the server's OS user can enter.
local all         all                trust
local replication all                trust
host  all         all  127.0.0.1/32  scram-sha-256
host  replication all  127.0.0.1/32  scram-sha-256
`

// startLocal builds the cluster under a new temporary directory.
func startLocal(ctx context.Context, c *Cluster, bin string, replicas int) error {
	env, err := newLocalEnv(bin, c.superPassword, c.password)
	if err != nil {
		return err
	}
	reapStale(c.logf)

	base, err := os.MkdirTemp("", baseDirPrefix)
	if err != nil {
		return fmt.Errorf("sandbox: create base directory: %w", err)
	}
	c.id = strings.TrimPrefix(filepath.Base(base), baseDirPrefix)
	c.teardown = func() error {
		if err := os.RemoveAll(base); err != nil {
			return fmt.Errorf("remove %s: %w", base, err)
		}
		return nil
	}
	if err := errors.Join(
		env.checkReachable(base),
		writeOwner(base),
		env.own(base),
	); err != nil {
		return fmt.Errorf("sandbox: prepare %s: %w", base, err)
	}
	c.logf("sandbox in %s, PostgreSQL programs from %s", base, bin)

	c.addNode = func(_ context.Context, n *Node) error {
		dir := filepath.Join(base, "node"+strconv.Itoa(n.Index))
		n.Dir, n.SocketDir = dir, dir
		n.impl = &localNode{env: env, n: n, data: filepath.Join(dir, "data"), log: filepath.Join(dir, "server.log")}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		return env.own(dir)
	}
	ports, err := reservePorts(replicas + 1)
	if err != nil {
		return err
	}
	for i := 0; i <= replicas; i++ {
		n := &Node{Index: i, Port: ports[i], c: c, standby: i > 0}
		c.Nodes = append(c.Nodes, n)
		if err := c.addNode(ctx, n); err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
	}

	// Primary: initdb, configure, start, create the app role/database.
	p := c.Nodes[0]
	pl := p.impl.(*localNode)
	c.logf("initdb primary on %s", p.Addr())
	pwfile := filepath.Join(p.Dir, "pwfile")
	if err := env.writeFile(pwfile, c.superPassword+"\n"); err != nil {
		return fmt.Errorf("sandbox: initdb primary: %w", err)
	}
	_, err = env.run(ctx, "sandbox: initdb primary", p.Dir, nil, "initdb",
		"-D", pl.data, "-U", superuser, "--pwfile="+pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--no-locale", "--no-sync")
	os.Remove(pwfile)
	if err != nil {
		return err
	}
	if err := errors.Join(
		env.writeFile(filepath.Join(pl.data, "pg_hba.conf"), hbaConf),
		env.appendFile(filepath.Join(pl.data, "postgresql.conf"), sharedConf+c.extraConf+"\n"),
	); err != nil {
		return fmt.Errorf("sandbox: configure primary: %w", err)
	}
	if err := pl.firstStart(ctx); err != nil {
		return err
	}
	if err := c.bootstrap(ctx); err != nil {
		return err
	}

	// Replicas: base backups in parallel, each with its own slot.
	if err := c.createSlots(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, replicas+1)
	for _, n := range c.Nodes[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[n.Index] = n.impl.(*localNode).createReplica(ctx, p)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if replicas > 0 {
		c.logf("wait for %d replica(s) to stream", replicas)
	}
	if err := c.waitStreaming(ctx); err != nil {
		return err
	}
	return c.WaitReplayed(ctx)
}

// writeOwner records this process in <base>/owner so that a later Start
// can tell a leftover sandbox from a live one.
func writeOwner(base string) error {
	st, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(base, "owner"), fmt.Appendf(nil, "%d %s\n", os.Getpid(), st), 0o644)
}

// reapStale kills the servers of, and removes, sandbox directories in
// os.TempDir() whose owning process is gone: the leftovers of a test binary
// that died without Close (a go test timeout, SIGKILL). Sandboxes of live
// processes are left alone. Errors are ignored: this is housekeeping.
func reapStale(logf func(string, ...any)) {
	bases, _ := filepath.Glob(filepath.Join(os.TempDir(), baseDirPrefix+"*"))
	for _, base := range bases {
		b, err := os.ReadFile(filepath.Join(base, "owner"))
		if err != nil {
			continue // being created, or not ours
		}
		var pid int
		var start string
		if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
			continue
		}
		if st, err := procStartTime(pid); err == nil && st == start {
			continue // owner alive
		}
		logf("remove stale sandbox %s (owner pid %d is gone)", base, pid)
		removeTaggedRules(filepath.Base(base))
		pidfiles, _ := filepath.Glob(filepath.Join(base, "node*", "data", "postmaster.pid"))
		for _, pf := range pidfiles {
			data := filepath.Dir(pf)
			// Only a process running in that data directory is its
			// postmaster: the pid may have been reused since.
			if pm, ok := proc.PostmasterPID(data); ok && proc.Cwd(pm) == realPath(data) {
				killTree(pm, syscall.SIGKILL)
			}
		}
		os.RemoveAll(base)
	}
}

// localNode is a postmaster of this machine.
type localNode struct {
	env       *localEnv
	n         *Node
	data, log string
	stopped   []int // pids SIGSTOPped by freeze
}

func (l *localNode) writeNodeConf() error {
	conf := fmt.Sprintf("# pgreplica sandbox node %d\nport = %d\nunix_socket_directories = %s\ncluster_name = %s\n",
		l.n.Index, l.n.Port, quoteLiteral(l.n.Dir), quoteLiteral("pgreplica-"+l.n.name()))
	return l.env.writeFile(filepath.Join(l.n.Dir, "node.conf"), conf)
}

// firstStart writes node.conf and starts the server, moving to another
// free port when the chosen one was taken in the meantime.
func (l *localNode) firstStart(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		if err := l.writeNodeConf(); err != nil {
			return fmt.Errorf("sandbox: configure %s: %w", l.n.name(), err)
		}
		l.n.c.logf("start %s on %s", l.n.name(), l.n.Addr())
		err := l.start(ctx)
		if err == nil {
			return nil
		}
		if attempt == 5 || !strings.Contains(l.logTail(20), "Address already in use") {
			return fmt.Errorf("sandbox: start %s: %w", l.n.name(), err)
		}
		ports, perr := reservePorts(1)
		if perr != nil {
			return perr
		}
		l.n.c.logf("port %d of %s is taken, retrying on %d", l.n.Port, l.n.name(), ports[0])
		l.n.Port = ports[0]
	}
}

// createReplica takes a base backup of primary into this node's data
// directory and starts it as a streaming standby. pg_basebackup -R writes
// standby.signal, primary_conninfo (with application_name=replicaN and the
// password) and primary_slot_name to postgresql.auto.conf. The slot exists
// already (createSlots).
func (l *localNode) createReplica(ctx context.Context, primary *Node) error {
	name := l.n.name()
	l.n.c.logf("pg_basebackup %s from %s", name, primary.Addr())
	_, err := l.env.run(ctx, "sandbox: pg_basebackup "+name, l.n.Dir,
		[]string{"PGPASSWORD=" + l.n.c.superPassword}, "pg_basebackup",
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port), "-U", superuser,
		"-d", "application_name="+name,
		"-D", l.data, "-R", "-X", "stream", "-c", "fast", "-S", name, "--no-sync")
	if err != nil {
		return err
	}
	return l.firstStart(ctx)
}

// rejoin makes the data directory a standby of primary (standby.signal and
// primary_conninfo, following the latest timeline by default) and starts
// it.
func (l *localNode) rejoin(ctx context.Context, primary *Node) error {
	if err := l.env.writeFile(filepath.Join(l.data, "standby.signal"), ""); err != nil {
		return err
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s application_name=%s",
		primary.Port, superuser, l.n.c.superPassword, l.n.name())
	if err := l.env.appendFile(filepath.Join(l.data, "postgresql.auto.conf"),
		"primary_conninfo = "+quoteLiteral(conninfo)+"\n"); err != nil {
		return err
	}
	return l.start(ctx)
}

func (l *localNode) pgctl(ctx context.Context, args ...string) error {
	_, err := l.env.run(ctx, "", l.n.Dir, nil, "pg_ctl", append([]string{"-D", l.data}, args...)...)
	return err
}

func (l *localNode) start(ctx context.Context) error {
	err := l.pgctl(ctx, "-l", l.log, "-w", "-t", "60", "start")
	if err != nil {
		if tail := l.logTail(15); tail != "" {
			err = fmt.Errorf("%w\n\tserver log %s:%s", err, l.log, indentTail(tail, 15))
		}
		return err
	}
	return nil
}

func (l *localNode) stop(ctx context.Context) error {
	return l.pgctl(ctx, "-m", "immediate", "-w", "-t", "30", "stop")
}

func (l *localNode) stopClean(ctx context.Context) error {
	return l.pgctl(ctx, "-m", "fast", "-w", "-t", "60", "stop")
}

func (l *localNode) promote(ctx context.Context) error {
	return l.pgctl(ctx, "-w", "-t", "60", "promote")
}

func (l *localNode) running() bool {
	pid, ok := proc.PostmasterPID(l.data)
	return ok && proc.Alive(pid)
}

func (l *localNode) freeze() error {
	pm, ok := proc.PostmasterPID(l.data)
	if !ok {
		return errors.New("no postmaster.pid")
	}
	// The postmaster first, so that it forks nothing new meanwhile.
	l.stopped = []int{pm}
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP postmaster %d: %w", pm, err)
	}
	for _, pid := range childrenOf(pm) {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err == nil {
			l.stopped = append(l.stopped, pid)
		}
	}
	// Signals are delivered asynchronously: wait until all are stopped.
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range l.stopped {
		for proc.State(pid) != "T" && proc.Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

func (l *localNode) thaw() error {
	pids := slices.Clone(l.stopped)
	if pm, ok := proc.PostmasterPID(l.data); ok {
		pids = append(pids, pm)
		pids = append(pids, childrenOf(pm)...)
	}
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("SIGCONT %d: %w", pid, err))
		}
	}
	l.stopped = nil
	return errors.Join(errs...)
}

func (l *localNode) destroy() error {
	pm, ok := proc.PostmasterPID(l.data)
	if !ok || !proc.Alive(pm) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := l.stop(ctx)
	if err == nil && !proc.Alive(pm) {
		return nil
	}
	// pg_ctl failed: kill the postmaster and its children outright.
	killTree(pm, syscall.SIGKILL)
	for i := 0; i < 100 && proc.Alive(pm); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if proc.Alive(pm) {
		return fmt.Errorf("postmaster %d survives SIGKILL (pg_ctl: %v)", pm, err)
	}
	return nil
}

func (l *localNode) logTail(n int) string {
	b, err := os.ReadFile(l.log)
	if err != nil {
		return ""
	}
	return redact(lastLines(string(b), n), l.env.secrets...)
}

// killTree sends sig to pid and to its direct children (every server
// process is a child of the postmaster).
func killTree(pid int, sig syscall.Signal) {
	kids := childrenOf(pid)
	syscall.Kill(pid, sig)
	for _, k := range kids {
		syscall.Kill(k, sig)
	}
}

func realPath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

func procStartTime(pid int) (string, error) {
	f, err := proc.Stat(pid)
	if err != nil {
		return "", err
	}
	if len(f) < 20 {
		return "", fmt.Errorf("short /proc/%d/stat", pid)
	}
	return f[19], nil
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := strconv.Itoa(pid)
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, err := proc.Stat(p); err == nil && len(f) > 1 && f[1] == want {
			kids = append(kids, p)
		}
	}
	return kids
}
