// Package sandbox starts a real, throwaway PostgreSQL cluster for tests: one
// primary and N streaming replicas, on 127.0.0.1 or in Docker containers.
//
// Start prefers the PostgreSQL server binaries installed on this machine
// (pg_config --bindir, else the highest /usr/lib/postgresql/*/bin, else
// PATH). Only when none are found does it use Docker (image postgres:17 or
// PGREPLICA_DOCKER_IMAGE, see docker.go), and when no Docker engine answers
// either it returns an error wrapping ErrUnavailable, which tests use to
// skip. PGREPLICA_SANDBOX=local or PGREPLICA_SANDBOX=docker forces one
// backend.
//
// With local binaries every node lives under one os.MkdirTemp directory:
//
//	<base>/owner             pid and start time of the test process
//	<base>/nodeN/data        the data directory (PGDATA)
//	<base>/nodeN/node.conf   per-node settings: port, socket dir, cluster_name
//	<base>/nodeN/server.log  the server log (pg_ctl -l)
//	<base>/nodeN/.s.PGSQL.*  the node's Unix socket
//
// The shared settings live in the primary's postgresql.conf and reach the
// replicas through pg_basebackup; postgresql.conf ends with
// include_if_exists = '../node.conf', which resolves per node. When the
// test process runs as root, every PostgreSQL program runs as the postgres OS
// user and the directories are owned by it. The Docker backend lays out
// each container the same way under /pgreplica (docker.go).
//
// Faults: Stop (immediate), StopClean, Freeze, PauseReplay, Promote,
// Rejoin, Follow and Partition (partition.go) work alike on both backends.
// LatencyProxy (latencyproxy.go) puts a node at a distance: list its
// address in a DSN (Cluster.DSNVia) in place of the node's.
//
// AddReplica makes one more streaming replica of the running primary
// (pg_basebackup, as Start makes the first ones) and RemoveReplica destroys
// it again: a member joining and leaving, on both backends.
//
// Close stops every node (immediate shutdown) and removes the directory
// (or the containers and their network).
// Nothing global is registered: callers must arrange for Close to run, e.g.
// with t.Cleanup, which also runs when a test panics. If a test binary dies
// without running Close (a go test timeout, SIGKILL), the next Start removes
// the leftovers of any sandbox whose owning process is gone.
//
// Roles: the superuser "postgres" has a random password (AdminDSN); the app
// role (Options.User) owns the app database, has CREATE on schema public and
// is a member of pg_monitor so it can read pg_stat_replication. Tables that
// the superuser creates in public through Exec are granted to the app role by
// default privileges.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrUnavailable is wrapped by Start's error when neither local PostgreSQL
// server binaries nor a Docker engine can be found, or when the backend
// PGREPLICA_SANDBOX forces is missing.
var ErrUnavailable = errors.New("sandbox: no PostgreSQL server binaries found and no Docker daemon answers")

// Defaults applied by Start to zero Options fields.
const (
	DefaultReplicas = 2
	DefaultUser     = "pgreplica"
	DefaultPassword = "sandbox-Pa55:w@rd"
	DefaultDatabase = "pgreplica"
)

// superuser is the bootstrap superuser of every sandbox cluster.
const superuser = "postgres"

// Options configures Start. The zero value is usable.
type Options struct {
	// Replicas is the number of streaming replicas; 0 means DefaultReplicas.
	// Use a negative value for a primary only.
	Replicas int
	// User and Password are the application login role; they default to
	// DefaultUser and DefaultPassword. The password may contain any
	// character: DSNs escape it.
	User, Password string
	// Database is the application database, owned by User; default
	// DefaultDatabase.
	Database string
	// Logf, when set, receives one line per step ("initdb primary on ...").
	Logf func(format string, args ...any)
	// Conf holds extra postgresql.conf lines for every node, appended after
	// the sandbox's own settings so that they win (bench/fleet raises
	// max_connections and loads pg_stat_statements). Tests leave it empty.
	Conf string
}

// Cluster is a running sandbox: Nodes[0] is the initial primary and every
// other node is a streaming replica of it.
type Cluster struct {
	// Nodes[0] is the initial primary, Nodes[1:] its replicas, in order.
	Nodes []*Node

	user, password, database string
	superPassword            string
	extraConf                string // Options.Conf
	logf                     func(format string, args ...any)
	backend                  string // "local" or "docker"
	// id tags what this cluster creates outside its nodes (iptables
	// rules, containers, networks) so leftovers of a crashed run can be
	// found: "pgreplica-sandbox-<id>".
	id string

	// teardown releases what the backend holds besides the nodes (the
	// base directory, the Docker network). It runs after every node was
	// destroyed.
	teardown func() error
	// addNode gives a new node (Index and Port set) its backend: a
	// directory or a container, and its nodeImpl. See AddReplica.
	addNode func(ctx context.Context, n *Node) error

	closeOnce sync.Once
	closeErr  error
}

// Node is one PostgreSQL server of a Cluster.
type Node struct {
	// Index is the node's position in Cluster.Nodes.
	Index int
	// Port is the server's TCP port (what inet_server_port() answers),
	// distinct per node; it does not change across Stop/Start.
	Port int
	// Dir is the node's directory on this machine (it holds data/,
	// server.log and the Unix socket). It is empty for Docker nodes.
	Dir string
	// SocketDir is the directory on this machine that holds the node's
	// Unix socket: Dir for local nodes, a directory mounted into the
	// container for Docker nodes.
	SocketDir string

	c    *Cluster
	impl nodeImpl
	host string // "" for 127.0.0.1; a Docker node's container address

	mu          sync.Mutex
	frozen      bool
	partitioned bool // Partition called and not healed
	standby     bool // true until Promote; Nodes[0] is never a standby
	paused      bool // PauseReplay called and not resumed
}

// nodeImpl is what a backend (local processes or Docker containers) does for
// one node. Node serialises the calls and keeps the frozen/standby state.
type nodeImpl interface {
	start(ctx context.Context) error
	stop(ctx context.Context) error
	stopClean(ctx context.Context) error
	rejoin(ctx context.Context, primary *Node) error
	freeze() error
	thaw() error
	promote(ctx context.Context) error
	// partition drops every packet to and from the node's server;
	// heal removes what partition added. See partition.go.
	partition(ctx context.Context) error
	heal(ctx context.Context) error
	running() bool
	// createReplica takes a base backup of primary into the (empty)
	// node and starts it as a streaming standby with the slot named
	// after it, which must exist.
	createReplica(ctx context.Context, primary *Node) error
	// destroy forcefully stops the node; the node is not frozen when
	// it is called. It must work on a node that never started.
	destroy() error
}

// Start creates and starts a cluster of one primary and opts.Replicas
// streaming replicas, and returns once every replica is streaming and has
// replayed the primary's WAL. On error everything already created is
// removed; the error wraps ErrUnavailable when there is no way to run
// PostgreSQL here.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Replicas == 0 {
		opts.Replicas = DefaultReplicas
	}
	if opts.Replicas < 0 {
		opts.Replicas = 0
	}
	if opts.User == "" {
		opts.User = DefaultUser
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.Database == "" {
		opts.Database = DefaultDatabase
	}
	if opts.User == superuser {
		return nil, fmt.Errorf("sandbox: Options.User must not be %q, the sandbox superuser", superuser)
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := &Cluster{
		user:          opts.User,
		password:      opts.Password,
		database:      opts.Database,
		superPassword: randomHex(16),
		extraConf:     opts.Conf,
		logf:          logf,
	}

	started := time.Now()
	var err error
	switch backend := os.Getenv("PGREPLICA_SANDBOX"); backend {
	case "", "local", "docker":
		bin, haveBin := findBinDir()
		if backend == "local" || (backend == "" && haveBin) {
			if !haveBin {
				return nil, fmt.Errorf("%w: PGREPLICA_SANDBOX=local but no PostgreSQL server programs (initdb, pg_ctl, pg_basebackup, postgres) in pg_config --bindir, /usr/lib/postgresql/*/bin or PATH", ErrUnavailable)
			}
			c.backend = "local"
			err = startLocal(ctx, c, bin, opts.Replicas)
			break
		}
		pool, perr := dockerPool()
		if perr != nil {
			if backend == "docker" {
				return nil, fmt.Errorf("%w: PGREPLICA_SANDBOX=docker but no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): %v", ErrUnavailable, perr)
			}
			return nil, fmt.Errorf("%w (docker: %v)", ErrUnavailable, perr)
		}
		c.backend = "docker"
		err = startDocker(ctx, c, pool, opts.Replicas)
	default:
		return nil, errors.New(`sandbox: PGREPLICA_SANDBOX must be "local", "docker" or empty`)
	}
	if err != nil {
		if cerr := c.Close(); cerr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
		}
		return nil, err
	}
	c.logf("sandbox ready (%s): primary %s, %d replica(s), in %s",
		c.backend, c.Nodes[0].Addr(), len(c.Nodes)-1, time.Since(started).Round(time.Millisecond))
	return c, nil
}

// DSN is the multi-host application DSN listing every node, primary first:
// postgres://user:pass@127.0.0.1:P0,127.0.0.1:P1,.../db?sslmode=disable.
func (c *Cluster) DSN() string {
	hosts := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		hosts[i] = n.Addr()
	}
	return buildDSN(c.user, c.password, strings.Join(hosts, ","), c.database)
}

// DSNVia is DSN listing addrs (host:port, one per node, primary first) in
// place of the nodes' own addresses: to reach a node through a
// LatencyProxy, say.
func (c *Cluster) DSNVia(addrs ...string) string {
	return buildDSN(c.user, c.password, strings.Join(addrs, ","), c.database)
}

// NodeDSN is the single-host application DSN of node i.
func (c *Cluster) NodeDSN(i int) string {
	return buildDSN(c.user, c.password, c.Nodes[i].Addr(), c.database)
}

// AdminDSN is the single-host superuser DSN of node i, on the application
// database.
func (c *Cluster) AdminDSN(i int) string {
	return c.adminDSNOn(i, c.database)
}

func (c *Cluster) adminDSNOn(i int, db string) string {
	return buildDSN(superuser, c.superPassword, c.Nodes[i].Addr(), db)
}

func buildDSN(user, password, hosts, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     hosts,
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Exec runs sql (one or more statements, simple protocol) as the superuser
// on node i's application database, over a connection of its own.
func (c *Cluster) Exec(ctx context.Context, i int, sql string) error {
	if err := c.execOn(ctx, i, c.database, sql); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

func (c *Cluster) execOn(ctx context.Context, i int, db, sql string) error {
	conn, err := c.connectAdmin(ctx, i, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("exec on node %d: %w", i, err)
	}
	return nil
}

// QueryInt runs sql as the superuser on node i and scans the single value
// of its single row into an int64.
func (c *Cluster) QueryInt(ctx context.Context, i int, sql string) (int64, error) {
	conn, err := c.connectAdmin(ctx, i, c.database)
	if err != nil {
		return 0, fmt.Errorf("sandbox: %w", err)
	}
	defer conn.Close(context.Background())
	var v int64
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		return 0, fmt.Errorf("sandbox: query on node %d: %w", i, err)
	}
	return v, nil
}

func (c *Cluster) connectAdmin(ctx context.Context, i int, db string) (*pgx.Conn, error) {
	if i < 0 || i >= len(c.Nodes) {
		return nil, fmt.Errorf("no node %d (cluster has %d)", i, len(c.Nodes))
	}
	conn, err := pgx.Connect(ctx, c.adminDSNOn(i, db))
	if err != nil {
		// pgx errors name user, database and address, never the password.
		return nil, fmt.Errorf("connect to node %d as superuser: %w", i, err)
	}
	return conn, nil
}

// WaitReplayed returns once every standby that is running, not frozen, not
// partitioned and not paused (by PauseReplay or by a direct pg_wal_replay_pause()) has
// replayed the WAL position that Nodes[0] had when WaitReplayed was called.
// Promoted nodes are no longer standbys and are not waited for. It fails if
// Nodes[0] is stopped or frozen, or when ctx ends first.
func (c *Cluster) WaitReplayed(ctx context.Context) error {
	p := c.Nodes[0]
	if !p.Running() || p.isFrozen() || p.isPartitioned() {
		return errors.New("sandbox: WaitReplayed: primary (node 0) is not running, frozen or partitioned")
	}
	conn, err := c.connectAdmin(ctx, 0, c.database)
	if err != nil {
		return fmt.Errorf("sandbox: WaitReplayed: %w", err)
	}
	var lsn string
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	conn.Close(context.Background())
	if err != nil {
		return fmt.Errorf("sandbox: WaitReplayed: read primary WAL position: %w", err)
	}
	for _, n := range c.Nodes[1:] {
		n.mu.Lock()
		skip := !n.standby || n.frozen || n.paused || n.partitioned
		n.mu.Unlock()
		if skip || !n.Running() {
			continue
		}
		if err := c.waitNodeReplayed(ctx, n.Index, lsn); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) waitNodeReplayed(ctx context.Context, i int, lsn string) error {
	conn, err := c.connectAdmin(ctx, i, c.database)
	if err != nil {
		return fmt.Errorf("sandbox: WaitReplayed: %w", err)
	}
	defer conn.Close(context.Background())
	// pg_is_wal_replay_paused() is true once a pause is requested, on
	// every version the sandbox runs (13 to 17):
	// pg_get_wal_replay_pause_state() is 14's.
	const q = `SELECT NOT pg_is_in_recovery()
		OR coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)
		OR pg_is_wal_replay_paused()`
	for {
		var done bool
		if err := conn.QueryRow(ctx, q, lsn).Scan(&done); err != nil {
			return fmt.Errorf("sandbox: WaitReplayed: node %d has not replayed %s: %w", i, lsn, err)
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox: WaitReplayed: node %d has not replayed %s: %w", i, lsn, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitStreaming polls pg_stat_replication on the primary until every
// replica's walsender (application_name replicaN) is streaming.
func (c *Cluster) waitStreaming(ctx context.Context) error {
	var names []string
	for _, n := range c.Nodes[1:] {
		names = append(names, n.name())
	}
	return c.waitNamesStreaming(ctx, names)
}

// waitNamesStreaming polls pg_stat_replication on the primary until the
// walsenders of names (application_name) are all streaming.
func (c *Cluster) waitNamesStreaming(ctx context.Context, names []string) error {
	want := len(names)
	if want == 0 {
		return nil
	}
	conn, err := c.connectAdmin(ctx, 0, c.database)
	if err != nil {
		return fmt.Errorf("sandbox: wait for replicas to stream: %w", err)
	}
	defer conn.Close(context.Background())
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(DISTINCT application_name) FROM pg_stat_replication
			WHERE state = 'streaming' AND application_name = ANY($1)`, names).Scan(&n)
		if err != nil {
			return fmt.Errorf("sandbox: wait for replicas to stream: %w", err)
		}
		if n == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox: wait for replicas to stream: %d of %d streaming: %w", n, want, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// bootstrap creates the application role and database on the primary.
func (c *Cluster) bootstrap(ctx context.Context) error {
	user := pgx.Identifier{c.user}.Sanitize()
	db := pgx.Identifier{c.database}.Sanitize()
	c.logf("create role %s and database %s on primary", c.user, c.database)
	err := c.execOn(ctx, 0, "postgres", fmt.Sprintf(
		"CREATE ROLE %s LOGIN PASSWORD %s; GRANT pg_monitor TO %s", user, quoteLiteral(c.password), user))
	if err != nil {
		return fmt.Errorf("sandbox: create app role on primary: %w", err)
	}
	var exists bool
	if err := c.queryOn(ctx, 0, "postgres", &exists,
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", c.database); err != nil {
		return fmt.Errorf("sandbox: create app database: %w", err)
	}
	stmt := fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, user)
	if exists {
		stmt = fmt.Sprintf("ALTER DATABASE %s OWNER TO %s", db, user)
	}
	if err := c.execOn(ctx, 0, "postgres", stmt); err != nil {
		return fmt.Errorf("sandbox: create app database: %w", err)
	}
	err = c.execOn(ctx, 0, c.database, fmt.Sprintf(`
		GRANT ALL ON SCHEMA public TO %[1]s;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON TABLES TO %[1]s;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON SEQUENCES TO %[1]s;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON FUNCTIONS TO %[1]s`, user))
	if err != nil {
		return fmt.Errorf("sandbox: grant app role: %w", err)
	}
	return nil
}

// createSlots creates a physical replication slot named replicaN on the
// primary for every replica, reserving WAL at once. Creating them before the
// base backups matters: with pg_basebackup -C the slot only appears after
// the backup has started, and the checkpoint of a concurrent backup may
// recycle the WAL segment the first one still has to stream ("requested WAL
// segment ... has already been removed"). The slots also make the primary
// keep WAL for stopped or frozen replicas.
func (c *Cluster) createSlots(ctx context.Context) error {
	var b strings.Builder
	for i := 1; i < len(c.Nodes); i++ {
		fmt.Fprintf(&b, "SELECT pg_create_physical_replication_slot('replica%d', true);", i)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := c.execOn(ctx, 0, "postgres", b.String()); err != nil {
		return fmt.Errorf("sandbox: create replication slots: %w", err)
	}
	return nil
}

// AddReplica creates one more streaming replica of Nodes[0] while it runs,
// as Start creates the first ones: a replication slot of its own, a base
// backup with pg_basebackup from the running primary, a start as a
// standby. It returns once the new node streams and has replayed the WAL
// position the primary had when its backup was done. The node is appended to
// Nodes (so it is named replicaN after its index, on a port of its own);
// RemoveReplica takes it out again, and Close destroys it with the rest.
// Nodes[0] must be the primary. AddReplica changes Nodes: call it while no
// other goroutine reads them.
func (c *Cluster) AddReplica(ctx context.Context) (*Node, error) {
	p := c.Nodes[0]
	if !p.Running() || p.isFrozen() || p.isPartitioned() {
		return nil, errors.New("sandbox: AddReplica: primary (node 0) is not running, frozen or partitioned")
	}
	ports, err := reservePorts(1)
	if err != nil {
		return nil, err
	}
	n := &Node{Index: len(c.Nodes), Port: ports[0], c: c, standby: true}
	if err := c.addNode(ctx, n); err != nil {
		if n.impl != nil {
			err = errors.Join(err, n.impl.destroy())
		}
		return nil, fmt.Errorf("sandbox: add %s: %w", n.name(), err)
	}
	c.Nodes = append(c.Nodes, n)
	if err := c.startAdded(ctx, n); err != nil {
		if rerr := c.RemoveReplica(context.WithoutCancel(ctx), n); rerr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, rerr)
		}
		return nil, err
	}
	return n, nil
}

func (c *Cluster) startAdded(ctx context.Context, n *Node) error {
	slot := fmt.Sprintf("SELECT pg_create_physical_replication_slot(%s, true)", quoteLiteral(n.name()))
	if err := c.execOn(ctx, 0, "postgres", slot); err != nil {
		return fmt.Errorf("sandbox: add %s: create replication slot: %w", n.name(), err)
	}
	n.mu.Lock()
	err := n.impl.createReplica(ctx, c.Nodes[0])
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.waitNamesStreaming(ctx, []string{n.name()}); err != nil {
		return err
	}
	var lsn string
	if err := c.queryOn(ctx, 0, c.database, &lsn, "SELECT pg_current_wal_lsn()::text"); err != nil {
		return fmt.Errorf("sandbox: add %s: read primary WAL position: %w", n.name(), err)
	}
	return c.waitNodeReplayed(ctx, n.Index, lsn)
}

// RemoveReplica destroys n, a replica added by AddReplica and still the
// last of Nodes (so that no other node's index changes): an immediate
// stop, then its data directory or container goes, its replication slot on
// Nodes[0] is dropped (when Nodes[0] runs) and it leaves Nodes. Like
// AddReplica it changes Nodes.
func (c *Cluster) RemoveReplica(ctx context.Context, n *Node) error {
	if n.Index == 0 || n.Index != len(c.Nodes)-1 || c.Nodes[n.Index] != n {
		return fmt.Errorf("sandbox: RemoveReplica: %s is not the last node of the cluster", n.name())
	}
	var errs []error
	n.mu.Lock()
	if n.partitioned {
		errs = append(errs, n.impl.heal(ctx))
		n.partitioned = false
	}
	if n.frozen {
		errs = append(errs, n.impl.thaw())
		n.frozen = false
	}
	errs = append(errs, n.impl.destroy())
	n.mu.Unlock()
	if n.Dir != "" {
		errs = append(errs, os.RemoveAll(n.Dir))
	}
	if p := c.Nodes[0]; p.Running() && !p.isFrozen() && !p.isPartitioned() {
		errs = append(errs, c.dropSlot(ctx, n.name()))
	}
	c.Nodes = c.Nodes[:n.Index]
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sandbox: remove %s: %w", n.name(), err)
	}
	c.logf("removed %s", n.name())
	return nil
}

// dropSlot drops the replication slot name on Nodes[0] if it exists; a
// slot stays active until its walsender noticed the standby is gone, so it
// retries until then.
func (c *Cluster) dropSlot(ctx context.Context, name string) error {
	const q = `SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE slot_name = $1 AND NOT active) dropped`
	for {
		var dropped, left int64
		err := c.queryOn(ctx, 0, "postgres", &dropped, q, name)
		if err == nil {
			err = c.queryOn(ctx, 0, "postgres", &left, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", name)
		}
		if err != nil {
			return fmt.Errorf("drop replication slot %s: %w", name, err)
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop replication slot %s: still active: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) queryOn(ctx context.Context, i int, db string, dst any, sql string, args ...any) error {
	conn, err := c.connectAdmin(ctx, i, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql, args...).Scan(dst)
}

// waitAccepting polls until node i accepts a superuser connection.
func (c *Cluster) waitAccepting(ctx context.Context, i int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := c.connectAdmin(actx, i, "postgres")
		acancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox: node %d does not accept connections: %w", i, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops every node (healing partitioned and thawing frozen ones
// first) with an immediate
// shutdown and removes everything Start created. It is idempotent, safe on
// a nil Cluster and on the remains of a failed Start.
func (c *Cluster) Close() error {
	if c == nil {
		return nil
	}
	c.closeOnce.Do(func() {
		var errs []error
		for i := len(c.Nodes) - 1; i >= 0; i-- {
			n := c.Nodes[i]
			if n == nil || n.impl == nil {
				continue
			}
			n.mu.Lock()
			if n.partitioned {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := n.impl.heal(ctx); err != nil {
					errs = append(errs, fmt.Errorf("heal node %d: %w", i, err))
				}
				cancel()
				n.partitioned = false
			}
			if n.frozen {
				if err := n.impl.thaw(); err != nil {
					errs = append(errs, fmt.Errorf("thaw node %d: %w", i, err))
				}
				n.frozen = false
			}
			if err := n.impl.destroy(); err != nil {
				errs = append(errs, fmt.Errorf("stop node %d: %w", i, err))
			}
			n.mu.Unlock()
		}
		if c.teardown != nil {
			if err := c.teardown(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			c.closeErr = fmt.Errorf("sandbox: close: %w", err)
		}
		c.logf("sandbox closed")
	})
	return c.closeErr
}

// Addr is the node's "HOST:PORT": 127.0.0.1 for the local backend, the
// container's address on the sandbox's own network for Docker.
func (n *Node) Addr() string {
	host := n.host
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(n.Port))
}

func (n *Node) name() string {
	if n.Index == 0 {
		return "primary"
	}
	return "replica" + strconv.Itoa(n.Index)
}

// Stop shuts the node down in immediate mode (pg_ctl stop -m immediate, or
// SIGKILL of the container), thawing it first if it is frozen.
func (n *Node) Stop(ctx context.Context) error {
	return n.stop(ctx, "immediate", n.impl.stop)
}

// StopClean shuts the node down in fast mode: clients are disconnected,
// and a primary's WAL senders ship everything up to the shutdown
// checkpoint to the replicas first, so no acknowledged commit is missing on
// them. Use it before promoting a replica when a test counts writes.
func (n *Node) StopClean(ctx context.Context) error {
	return n.stop(ctx, "fast", n.impl.stopClean)
}

func (n *Node) stop(ctx context.Context, mode string, stop func(context.Context) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.frozen {
		if err := n.impl.thaw(); err != nil {
			return fmt.Errorf("sandbox: stop %s: thaw: %w", n.name(), err)
		}
		n.frozen = false
	}
	n.c.logf("stop %s on %s (%s)", n.name(), n.Addr(), mode)
	if err := stop(ctx); err != nil {
		return fmt.Errorf("sandbox: stop %s: %w", n.name(), err)
	}
	n.paused = false
	return nil
}

// Start starts a stopped node on its port and returns once it accepts
// connections. A replica then reconnects to the primary by itself. Start on
// a running node does nothing.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.impl.running() {
		return nil
	}
	n.c.logf("start %s on %s", n.name(), n.Addr())
	if err := n.impl.start(ctx); err != nil {
		return fmt.Errorf("sandbox: start %s: %w", n.name(), err)
	}
	n.paused = false
	return nil
}

// Freeze suspends the node without closing anything: SIGSTOP to the
// postmaster and every child process (backends included, so established
// connections stop answering too), or a container pause. New connections
// hang in the kernel's accept queue. Thaw undoes it.
func (n *Node) Freeze() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.frozen {
		return nil
	}
	if !n.impl.running() {
		return fmt.Errorf("sandbox: freeze %s: not running", n.name())
	}
	n.c.logf("freeze %s on %s", n.name(), n.Addr())
	if err := n.impl.freeze(); err != nil {
		// Some processes may be stopped already: resume them.
		_ = n.impl.thaw()
		return fmt.Errorf("sandbox: freeze %s: %w", n.name(), err)
	}
	n.frozen = true
	return nil
}

// Thaw resumes a frozen node (SIGCONT to the same processes, or container
// unpause). It does nothing on a node that is not frozen.
func (n *Node) Thaw() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.frozen {
		return nil
	}
	n.c.logf("thaw %s on %s", n.name(), n.Addr())
	if err := n.impl.thaw(); err != nil {
		return fmt.Errorf("sandbox: thaw %s: %w", n.name(), err)
	}
	n.frozen = false
	return nil
}

func (n *Node) isFrozen() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.frozen
}

// PauseReplay runs pg_wal_replay_pause() on the replica as the superuser.
// WAL keeps arriving but is not applied until ResumeReplay, so new rows on
// the primary stay invisible on this replica; WaitReplayed skips it. (In
// PostgreSQL 15 the pause takes effect before the next WAL record is
// applied, so pg_get_wal_replay_pause_state(), 14's, may still say "pause
// requested" while the replica is idle.)
func (n *Node) PauseReplay(ctx context.Context) error {
	n.c.logf("pause WAL replay on %s", n.name())
	if err := n.c.execOn(ctx, n.Index, n.c.database, "SELECT pg_wal_replay_pause()"); err != nil {
		return fmt.Errorf("sandbox: pause replay on %s: %w", n.name(), err)
	}
	n.mu.Lock()
	n.paused = true
	n.mu.Unlock()
	return nil
}

// ResumeReplay runs pg_wal_replay_resume() on the replica as the superuser.
func (n *Node) ResumeReplay(ctx context.Context) error {
	n.c.logf("resume WAL replay on %s", n.name())
	if err := n.c.execOn(ctx, n.Index, n.c.database, "SELECT pg_wal_replay_resume()"); err != nil {
		return fmt.Errorf("sandbox: resume replay on %s: %w", n.name(), err)
	}
	n.mu.Lock()
	n.paused = false
	n.mu.Unlock()
	return nil
}

// Promote turns a replica into a primary (pg_ctl promote -w) and returns
// once it accepts writes. The other replicas keep following Nodes[0].
func (n *Node) Promote(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.frozen {
		return fmt.Errorf("sandbox: promote %s: node is frozen", n.name())
	}
	n.c.logf("promote %s on %s", n.name(), n.Addr())
	if err := n.impl.promote(ctx); err != nil {
		return fmt.Errorf("sandbox: promote %s: %w", n.name(), err)
	}
	n.standby = false
	n.paused = false
	return nil
}

// Rejoin starts a stopped node as a streaming standby of primary: the way
// an old primary comes back after a replica was promoted. The old primary
// must have been stopped with StopClean before the promotion, so that its
// WAL ends where the new primary's timeline begins (no pg_rewind needed).
func (n *Node) Rejoin(ctx context.Context, primary *Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.impl.running() {
		return fmt.Errorf("sandbox: rejoin %s: node is running", n.name())
	}
	n.c.logf("rejoin %s as a standby of %s", n.name(), primary.Addr())
	if err := n.impl.rejoin(ctx, primary); err != nil {
		return fmt.Errorf("sandbox: rejoin %s: %w", n.name(), err)
	}
	n.standby = true
	n.paused = false
	return nil
}

// Follow points a running standby at primary without restarting it, as a
// control plane does after a failover: ALTER SYSTEM sets primary_conninfo
// (and drops primary_slot_name: the new primary has no slot for it), and a
// reload restarts its WAL receiver, which follows the newest timeline. The
// standby must not have replayed WAL past primary's promotion point.
func (n *Node) Follow(ctx context.Context, primary *Node) error {
	host, port, err := net.SplitHostPort(primary.Addr())
	if err != nil {
		return fmt.Errorf("sandbox: follow: %w", err)
	}
	conninfo := fmt.Sprintf("host=%s port=%s user=%s password=%s application_name=%s",
		host, port, superuser, n.c.superPassword, n.name())
	n.c.logf("point %s at %s", n.name(), primary.Addr())
	for _, sql := range []string{
		"ALTER SYSTEM SET primary_conninfo = " + quoteLiteral(conninfo),
		"ALTER SYSTEM RESET primary_slot_name",
		"SELECT pg_reload_conf()",
	} {
		if err := n.c.execOn(ctx, n.Index, n.c.database, sql); err != nil {
			return fmt.Errorf("sandbox: follow %s: %w", primary.name(), err)
		}
	}
	return nil
}

// Running reports whether the node's server is up (a frozen node is
// running).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.impl.running()
}

// reservePorts returns n distinct free TCP ports on 127.0.0.1. All
// listeners are held until every port is chosen, so the ports differ.
func reservePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("sandbox: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand.Read does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// quoteLiteral quotes s as an SQL string literal
// (standard_conforming_strings is on, so only quotes are doubled).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// redact replaces every secret in s by "***".
func redact(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "***")
		}
	}
	return s
}
