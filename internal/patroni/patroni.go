// Package patroni starts a real, throwaway Patroni cluster for tests, as
// internal/sandbox starts plain PostgreSQL: one etcd server (Debian's
// etcd-server) and three Patroni members (Debian's patroni, with
// python3-etcd) managing PostgreSQL servers of this machine, everything on
// free 127.0.0.1 ports.
//
// Everything lives under one os.MkdirTemp directory:
//
//	<base>/owner               pid and start time of the test process
//	<base>/etcd/               etcd's data directory; etcd.log
//	<base>/memberN/patroni.yml the member's Patroni configuration
//	<base>/memberN/data        its PostgreSQL data directory
//	<base>/memberN/patroni.log Patroni's output
//
// When the test process is root, etcd, Patroni and PostgreSQL run as the
// postgres OS user (PostgreSQL refuses root). Patroni starts each
// postmaster in a session of its own, so killing Patroni leaves PostgreSQL
// running: Close kills the Patroni processes, then each postmaster found
// in a data directory, then etcd, and removes the directory. If a test
// binary dies without Close (a go test timeout), the next Start does the
// same for every leftover directory whose owner process is gone.
//
// The DCS settings are those design-notes.md measured failovers with: ttl
// 10, loop_wait 1, retry_timeout 4, and primary_start_timeout 0 (a crashed
// primary is failed over, not restarted in place).
package patroni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgreplica/pgreplica/internal/proc"
)

// ErrUnavailable is wrapped by Start's error when etcd, Patroni or the
// PostgreSQL server programs are not installed.
var ErrUnavailable = errors.New("patroni: etcd, patroni or PostgreSQL server programs not installed")

// Defaults of Options.
const (
	DefaultMembers  = 3
	DefaultUser     = "pgreplica"
	DefaultPassword = "patroni-Pa55:w@rd"
	DefaultDatabase = "pgreplica"
)

const (
	superuser     = "postgres"
	replUser      = "replicator"
	baseDirPrefix = "pgreplica-patroni-"
)

// Options configures Start. The zero value is usable.
type Options struct {
	// Members is the number of Patroni members; 0 means DefaultMembers.
	Members int
	// SynchronousMode starts the cluster with Patroni's synchronous_mode
	// on (Cluster.SetSynchronousMode changes it later).
	SynchronousMode bool
	// Logf, when set, receives one line per step.
	Logf func(format string, args ...any)
}

// Cluster is a running etcd server and its Patroni members.
type Cluster struct {
	// Members in the order they were started; their names are member0,
	// member1, ….
	Members []*Member
	// Scope is the Patroni cluster name (scope).
	Scope string

	base                     string
	bin                      string // PostgreSQL server programs
	cred                     *syscall.Credential
	etcdPort, etcdPeerPort   int
	etcd                     *exec.Cmd
	etcdDone                 chan struct{}
	user, password, database string
	superPassword, replPass  string
	logf                     func(string, ...any)

	closeOnce sync.Once
	closeErr  error
}

// Member is one Patroni member and the PostgreSQL server it manages.
type Member struct {
	Name string
	// Port is its PostgreSQL port, APIPort its REST API port.
	Port, APIPort int
	Dir           string

	c    *Cluster
	mu   sync.Mutex
	cmd  *exec.Cmd     // the running patroni process, nil when killed
	done chan struct{} // closed when cmd exited
}

// Addr is the member's PostgreSQL host:port.
func (m *Member) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port)) }

// APIURL is the member's REST API endpoint, http://127.0.0.1:port.
func (m *Member) APIURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(m.APIPort))
}

func (m *Member) data() string { return filepath.Join(m.Dir, "data") }

// Start starts etcd and the members and returns once there is a leader and
// every other member streams from it. On error everything already started
// is killed and removed; the error wraps ErrUnavailable when a program is
// missing.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Members == 0 {
		opts.Members = DefaultMembers
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	for _, prog := range []string{"etcd", "patroni", "patronictl"} {
		if _, err := exec.LookPath(prog); err != nil {
			return nil, fmt.Errorf("%w: %s not on PATH (apt-get install etcd-server patroni python3-etcd)", ErrUnavailable, prog)
		}
	}
	c := &Cluster{
		bin: bin, logf: logf,
		user: DefaultUser, password: DefaultPassword, database: DefaultDatabase,
		superPassword: randomHex(16), replPass: randomHex(16),
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("patroni: running as root, so PostgreSQL must run as the postgres OS user: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	reapStale(logf)
	started := time.Now()
	if err := c.start(ctx, opts); err != nil {
		if cerr := c.Close(); cerr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
		}
		return nil, err
	}
	logf("patroni cluster %s ready in %s: %d members, etcd on 127.0.0.1:%d",
		c.Scope, time.Since(started).Round(time.Millisecond), len(c.Members), c.etcdPort)
	return c, nil
}

func (c *Cluster) start(ctx context.Context, opts Options) error {
	base, err := os.MkdirTemp("", baseDirPrefix)
	if err != nil {
		return fmt.Errorf("patroni: create base directory: %w", err)
	}
	c.base = base
	c.Scope = "pgr-" + strings.TrimPrefix(filepath.Base(base), baseDirPrefix)
	if err := errors.Join(c.own(base), writeOwner(base)); err != nil {
		return fmt.Errorf("patroni: prepare %s: %w", base, err)
	}
	ports, err := reservePorts(2 + 2*opts.Members)
	if err != nil {
		return err
	}
	c.etcdPort, c.etcdPeerPort = ports[0], ports[1]
	for i := range opts.Members {
		m := &Member{
			Name: "member" + strconv.Itoa(i), Port: ports[2+2*i], APIPort: ports[3+2*i],
			Dir: filepath.Join(base, "member"+strconv.Itoa(i)), c: c,
		}
		if err := os.Mkdir(m.Dir, 0o700); err != nil {
			return fmt.Errorf("patroni: %w", err)
		}
		if err := errors.Join(c.own(m.Dir), c.writeFile(filepath.Join(m.Dir, "patroni.yml"), c.memberConf(m, opts.SynchronousMode))); err != nil {
			return fmt.Errorf("patroni: configure %s: %w", m.Name, err)
		}
		c.Members = append(c.Members, m)
	}
	if err := c.startEtcd(ctx); err != nil {
		return err
	}
	// member0 first, so that it bootstraps the cluster (the others would
	// wait for whoever wins the initialize key anyway; starting them
	// together only makes three initdb race).
	if err := c.Members[0].StartPatroni(); err != nil {
		return err
	}
	if _, err := c.waitLeader(ctx, nil); err != nil {
		return err
	}
	for _, m := range c.Members[1:] {
		if err := m.StartPatroni(); err != nil {
			return err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return err
	}
	return c.bootstrapApp(ctx)
}

// memberConf is member m's patroni.yml.
func (c *Cluster) memberConf(m *Member, syncMode bool) string {
	return fmt.Sprintf(`scope: %[1]s
name: %[2]s
log:
  level: INFO
restapi:
  listen: 127.0.0.1:%[3]d
  connect_address: 127.0.0.1:%[3]d
etcd3:
  hosts: 127.0.0.1:%[4]d
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    primary_start_timeout: 0
    synchronous_mode: %[5]t
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 100
        fsync: "off"
        full_page_writes: "on"
  initdb:
    - encoding: UTF8
    - no-locale
    - auth-host: scram-sha-256
    - auth-local: trust
  pg_hba:
    - local all all trust
    - host replication %[6]s 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:%[7]d
  connect_address: 127.0.0.1:%[7]d
  data_dir: %[8]s
  bin_dir: %[9]s
  pgpass: %[10]s
  authentication:
    superuser:
      username: %[11]s
      password: %[12]s
    replication:
      username: %[6]s
      password: %[13]s
  parameters:
    unix_socket_directories: %[14]s
`, c.Scope, m.Name, m.APIPort, c.etcdPort, syncMode, replUser, m.Port, m.data(), c.bin,
		filepath.Join(m.Dir, "pgpass"), superuser, c.superPassword, c.replPass, m.Dir)
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	dir := filepath.Join(c.base, "etcd")
	if err := errors.Join(os.Mkdir(dir, 0o700), c.own(dir)); err != nil {
		return fmt.Errorf("patroni: etcd directory: %w", err)
	}
	client := "http://127.0.0.1:" + strconv.Itoa(c.etcdPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.etcdPeerPort)
	cmd, done, err := c.spawn(filepath.Join(dir, "etcd.log"), "etcd",
		"--name", "etcd0", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "etcd0="+peer, "--initial-cluster-state", "new",
		"--log-level", "warn")
	if err != nil {
		return fmt.Errorf("patroni: start etcd: %w", err)
	}
	c.etcd, c.etcdDone = cmd, done
	c.logf("etcd on %s", client)
	return poll(ctx, 30*time.Second, "etcd to answer on "+client, func() (bool, error) {
		select {
		case <-done:
			return false, fmt.Errorf("etcd exited:%s", c.tail(filepath.Join(dir, "etcd.log")))
		default:
		}
		resp, err := httpGet(ctx, client+"/version")
		return err == nil && len(resp) > 0, nil
	})
}

// StartPatroni starts the member's Patroni (again, after KillPatroni).
func (m *Member) StartPatroni() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	cmd, done, err := m.c.spawn(filepath.Join(m.Dir, "patroni.log"), "patroni", filepath.Join(m.Dir, "patroni.yml"))
	if err != nil {
		return fmt.Errorf("patroni: start %s: %w", m.Name, err)
	}
	m.cmd, m.done = cmd, done
	m.c.logf("patroni %s: REST %s, PostgreSQL %s", m.Name, m.APIURL(), m.Addr())
	return nil
}

// KillPatroni kills the member's Patroni with SIGKILL and waits for it to
// exit. Its PostgreSQL server keeps running (Patroni started it in a
// session of its own); the leader key expires after ttl.
func (m *Member) KillPatroni() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.done
	m.cmd, m.done = nil, nil
}

// CrashPostgres stops the member's PostgreSQL server with pg_ctl -m
// immediate, as a crash would (its Patroni keeps running: with
// primary_start_timeout 0 a crashed leader is failed over).
func (m *Member) CrashPostgres(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(m.c.bin, "pg_ctl"), "-D", m.data(), "-m", "immediate", "-w", "-t", "30", "stop")
	cmd.Env = cleanEnv()
	if m.c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: m.c.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("patroni: pg_ctl stop %s: %w: %s", m.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PostgresRunning reports whether the member's postmaster is alive.
func (m *Member) PostgresRunning() bool {
	pid, ok := proc.PostmasterPID(m.data())
	return ok && proc.Alive(pid)
}

// Member returns the member called name, or nil.
func (c *Cluster) Member(name string) *Member {
	for _, m := range c.Members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// DSN is a multi-host application DSN listing members in the order given:
// postgres://user:pass@127.0.0.1:P,…/db?sslmode=disable.
func (c *Cluster) DSN(members ...*Member) string {
	return c.dsn(c.user, c.password, c.database, members...)
}

// AdminDSN is the superuser DSN of one member, on the application database.
func (c *Cluster) AdminDSN(m *Member) string {
	return c.dsn(superuser, c.superPassword, c.database, m)
}

func (c *Cluster) dsn(user, password, db string, members ...*Member) string {
	hosts := make([]string, len(members))
	for i, m := range members {
		hosts[i] = m.Addr()
	}
	u := url.URL{
		Scheme: "postgres", User: url.UserPassword(user, password),
		Host: strings.Join(hosts, ","), Path: "/" + db, RawQuery: "sslmode=disable",
	}
	return u.String()
}

// bootstrapApp creates the application role (a member of pg_monitor, as
// the sandbox's) and database on the leader.
func (c *Cluster) bootstrapApp(ctx context.Context) error {
	leader, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.dsn(superuser, c.superPassword, "postgres", leader))
	if err != nil {
		return fmt.Errorf("patroni: connect to the leader: %w", err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE pg_monitor", c.user, strings.ReplaceAll(c.password, "'", "''")),
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", c.database, c.user),
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("patroni: bootstrap the application role: %w", err)
		}
	}
	// Every member must have replayed the new database before a test
	// connects to it (a probe would find it missing: 3D000).
	for _, m := range c.Members {
		if err := poll(ctx, time.Minute, m.Name+" to have the application database", func() (bool, error) {
			conn, err := pgx.Connect(ctx, c.DSN(m))
			if err != nil {
				return false, nil
			}
			conn.Close(context.Background())
			return true, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// Close kills every Patroni, then every postmaster, then etcd, and removes
// the base directory. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, m := range c.Members {
			m.KillPatroni()
		}
		for _, m := range c.Members {
			if err := killPostmaster(m.data()); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
			}
		}
		if c.etcd != nil {
			c.etcd.Process.Kill()
			<-c.etcdDone
		}
		if c.base != "" {
			// Anything else still running that belongs to this cluster
			// (a pg_rewind, a backend that missed its postmaster's end).
			killMentioning(c.base, c.Scope+":")
			if err := os.RemoveAll(c.base); err != nil {
				errs = append(errs, err)
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}
