package integration

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Issue 8, section 7: DSN edge cases on the real cluster.

// Unix-socket hosts are nodes like any other, in keyword and URL form,
// as the primary or as a replica. (The sandbox keeps each node's socket in
// Node.SocketDir, mounted into the container on the Docker backend, and
// trusts local connections; the test runs as root, which may enter it.) No lag limit: a replica behind on a busy machine
// would not be healthy. Over a socket inet_server_port() is NULL, so the
// server's port setting says which node answered.
func TestUnixSocketHostsAreNodes(t *testing.T) {
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	user, password, database := clusterLogin(t)
	table := testcluster.NewTable(t, ctx, "unixdsn", "id bigserial PRIMARY KEY, v text")
	p0, p1 := strconv.Itoa(cl.Nodes[0].Port), strconv.Itoa(cl.Nodes[1].Port)
	dir0, dir1 := cl.Nodes[0].SocketDir, cl.Nodes[1].SocketDir
	// The other node over TCP, at its own address (a container's on the
	// Docker backend).
	host0, _, _ := net.SplitHostPort(cl.Nodes[0].Addr())
	host1, _, _ := net.SplitHostPort(cl.Nodes[1].Addr())
	userinfo := url.UserPassword(user, password).String()
	kw := func(hosts string) string {
		return "host=" + hosts + " port=" + p0 + "," + p1 + " user=" + user + " password='" +
			strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password) + "' dbname=" + database +
			" sslmode=disable max_replica_lag=off hedge_after=off " + monitorInterval
	}
	// Hedging is off: with one replica, a read hedged on a busy machine may
	// be answered by the primary (as documented), and these cases test
	// which node a socket names, not hedging.
	cases := []struct {
		name, dsn string
		socket    int // the node reached through its socket
	}{
		{"keyword, primary on a socket", kw(dir0 + "," + host1), 0},
		{"keyword, replica on a socket", kw(host0 + "," + dir1), 1},
		{"URL, primary on a socket", "postgres://" + userinfo + "@/" + database + "?host=" + dir0 + "," + host1 + "&port=" + p0 + "," + p1 + "&sslmode=disable&max_replica_lag=off&hedge_after=off&" + monitorInterval, 0},
		{"URL, replica on a socket", "postgres://" + userinfo + "@/" + database + "?host=" + host0 + "," + dir1 + "&port=" + p0 + "," + p1 + "&sslmode=disable&max_replica_lag=off&hedge_after=off&" + monitorInterval, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			testcluster.NoLeaks(t)
			db, err := sql.Open("pgreplica", c.dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			conn, err := pgreplica.ConnectorOf(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			addrs := []string{dir0, cl.Nodes[1].Addr()}
			if c.socket == 1 {
				addrs = []string{cl.Nodes[0].Addr(), dir1}
			}
			testcluster.WaitUntil(t, 10*time.Second, "both nodes probed healthy", func() bool {
				st := conn.Status()
				return len(st.Nodes) == 2 && st.Nodes[0].State == pgreplica.StateHealthy && st.Nodes[1].State == pgreplica.StateHealthy
			})
			st := conn.Status()
			if st.Primary != addrs[0] || st.Nodes[0].Addr != addrs[0] || st.Nodes[0].Role != pgreplica.RolePrimary ||
				st.Nodes[1].Addr != addrs[1] || st.Nodes[1].Role != pgreplica.RoleReplica {
				t.Fatalf("status %+v, want primary %s and replica %s", st, addrs[0], addrs[1])
			}

			// A write lands on the primary.
			wctx, route := pgreplica.WithRoute(ctx)
			var id int64
			var port int
			if err := db.QueryRowContext(wctx, "INSERT INTO "+table+" (v) VALUES ($1) RETURNING id, current_setting('port')::int", c.name).Scan(&id, &port); err != nil {
				t.Fatal(err)
			}
			if port != cl.Nodes[0].Port || route.Node() != addrs[0] {
				t.Fatalf("write served by port %d (route %s), want the primary %d (%s)", port, route.Node(), cl.Nodes[0].Port, addrs[0])
			}
			if n := queryInt(t, ctx, testcluster.Direct(t, 0), "SELECT count(*) FROM "+table+" WHERE id = $1", id); n != 1 {
				t.Fatalf("row %d: %d on the primary", id, n)
			}
			// Reads go to the replica, once it is known to have the write
			// (the default mode: the reads follow db's INSERT).
			testcluster.WaitReplicaReads(t, ctx, db)
			for i := range 10 {
				rctx, route := pgreplica.WithRoute(ctx)
				port := queryInt(t, rctx, db, "SELECT current_setting('port')::int")
				if int(port) != cl.Nodes[1].Port || route.Node() != addrs[1] || route.Reason() != pgreplica.ReasonRead {
					t.Fatalf("read %d served by port %d (route %s, %s), want replica1 %d (%s) for read", i, port, route.Node(), route.Reason(), cl.Nodes[1].Port, addrs[1])
				}
			}
		})
	}
}

// A '#' in a URL starts a fragment: pgx would drop the rest of the
// password and every host after it. pgreplica refuses such a DSN with an
// error that names the '#' and never shows the password, and the same
// password percent-encoded (or in keyword form) reaches every node.
func TestHashInURLPassword(t *testing.T) {
	ctx := testCtx(t)
	cl := testcluster.Cluster()
	const role, password = "hash_pw_user", "s3cr#et-pw"
	if err := cl.Exec(ctx, 0, "DROP ROLE IF EXISTS "+role+"; CREATE ROLE "+role+" LOGIN PASSWORD '"+password+"'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Exec(context.Background(), 0, "DROP ROLE IF EXISTS "+role) })
	testcluster.WaitReplayed(t, ctx)
	_, _, database := clusterLogin(t)
	var hosts []string
	for _, n := range cl.Nodes {
		hosts = append(hosts, n.Addr())
	}
	hostList := strings.Join(hosts, ",")

	for _, dsn := range []string{
		"postgres://" + role + ":" + password + "@" + hostList + "/" + database + "?sslmode=disable",
		"postgres://app:s3cr#et@h1,h2/db",
	} {
		db, err := sql.Open("pgreplica", dsn)
		if err == nil {
			// database/sql may defer the error to the first use.
			err = db.PingContext(ctx)
			db.Close()
		}
		if !errors.Is(err, pgreplica.ErrInvalidDSN) || !strings.Contains(err.Error(), "#") {
			t.Fatalf("raw '#' in the password: err = %v, want ErrInvalidDSN naming the '#'", err)
		}
		for _, secret := range []string{password, "s3cr", "et-pw", "et@"} {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error shows the password (%q): %v", secret, err)
			}
		}
	}

	// Encoded, it is the password it should be, for all three nodes.
	quoted := strings.ReplaceAll(password, "#", "%23")
	for _, dsn := range []string{
		"postgres://" + role + ":" + quoted + "@" + hostList + "/" + database + "?sslmode=disable&" + monitorInterval,
		"host=" + strings.Repeat("127.0.0.1,", len(cl.Nodes)-1) + "127.0.0.1 port=" + portList(cl.Nodes[0].Port, cl.Nodes[1].Port, cl.Nodes[2].Port) +
			" user=" + role + " password='" + password + "' dbname=" + database + " sslmode=disable " + monitorInterval,
	} {
		db, err := sql.Open("pgreplica", dsn)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgreplica.ConnectorOf(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(conn.Status().Nodes); n != len(cl.Nodes) {
			t.Fatalf("%d nodes, want %d", n, len(cl.Nodes))
		}
		if err := db.PingContext(ctx); err != nil {
			t.Fatalf("ping with the encoded password: %v", err)
		}
		if port := testcluster.Port(t, ctx, db); !isReplicaPort(port) {
			t.Fatalf("read served by %s, want a replica", testcluster.Role(port))
		}
		db.Close()
	}
}

func portList(ps ...int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}
