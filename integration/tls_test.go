package integration

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testca"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestTLSVerifyFullCluster runs docs/operations.md's TLS setup on the real
// cluster: sslmode=verify-full with one sslrootcert for all three nodes,
// each server's certificate naming its own host. Every statement then
// travels over TLS, a node whose certificate names another host is
// reported down and gets no reads, and it serves reads once its
// certificate is right.
func TestTLSVerifyFullCluster(t *testing.T) {
	cl := testcluster.Cluster()
	for _, n := range cl.Nodes {
		if n.Dir == "" {
			t.Skip("needs the local sandbox backend: a Docker node's configuration files are inside its container")
		}
	}
	ctx := testCtx(t)
	began := time.Now()
	ca := testca.New(t)
	root := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(root, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}

	// install gives node i a certificate for name and turns TLS on.
	install := func(i int, name string) {
		t.Helper()
		n := cl.Nodes[i]
		certPEM, keyPEM := ca.IssuePEM(t, name)
		crt, key := filepath.Join(n.Dir, "tls-server.crt"), filepath.Join(n.Dir, "tls-server.key")
		st, err := os.Stat(n.Dir)
		if err != nil {
			t.Fatal(err)
		}
		owner := st.Sys().(*syscall.Stat_t)
		for _, f := range []struct {
			path string
			data []byte
		}{{crt, certPEM}, {key, keyPEM}} {
			if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(f.path, int(owner.Uid), int(owner.Gid)); err != nil {
				t.Fatal(err)
			}
		}
		for _, stmt := range []string{
			"ALTER SYSTEM SET ssl_cert_file = '" + crt + "'",
			"ALTER SYSTEM SET ssl_key_file = '" + key + "'",
			"ALTER SYSTEM SET ssl = on",
			"SELECT pg_reload_conf()",
		} {
			if err := cl.Exec(ctx, i, stmt); err != nil {
				t.Fatalf("node %d: %s: %v", i, stmt, err)
			}
		}
		// The reload is asynchronous: wait until the server presents the
		// new certificate.
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := tlsPresents(ctx, cl.NodeDSN(i), root, name)
			if err == nil {
				t.Logf("%.1fs: node %d presents a certificate for %s", time.Since(began).Seconds(), i, name)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d does not present its new certificate for %s: %v", i, name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for i := range cl.Nodes {
			for _, stmt := range []string{"ALTER SYSTEM RESET ssl", "ALTER SYSTEM RESET ssl_cert_file", "ALTER SYSTEM RESET ssl_key_file", "SELECT pg_reload_conf()"} {
				if err := cl.Exec(ctx, i, stmt); err != nil {
					t.Errorf("node %d: %s: %v", i, stmt, err)
				}
			}
		}
	})
	install(0, "127.0.0.1")
	install(1, "127.0.0.1")
	install(2, "db3.example.com") // not the host the DSN names

	dsn := strings.Replace(cl.DSN(), "sslmode=disable", "sslmode=verify-full&sslrootcert="+url.QueryEscape(root), 1)
	if dsn == cl.DSN() {
		t.Fatalf("the cluster's DSN has no sslmode=disable to replace")
	}
	cfg, err := pgreplica.ParseConfig(dsn + "&monitor_interval=200ms&max_replica_lag=off")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.NoLeaks(t)
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })

	state := func(i int) string {
		for _, n := range c.Status().Nodes {
			if n.Addr == cl.Nodes[i].Addr() {
				return n.State
			}
		}
		return "missing"
	}
	waitState := func(i int, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for state(i) != want {
			if time.Now().After(deadline) {
				t.Fatalf("node %d is %s, want %s", i, state(i), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%.1fs: node %d is %s", time.Since(began).Seconds(), i, want)
	}
	// read returns the port that served a statement and whether it came
	// over TLS.
	read := func(query string) (port int, ssl bool) {
		t.Helper()
		if err := db.QueryRowContext(ctx, query).Scan(&port, &ssl); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return port, ssl
	}
	const readQ = "SELECT inet_server_port(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

	waitState(0, pgreplica.StateHealthy)
	waitState(1, pgreplica.StateHealthy)
	waitState(2, pgreplica.StateDown)
	for range 20 {
		port, ssl := read(readQ)
		if port != cl.Nodes[1].Port || !ssl {
			t.Fatalf("a read was served by port %d (ssl %v) with replica2's certificate naming another host; want replica1 %d over TLS", port, ssl, cl.Nodes[1].Port)
		}
	}
	if port, ssl := read("SELECT /* pgreplica:primary */ inet_server_port(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); port != cl.Nodes[0].Port || !ssl {
		t.Fatalf("primary read: port %d, ssl %v; want %d over TLS", port, ssl, cl.Nodes[0].Port)
	}

	install(2, "127.0.0.1")
	waitState(2, pgreplica.StateHealthy)
	deadline := time.Now().Add(30 * time.Second)
	for {
		port, ssl := read(readQ)
		if !ssl {
			t.Fatalf("a read on port %d did not use TLS", port)
		}
		if port == cl.Nodes[2].Port {
			t.Logf("%.1fs: replica2 serves reads", time.Since(began).Seconds())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica2 serves no reads with its certificate fixed")
		}
	}
}

// tlsPresents connects to one node with verify-full against root, as the
// host name name, and checks that the connection uses TLS.
func tlsPresents(ctx context.Context, nodeDSN, root, name string) error {
	dsn := strings.Replace(nodeDSN, "sslmode=disable", "sslmode=verify-full&sslrootcert="+url.QueryEscape(root), 1)
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	if cc.TLSConfig == nil {
		return fmt.Errorf("no TLS configuration")
	}
	cc.TLSConfig.ServerName = name
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		return err
	}
	if !ssl {
		return fmt.Errorf("connected without TLS")
	}
	return nil
}
