package frameworks

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// bouncer is one pgbouncer this test started, in front of one node.
type bouncer struct {
	node int // index in the cluster
	port int
	cmd  *exec.Cmd
	log  string
}

func (b *bouncer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// pgbouncerPath finds Debian's pgbouncer (apt-get install pgbouncer); the
// test skips without it unless PGREPLICA_INTEGRATION=require.
func pgbouncerPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"pgbouncer", "/usr/sbin/pgbouncer"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if testcluster.Required() {
		t.Fatal("pgbouncer not found (apt-get install pgbouncer); .ci/run installs it")
	}
	t.Skip("pgbouncer not found: apt-get install pgbouncer to run this test")
	return ""
}

// pgbouncerVersion is what `pgbouncer --version` says first, e.g.
// "PgBouncer 1.18.0".
func pgbouncerVersion(t *testing.T) string {
	out, err := exec.Command(pgbouncerPath(t), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitN(string(out), "\n", 2)[0]
}

// startBouncers starts one pgbouncer per node of the cluster, in
// transaction pooling mode on free loopback ports, authenticating clients
// and the servers with the sandbox's application role. They are stopped
// when t ends.
func startBouncers(t *testing.T, poolSize int) []*bouncer {
	t.Helper()
	bin := pgbouncerPath(t)
	dir, err := os.MkdirTemp("", "pgreplica-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// pgbouncer refuses to run as root: run it as the postgres OS user,
	// as the sandbox does PostgreSQL.
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root and no postgres OS user for pgbouncer: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	userlist := filepath.Join(dir, "userlist.txt")
	if err := os.WriteFile(userlist, fmt.Appendf(nil, "%q %q\n", sandbox.DefaultUser, sandbox.DefaultPassword), 0o644); err != nil {
		t.Fatal(err)
	}

	var bs []*bouncer
	for i, n := range testcluster.Cluster().Nodes {
		b := &bouncer{node: i}
		for attempt := 1; ; attempt++ {
			b.port = freePort(t)
			b.log = filepath.Join(dir, fmt.Sprintf("node%d.log", i))
			ini := filepath.Join(dir, fmt.Sprintf("node%d.ini", i))
			conf := fmt.Sprintf(`[databases]
* = host=127.0.0.1 port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 500
server_reset_query =
logfile = %s
pidfile =
`, n.Port, b.port, userlist, poolSize, b.log)
			if err := os.WriteFile(ini, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			b.cmd = exec.Command(bin, ini)
			b.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
			if err := b.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- b.cmd.Wait() }()
			if err := waitBouncer(b, exited); err == nil {
				t.Cleanup(func() {
					_ = b.cmd.Process.Signal(syscall.SIGTERM) // immediate shutdown
					select {
					case <-exited:
					case <-time.After(5 * time.Second):
						_ = b.cmd.Process.Kill()
						<-exited
					}
				})
				break
			} else if attempt == 3 {
				logText, _ := os.ReadFile(b.log)
				t.Fatalf("pgbouncer for node %d: %v\n%s", i, err, logText)
			}
			_ = b.cmd.Process.Kill()
		}
		bs = append(bs, b)
	}
	return bs
}

// waitBouncer waits until b lets the application role log in.
func waitBouncer(b *bouncer, exited <-chan error) error {
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, bouncerDSN([]*bouncer{b}, "default_query_exec_mode=simple_protocol"))
		if err == nil {
			err = c.Ping(ctx)
			c.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not accepting logins: %v", last)
}

// bouncerDSN lists the bouncers, primary's first, with extra parameters.
func bouncerDSN(bs []*bouncer, params ...string) string {
	hosts := make([]string, len(bs))
	for i, b := range bs {
		hosts[i] = b.addr()
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(sandbox.DefaultUser, sandbox.DefaultPassword),
		Host:     strings.Join(hosts, ","),
		Path:     "/" + sandbox.DefaultDatabase,
		RawQuery: strings.Join(append([]string{"sslmode=disable"}, params...), "&"),
	}
	return u.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
