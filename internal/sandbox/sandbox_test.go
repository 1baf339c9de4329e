package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dc "github.com/ory/dockertest/v3/docker"
	"github.com/pgreplica/pgreplica/internal/proc"
)

// startCluster starts a sandbox for t and closes it in t.Cleanup. It skips
// the test when PostgreSQL is unavailable, unless PGREPLICA_INTEGRATION=require.
func startCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	// Room for a loaded machine (see testcluster.Run): 2 minutes were
	// not always enough for the Docker backend there.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	begin := time.Now()
	c, err := Start(ctx, opts)
	if errors.Is(err, ErrUnavailable) && os.Getenv("PGREPLICA_INTEGRATION") != "require" {
		t.Skipf("no PostgreSQL to run (set PGREPLICA_INTEGRATION=require to fail instead): %v", err)
	}
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %s", time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect opens an app-user connection to dsn.
func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func countRows(t *testing.T, ctx context.Context, c *Cluster, i int, where string) int64 {
	t.Helper()
	n, err := c.QueryInt(ctx, i, "SELECT count(*) FROM items WHERE "+where)
	if err != nil {
		t.Fatalf("count on node %d: %v", i, err)
	}
	return n
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := startCluster(t, Options{Replicas: 2})
	ctx := ctxT(t, 6*time.Minute)
	if len(c.Nodes) != 3 {
		t.Fatalf("got %d nodes, want 3", len(c.Nodes))
	}

	t.Run("roles", func(t *testing.T) {
		for i, n := range c.Nodes {
			inRecovery, err := c.QueryInt(ctx, i, "SELECT pg_is_in_recovery()::int")
			if err != nil {
				t.Fatal(err)
			}
			if want := int64(min(i, 1)); inRecovery != want {
				t.Errorf("node %d (%s): pg_is_in_recovery=%d, want %d", i, n.Addr(), inRecovery, want)
			}
			if !n.Running() {
				t.Errorf("node %d not running", i)
			}
		}
		names, err := c.QueryInt(ctx, 0, `SELECT count(*) FROM pg_stat_replication
			WHERE state = 'streaming' AND application_name IN ('replica1', 'replica2')`)
		if err != nil || names != 2 {
			t.Fatalf("streaming replicas named replica1/replica2: %d, %v", names, err)
		}
	})

	// CI runs the suites once per PostgreSQL image and names the major
	// version each image must hold: a mislabelled image (or a backend
	// that silently used other programs) would pass for a version it is
	// not.
	t.Run("server version", func(t *testing.T) {
		want := os.Getenv("PGREPLICA_EXPECT_PG_MAJOR")
		for i, n := range c.Nodes {
			num, err := c.QueryInt(ctx, i, "SELECT current_setting('server_version_num')::int")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("node %d (%s): server_version_num %d", i, n.Addr(), num)
			if want != "" && fmt.Sprint(num/10000) != want {
				t.Errorf("node %d (%s) runs PostgreSQL %d (server_version_num %d); PGREPLICA_EXPECT_PG_MAJOR=%s",
					i, n.Addr(), num/10000, num, want)
			}
		}
	})

	t.Run("app user", func(t *testing.T) {
		// The app user logs in with the URL-escaped password, creates a
		// table in public and takes an advisory lock.
		conn := connect(t, ctx, c.NodeDSN(0))
		_, err := conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, note text)`)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(42); SELECT pg_advisory_unlock(42)`); err != nil {
			t.Fatal(err)
		}
		var who string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != DefaultUser {
			t.Fatalf("current_user = %q, %v", who, err)
		}
		// Readable from a replica through the app user too.
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		rconn := connect(t, ctx, c.NodeDSN(1))
		var n int
		if err := rconn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("replication", func(t *testing.T) {
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (1, 'replicated')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(c.Nodes); i++ {
			if n := countRows(t, ctx, c, i, "id = 1"); n != 1 {
				t.Errorf("replica %d sees %d rows with id 1, want 1", i, n)
			}
		}
		// The multi-host DSN reaches the primary first.
		conn := connect(t, ctx, c.DSN())
		if got := conn.PgConn().Conn().RemoteAddr().String(); got != c.Nodes[0].Addr() {
			t.Errorf("multi-host DSN connected to %s, want the primary %s", got, c.Nodes[0].Addr())
		}
	})

	t.Run("pause replay", func(t *testing.T) {
		r := c.Nodes[1]
		if err := r.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (2, 'while paused')"); err != nil {
			t.Fatal(err)
		}
		// WaitReplayed skips the paused replica but waits for replica2.
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, ctx, c, 2, "id = 2"); n != 1 {
			t.Errorf("unpaused replica2 sees %d rows with id 2, want 1", n)
		}
		time.Sleep(300 * time.Millisecond)
		if n := countRows(t, ctx, c, 1, "id = 2"); n != 0 {
			t.Errorf("paused replica1 sees %d rows with id 2, want 0", n)
		}
		if err := r.ResumeReplay(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, ctx, c, 1, "id = 2"); n != 1 {
			t.Errorf("resumed replica1 sees %d rows with id 2, want 1", n)
		}
	})

	t.Run("freeze", func(t *testing.T) {
		r := c.Nodes[2]
		conn := connect(t, ctx, c.NodeDSN(2)) // established before the freeze
		if err := r.Freeze(); err != nil {
			t.Fatal(err)
		}
		frozen := true
		defer func() {
			if frozen {
				r.Thaw()
			}
		}()
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var one int
		err := conn.QueryRow(qctx, "SELECT 1").Scan(&one)
		cancel()
		if err == nil {
			t.Fatal("query on an established connection to a frozen node succeeded")
		}
		qctx, cancel = context.WithTimeout(ctx, time.Second)
		_, err = c.QueryInt(qctx, 2, "SELECT 1")
		cancel()
		if err == nil {
			t.Fatal("new connection to a frozen node succeeded")
		}
		if !r.Running() {
			t.Error("a frozen node should count as running")
		}
		// WaitReplayed skips frozen replicas instead of hanging.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.WaitReplayed(wctx)
		cancel()
		if err != nil {
			t.Fatalf("WaitReplayed with a frozen replica: %v", err)
		}
		if err := r.Thaw(); err != nil {
			t.Fatal(err)
		}
		frozen = false
		qctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if v, err := c.QueryInt(qctx, 2, "SELECT 1"); err != nil || v != 1 {
			t.Fatalf("after Thaw: %d, %v", v, err)
		}
	})

	t.Run("partition", func(t *testing.T) {
		r := c.Nodes[1]
		conn := connect(t, ctx, c.NodeDSN(1)) // established before the partition
		if err := r.Partition(ctx); err != nil {
			t.Fatal(err)
		}
		partitioned := true
		defer func() {
			if partitioned {
				r.Heal(ctx)
			}
		}()
		// Dropped packets: both the established connection and a new
		// one hang until their deadline; nothing is refused or reset.
		const wait = 800 * time.Millisecond
		qctx, cancel := context.WithTimeout(ctx, wait)
		begin := time.Now()
		var one int
		err := conn.QueryRow(qctx, "SELECT 1").Scan(&one)
		cancel()
		if err == nil {
			t.Fatal("query on an established connection to a partitioned node succeeded")
		}
		if took := time.Since(begin); took < wait-50*time.Millisecond {
			t.Fatalf("query on a partitioned node failed after %v, before its deadline (refused, not dropped?): %v", took, err)
		}
		qctx, cancel = context.WithTimeout(ctx, wait)
		begin = time.Now()
		_, err = pgx.Connect(qctx, c.NodeDSN(1))
		cancel()
		if err == nil {
			t.Fatal("new connection to a partitioned node succeeded")
		}
		if took := time.Since(begin); took < wait-50*time.Millisecond {
			t.Fatalf("connect to a partitioned node failed after %v, before its deadline (refused, not dropped?): %v", took, err)
		}
		if !r.Running() {
			t.Error("a partitioned node should count as running")
		}
		// WaitReplayed skips partitioned replicas instead of hanging.
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (6, 'while partitioned')"); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.WaitReplayed(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("WaitReplayed with a partitioned replica: %v", err)
		}
		if err := r.Heal(ctx); err != nil {
			t.Fatal(err)
		}
		partitioned = false
		if err := r.Heal(ctx); err != nil {
			t.Fatalf("second Heal: %v", err)
		}
		qctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if v, err := c.QueryInt(qctx, 1, "SELECT 1"); err != nil || v != 1 {
			t.Fatalf("after Heal: %d, %v", v, err)
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, ctx, c, 1, "id = 6"); n != 1 {
			t.Errorf("healed replica1 sees %d rows with id 6, want 1", n)
		}
	})

	t.Run("stop start replica", func(t *testing.T) {
		r := c.Nodes[1]
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if r.Running() {
			t.Fatal("Running after Stop")
		}
		if _, err := c.QueryInt(ctx, 1, "SELECT 1"); err == nil {
			t.Fatal("query on a stopped node succeeded")
		}
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (3, 'while stopped')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err != nil { // skips the stopped node
			t.Fatal(err)
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if !r.Running() {
			t.Fatal("not Running after Start")
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, ctx, c, 1, "id = 3"); n != 1 {
			t.Errorf("restarted replica1 sees %d rows with id 3, want 1", n)
		}
	})

	t.Run("stop start primary", func(t *testing.T) {
		p := c.Nodes[0]
		if err := p.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err == nil {
			t.Error("WaitReplayed with the primary stopped should fail")
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (4, 'after primary restart')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(c.Nodes); i++ {
			if n := countRows(t, ctx, c, i, "id = 4"); n != 1 {
				t.Errorf("replica %d sees %d rows with id 4 after the primary restarted, want 1", i, n)
			}
		}
	})

	t.Run("add and remove replica", func(t *testing.T) {
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (7, 'before the new replica')"); err != nil {
			t.Fatal(err)
		}
		r, err := c.AddReplica(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r.Index != 3 || len(c.Nodes) != 4 || c.Nodes[3] != r {
			t.Fatalf("added node %d; %d nodes", r.Index, len(c.Nodes))
		}
		if v, err := c.QueryInt(ctx, 3, "SELECT pg_is_in_recovery()::int"); err != nil || v != 1 {
			t.Fatalf("new replica: pg_is_in_recovery = %d, %v", v, err)
		}
		if n := countRows(t, ctx, c, 3, "id = 7"); n != 1 {
			t.Errorf("new replica sees %d rows with id 7 (written before its backup), want 1", n)
		}
		if err := c.Exec(ctx, 0, "INSERT INTO items VALUES (8, 'after the new replica')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, ctx, c, 3, "id = 8"); n != 1 {
			t.Errorf("new replica sees %d rows with id 8 (streamed), want 1", n)
		}
		port, dir := r.Port, r.Dir
		if err := c.RemoveReplica(ctx, c.Nodes[1]); err == nil {
			t.Error("RemoveReplica of a node that is not the last succeeded")
		}
		if err := c.RemoveReplica(ctx, r); err != nil {
			t.Fatal(err)
		}
		if len(c.Nodes) != 3 || r.Running() {
			t.Fatalf("after RemoveReplica: %d nodes, removed one running %v", len(c.Nodes), r.Running())
		}
		if slots, err := c.QueryInt(ctx, 0, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'replica3'"); err != nil || slots != 0 {
			t.Errorf("slot replica3 after RemoveReplica: %d, %v", slots, err)
		}
		if dir != "" {
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("%s still exists after RemoveReplica: %v", dir, err)
			}
		}
		if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second); err == nil {
			conn.Close()
			t.Errorf("something still listens on the removed replica's port %d", port)
		}
	})

	t.Run("promote", func(t *testing.T) {
		r := c.Nodes[2]
		if err := r.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		if v, err := c.QueryInt(ctx, 2, "SELECT pg_is_in_recovery()::int"); err != nil || v != 0 {
			t.Fatalf("after Promote pg_is_in_recovery = %d, %v", v, err)
		}
		conn := connect(t, ctx, c.NodeDSN(2))
		if _, err := conn.Exec(ctx, "INSERT INTO items VALUES (5, 'on the promoted node')"); err != nil {
			t.Fatalf("write on the promoted node: %v", err)
		}
		// WaitReplayed no longer waits for the promoted node.
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCloseStopsEverything(t *testing.T) {
	t.Parallel()
	c := startCluster(t, Options{Replicas: 1, User: "o'brien", Password: `p@ss:w/o?rd#%'"\`, Database: "my db"})
	ctx := ctxT(t, time.Minute)

	// Unusual names and passwords survive quoting and URL escaping.
	conn := connect(t, ctx, c.DSN())
	var who, db string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database()").Scan(&who, &db); err != nil {
		t.Fatal(err)
	}
	if who != "o'brien" || db != "my db" {
		t.Errorf("connected as %q to %q", who, db)
	}
	conn.Close(ctx)

	if err := c.Nodes[0].Freeze(); err != nil {
		t.Fatal(err)
	}
	dirs := []string{c.Nodes[0].Dir, c.Nodes[1].Dir}
	if err := c.Close(); err != nil {
		t.Fatalf("Close with a frozen primary: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for i, n := range c.Nodes {
		if n.Running() {
			t.Errorf("node %d still running after Close", i)
		}
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Close: %v", d, err)
		}
	}
}

func TestDSN(t *testing.T) {
	c := &Cluster{user: DefaultUser, password: DefaultPassword, database: DefaultDatabase, superPassword: "s3cret"}
	for i, port := range []int{5001, 5002, 5003} {
		c.Nodes = append(c.Nodes, &Node{Index: i, Port: port})
	}
	want := "postgres://pgreplica:sandbox-Pa55%3Aw%40rd@127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003/pgreplica?sslmode=disable"
	if got := c.DSN(); got != want {
		t.Errorf("DSN() = %s\nwant     %s", got, want)
	}
	cfg, err := pgconn.ParseConfig(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != DefaultPassword || cfg.User != DefaultUser || cfg.Database != DefaultDatabase {
		t.Errorf("parsed user=%q password=%q database=%q", cfg.User, cfg.Password, cfg.Database)
	}
	if got := 1 + len(cfg.Fallbacks); got != 3 {
		t.Errorf("parsed %d hosts, want 3", got)
	}
	if got, want := c.NodeDSN(1), "postgres://pgreplica:sandbox-Pa55%3Aw%40rd@127.0.0.1:5002/pgreplica?sslmode=disable"; got != want {
		t.Errorf("NodeDSN(1) = %s, want %s", got, want)
	}
	if got, want := c.AdminDSN(2), "postgres://postgres:s3cret@127.0.0.1:5003/pgreplica?sslmode=disable"; got != want {
		t.Errorf("AdminDSN(2) = %s, want %s", got, want)
	}
	if (*Cluster)(nil).Close() != nil {
		t.Error("Close on a nil cluster")
	}
}

func TestFindBinDir(t *testing.T) {
	dir, ok := findBinDir()
	if !ok {
		t.Skip("no PostgreSQL server binaries here")
	}
	if !hasServerPrograms(dir) {
		t.Fatalf("%s lacks server programs", dir)
	}
	t.Logf("PostgreSQL programs in %s", dir)
	for _, tc := range []struct{ a, b string }{{"9.6", "15"}, {"15", "16"}, {"12", "12.1"}} {
		if compareVersions(tc.a, tc.b) >= 0 || compareVersions(tc.b, tc.a) <= 0 {
			t.Errorf("compareVersions(%s, %s) wrong", tc.a, tc.b)
		}
	}
}

func TestErrorsHidePasswords(t *testing.T) {
	t.Parallel()
	c := startCluster(t, Options{Replicas: -1})
	ctx := ctxT(t, time.Minute)
	err := c.Exec(ctx, 0, "SELECT no_such_function()")
	if err == nil {
		t.Fatal("want an error")
	}
	for _, secret := range []string{c.superPassword, c.password} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error reveals a password: %v", err)
		}
	}
	if len(c.Nodes) != 1 || c.WaitReplayed(ctx) != nil {
		t.Errorf("primary-only cluster: %d nodes", len(c.Nodes))
	}
}

// backendForTests is the backend Start picks here.
func backendForTests(t *testing.T) string {
	switch b := os.Getenv("PGREPLICA_SANDBOX"); b {
	case "local", "docker":
		return b
	}
	if _, ok := findBinDir(); ok {
		return "local"
	}
	return "docker"
}

// dockerLeft lists the containers and networks labelled with cluster id.
func dockerLeft(t *testing.T, id string) []string {
	t.Helper()
	pool, err := dockerPool()
	if err != nil {
		t.Fatal(err)
	}
	filter := dockerLabel + "=" + id
	cts, err := pool.Client.ListContainers(dc.ListContainersOptions{All: true, Filters: map[string][]string{"label": {filter}}})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, ct := range cts {
		left = append(left, "container "+strings.Join(ct.Names, ","))
	}
	nets, err := pool.Client.FilteredListNetworks(dc.NetworkFilterOpts{"label": {filter: true}})
	if err != nil {
		t.Fatal(err)
	}
	for _, nw := range nets {
		left = append(left, "network "+nw.Name)
	}
	return left
}

// TestReapStale kills a process that owns a running sandbox, as a go test
// timeout would, and checks that the next Start removes the leftovers: the
// directory and servers (local), or the containers and network (docker), and
// the partition rules in either case.
func TestReapStale(t *testing.T) {
	// Not parallel: another test's Start could reap the helper's sandbox
	// between the kill and the check below.
	if os.Getenv("SANDBOX_HELPER") == "1" {
		c, err := Start(context.Background(), Options{Replicas: 1})
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		// Partitions need root (iptables): without, reap the rest.
		if err := c.Nodes[1].Partition(context.Background()); err != nil {
			fmt.Println("NOPART", err)
		} else {
			fmt.Println("PARTITIONED")
		}
		if c.backend == "docker" {
			fmt.Printf("DOCKER %s\n", c.id)
		} else {
			pm, _ := proc.PostmasterPID(c.Nodes[0].impl.(*localNode).data)
			fmt.Printf("BASE %s %d\n", filepath.Dir(c.Nodes[0].Dir), pm)
		}
		time.Sleep(time.Minute) // killed by the parent
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReapStale$")
	cmd.Env = append(os.Environ(), "SANDBOX_HELPER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var base, id string
	var pm int
	partitioned := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		partitioned = partitioned || sc.Text() == "PARTITIONED"
		if _, err := fmt.Sscanf(sc.Text(), "BASE %s %d", &base, &pm); err == nil {
			break
		}
		if _, err := fmt.Sscanf(sc.Text(), "DOCKER %s", &id); err == nil {
			break
		}
		t.Logf("helper: %s", sc.Text())
	}
	cmd.Process.Kill()
	cmd.Wait()
	if id != "" {
		if len(dockerLeft(t, id)) == 0 {
			t.Fatal("the helper's containers died with it; nothing to reap")
		}
		startCluster(t, Options{Replicas: -1})
		if left := dockerLeft(t, id); len(left) > 0 {
			t.Errorf("stale sandbox %s not removed: %v", id, left)
		}
		return
	}
	if base == "" || pm == 0 {
		t.Fatal("helper did not start a sandbox")
	}
	if !proc.Alive(pm) {
		t.Fatalf("the helper's postmaster %d died with it; nothing to reap", pm)
	}
	tag := filepath.Base(base)
	rules := func() string {
		out, _ := exec.Command("iptables", "-w", "-S", "INPUT").CombinedOutput()
		return string(out)
	}
	if partitioned && !strings.Contains(rules(), tag) {
		t.Fatalf("no iptables rule tagged %s after the helper's Partition", tag)
	}
	startCluster(t, Options{Replicas: -1})
	for i := 0; i < 100 && proc.Alive(pm); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if proc.Alive(pm) {
		syscall.Kill(pm, syscall.SIGKILL)
		t.Errorf("stale postmaster %d still alive after Start", pm)
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		os.RemoveAll(base)
		t.Errorf("stale sandbox %s not removed: %v", base, err)
	}
	if partitioned && strings.Contains(rules(), tag) {
		removeTaggedRules(tag)
		t.Errorf("iptables rules tagged %s not removed", tag)
	}
}

// TestStartFailureCleansUp makes Start fail after the primary is running
// (role names starting with pg_ are reserved) and checks that nothing is
// left behind and that the error names the step without the password.
func TestStartFailureCleansUp(t *testing.T) {
	t.Parallel()
	var base, prefix string
	logf := func(format string, args ...any) {
		t.Logf(format, args...)
		if strings.HasPrefix(format, "sandbox in ") {
			base = args[0].(string)
		}
		if strings.HasSuffix(format, ": docker image %s") {
			prefix = args[0].(string)
		}
	}
	const password = "do-not-leak-me"
	ctx := ctxT(t, time.Minute)
	c, err := Start(ctx, Options{Replicas: 1, User: "pg_reserved", Password: password, Logf: logf})
	if err == nil {
		c.Close()
		t.Fatal("Start succeeded with a reserved role name")
	}
	t.Logf("Start: %v", err)
	if c != nil {
		t.Error("Start returned a cluster with its error")
	}
	if !strings.Contains(err.Error(), "create app role") {
		t.Errorf("error does not name the step: %v", err)
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("error reveals the password: %v", err)
	}
	if prefix != "" {
		if left := dockerLeft(t, strings.TrimPrefix(prefix, baseDirPrefix)); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		return
	}
	if base == "" {
		t.Fatal("no base directory logged")
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", base, err)
	}
}

// TestBackendSelection checks the errors that say what is missing.
func TestBackendSelection(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	t.Setenv("PGREPLICA_SANDBOX", "bogus")
	if _, err := Start(ctx, Options{}); err == nil || !strings.Contains(err.Error(), "PGREPLICA_SANDBOX") {
		t.Errorf("PGREPLICA_SANDBOX=bogus: %v", err)
	}
	if _, err := dockerPool(); err != nil {
		t.Logf("no Docker engine here (%v): the image check is not run", err)
		return
	}
	t.Setenv("PGREPLICA_SANDBOX", "docker")
	t.Setenv("PGREPLICA_DOCKER_IMAGE", "pgreplica-no-such-image:"+randomHex(4))
	_, err := Start(ctx, Options{})
	if err == nil || !strings.Contains(err.Error(), "scripts/postgres-image.sh") || !strings.Contains(err.Error(), "not on this machine") {
		t.Errorf("missing image: %v", err)
	}
	t.Logf("missing image: %v", err)
}
