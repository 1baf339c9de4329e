package integration

import (
	"database/sql"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// clusterLogin is the application user, password and database of the
// cluster, read back from its single-node DSN.
func clusterLogin(t *testing.T) (user, password, database string) {
	t.Helper()
	u, err := url.Parse(testcluster.Cluster().NodeDSN(0))
	if err != nil {
		t.Fatal(err)
	}
	password, _ = u.User.Password()
	return u.User.Username(), password, strings.TrimPrefix(u.Path, "/")
}

// keywordDSN is the cluster as a keyword/value DSN: every host and port
// listed, primary first, the password quoted.
func keywordDSN(user, password, database string, extra ...string) string {
	var hosts, ports []string
	for _, n := range testcluster.Cluster().Nodes {
		hosts = append(hosts, "127.0.0.1")
		ports = append(ports, strconv.Itoa(n.Port))
	}
	quote := func(s string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
	}
	dsn := "host=" + strings.Join(hosts, ",") + " port=" + strings.Join(ports, ",") + " user=" + quote(user) +
		" password=" + quote(password) + " dbname=" + quote(database) + " sslmode=disable"
	for _, e := range extra {
		dsn += " " + e
	}
	return dsn
}

// urlDSN is the cluster as a URL DSN with the given password.
func urlDSN(user, password, database string) string {
	var hosts []string
	for _, n := range testcluster.Cluster().Nodes {
		hosts = append(hosts, n.Addr())
	}
	return "postgres://" + url.UserPassword(user, password).String() + "@" + strings.Join(hosts, ",") + "/" +
		url.PathEscape(database) + "?sslmode=disable&" + monitorInterval
}

// A wrong password is reported at the first statement (sql.Open connects
// to nothing) as the server's authentication failure, and no error,
// message or status snapshot repeats the password.
func TestWrongPasswordFailsWithoutLeakingIt(t *testing.T) {
	ctx := testCtx(t)
	user, _, database := clusterLogin(t)
	const wrong = "Wr0ngPassw:rd@x y'z"
	for _, form := range []struct{ name, dsn string }{
		{"url", urlDSN(user, wrong, database)},
		{"keyword", keywordDSN(user, wrong, database, monitorInterval)},
	} {
		t.Run(form.name, func(t *testing.T) {
			testcluster.NoLeaks(t)
			db, err := sql.Open("pgreplica", form.dsn)
			if err != nil {
				t.Fatalf("sql.Open: %v", err)
			}
			defer db.Close()
			var port int
			errs := map[string]error{
				"read":  db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port),
				"Ping":  db.PingContext(ctx),
				"write": func() error { _, err := db.ExecContext(ctx, "SELECT 1"); return err }(),
			}
			for what, err := range errs {
				if err == nil {
					t.Fatalf("%s with a wrong password succeeded", what)
				}
				assertNoPassword(t, what, err.Error(), wrong)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "28P01" {
					t.Errorf("%s: %v; want the server's invalid_password error (SQLSTATE 28P01) reachable with errors.As", what, err)
				}
			}
			t.Logf("read error: %v", errs["read"])
			connector, err := pgreplica.ConnectorOf(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			st, err := json.Marshal(connector.Status())
			if err != nil {
				t.Fatal(err)
			}
			assertNoPassword(t, "Status", string(st), wrong)
		})
	}
}

func assertNoPassword(t *testing.T, what, text, password string) {
	t.Helper()
	for _, form := range []string{password, url.QueryEscape(password), url.PathEscape(password), "Wr0ngPassw"} {
		if strings.Contains(text, form) {
			t.Errorf("%s repeats the password (%q): %s", what, form, text)
		}
	}
}

// The sandbox password has ':' and '@' in it. It works percent-encoded in
// a URL DSN and quoted in a keyword/value DSN, and both route as usual.
// The URL form runs in the default mode: its reads follow its INSERT once
// the replicas replayed it. The keyword form is read_your_writes=off: it
// checks that round_robin spreads the reads, and the connector's session
// would send them to the replica first found to have the row.
func TestPasswordWithSpecialCharactersInBothDSNForms(t *testing.T) {
	ctx := testCtx(t)
	user, password, database := clusterLogin(t)
	if password != sandbox.DefaultPassword || !strings.ContainsAny(password, ":@") {
		t.Fatalf("the cluster password %q is not the sandbox default with ':' and '@'", password)
	}
	table := testcluster.NewTable(t, ctx, "dsnforms", "form text")
	for _, form := range []struct{ name, dsn string }{
		{"url", urlDSN(user, password, database)},
		{"keyword", keywordDSN(user, password, database, monitorInterval, "replica_policy=round_robin", "read_your_writes=off")},
	} {
		t.Run(form.name, func(t *testing.T) {
			testcluster.NoLeaks(t)
			db, err := sql.Open("pgreplica", form.dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.PingContext(ctx); err != nil {
				t.Fatal(err)
			}
			var port int
			if err := db.QueryRowContext(ctx, "INSERT INTO "+table+" VALUES ($1) RETURNING inet_server_port()", form.name).Scan(&port); err != nil {
				t.Fatal(err)
			}
			if port != primaryPort() {
				t.Fatalf("INSERT … RETURNING served by %s", testcluster.Role(port))
			}
			testcluster.WaitReplicaReads(t, ctx, db)
			seen := map[string]bool{}
			for range 10 {
				p := testcluster.Port(t, ctx, db)
				if !isReplicaPort(p) {
					t.Fatalf("read served by %s", testcluster.Role(p))
				}
				seen[testcluster.Role(p)] = true
			}
			if form.name == "keyword" && len(seen) != 2 {
				t.Fatalf("round_robin reads reached %v, want both replicas", seen)
			}
		})
	}
	if n := queryInt(t, ctx, testcluster.Direct(t, 0), "SELECT count(*) FROM "+table); n != 2 {
		t.Fatalf("%d rows on the primary, want 2", n)
	}
}

// The monitor's probes work whatever the DSN sets for the session: pgx's
// own simple protocol refuses to run with standard_conforming_strings=off,
// and with it every node was reported down.
func TestProbesWorkWhateverTheSessionSettings(t *testing.T) {
	for _, param := range []string{
		"standard_conforming_strings=off",
		"default_query_exec_mode=simple_protocol",
		"default_query_exec_mode=cache_describe",
		"default_query_exec_mode=exec",
	} {
		t.Run(param, func(t *testing.T) {
			db := testcluster.Open(t, "monitor_interval=100ms", param)
			c, err := pgreplica.ConnectorOf(testCtx(t), db)
			if err != nil {
				t.Fatal(err)
			}
			testcluster.WaitUntil(t, 10*time.Second, "every node probed healthy", func() bool {
				for _, n := range c.Status().Nodes {
					if n.State != pgreplica.StateHealthy {
						return false
					}
				}
				return true
			})
		})
	}
}
