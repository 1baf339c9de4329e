package integration

import (
	"database/sql"
	"fmt"
	"strings"
	"testing"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Texts that look like one string literal to a scanner that is wrong about
// where PostgreSQL's strings end, but call pg_advisory_lock on the server.
// Each was classified read-only, ran on a replica and took its lock there,
// where it excludes nobody. %d is the lock key.
var lexerTricks = []struct {
	name   string
	query  string
	params []string // DSN parameters the trick needs
}{
	{name: "E-string continued after a newline", query: "SELECT E'a'\n'\\'', pg_advisory_lock(%d) --'"},
	{name: "UESCAPE between name and parenthesis", query: `SELECT U&"pg_advisory_lock" UESCAPE '!' (%d)`},
	{name: "escaped name with UESCAPE", query: `SELECT U&"pg!005Fadvisory!005Flock" UESCAPE '!' (%d)`},
	{name: "escaped name", query: `SELECT U&"pg_\0061dvisory_lock"(%d)`},
	{
		name:   "backslash in a plain string with standard_conforming_strings off",
		query:  "SELECT 'a\\'', pg_advisory_lock(%d) --'",
		params: []string{"standard_conforming_strings=off"},
	},
	{
		name:   "N string with standard_conforming_strings off",
		query:  "SELECT n'a\\'', pg_advisory_lock(%d) --'",
		params: []string{"standard_conforming_strings=off"},
	},
}

// Each trick runs on the primary: its advisory lock shows in the primary's
// pg_locks and in no replica's.
func TestLexerTricksTakeTheirLockOnThePrimary(t *testing.T) {
	ctx := testCtx(t)
	direct := make([]*sql.DB, len(testcluster.Cluster().Nodes))
	for i := range direct {
		direct[i] = testcluster.Direct(t, i)
	}
	for i, tr := range lexerTricks {
		t.Run(tr.name, func(t *testing.T) {
			key := 8_000_000 + i
			db := openDB(t, tr.params...)
			testcluster.WaitReplayed(t, ctx)
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rctx, route := pgreplica.WithRoute(ctx)
			rows, err := c.QueryContext(rctx, fmt.Sprintf(tr.query, key))
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
			}
			if err := rows.Close(); err != nil {
				t.Fatal(err)
			}
			if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonClassifier {
				t.Errorf("ran on %s (%s), want the primary %s (%s)", route.Node(), route.Reason(), primaryAddr(), pgreplica.ReasonClassifier)
			}
			if n := advisoryHolders(t, ctx, direct[0], key); n != 1 {
				t.Errorf("primary: %d sessions hold advisory lock %d, want 1", n, key)
			}
			for r := 1; r < len(direct); r++ {
				if n := advisoryHolders(t, ctx, direct[r], key); n != 0 {
					t.Errorf("replica %d: %d sessions hold advisory lock %d, want 0", r, n, key)
				}
			}
		})
	}
}

// The same tricks with set_config(..., false) must not leave a setting on a
// pooled replica connection for the next user: they run on the primary,
// and are known to leave session state there.
func TestLexerTricksDoNotPoisonReplicaConnections(t *testing.T) {
	ctx := testCtx(t)
	for _, tr := range lexerTricks {
		t.Run(tr.name, func(t *testing.T) {
			q := strings.Replace(tr.query, "pg_advisory_lock(%d)", "set_config('search_path', 'lexer_poison', false)", 1)
			q = strings.Replace(q, `U&"pg_advisory_lock" UESCAPE '!' (%d)`, `U&"set_config" UESCAPE '!' ('search_path', 'lexer_poison', false)`, 1)
			q = strings.Replace(q, `U&"pg!005Fadvisory!005Flock" UESCAPE '!' (%d)`, `U&"set!005Fconfig" UESCAPE '!' ('search_path', 'lexer_poison', false)`, 1)
			q = strings.Replace(q, `U&"pg_\0061dvisory_lock"(%d)`, `U&"set_\0063onfig"('search_path', 'lexer_poison', false)`, 1)
			if strings.Contains(q, "%d") || !strings.Contains(q, "lexer_poison") {
				t.Fatalf("no set_config variant of %q", tr.query)
			}
			// One connection per replica: a read on a replica reaches the
			// connection the trick would have used there.
			db := openDB(t, append([]string{"replica_max_conns=1"}, tr.params...)...)
			testcluster.WaitReplayed(t, ctx)
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			rctx, route := pgreplica.WithRoute(ctx)
			rows, err := c.QueryContext(rctx, q)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
			}
			if err := rows.Close(); err != nil {
				t.Fatal(err)
			}
			if route.Node() != primaryAddr() {
				t.Errorf("%q ran on %s (%s), want the primary", q, route.Node(), route.Reason())
			}
			// It holds session state now: database/sql would hand it out
			// again (as with pgx), so close it for good.
			discardConn(c)
			reads := map[int]int{}
			for i := 0; i < 60 && (reads[testcluster.Cluster().Nodes[1].Port] < 3 || reads[testcluster.Cluster().Nodes[2].Port] < 3); i++ {
				var port int
				var path string
				if err := db.QueryRowContext(ctx, "SELECT inet_server_port(), current_setting('search_path')").Scan(&port, &path); err != nil {
					t.Fatal(err)
				}
				reads[port]++
				if isReplicaPort(port) && strings.Contains(path, "lexer_poison") {
					t.Fatalf("a later read on %s sees search_path %q", testcluster.Role(port), path)
				}
			}
			if n := reads[testcluster.Cluster().Nodes[1].Port] + reads[testcluster.Cluster().Nodes[2].Port]; n < 3 {
				t.Fatalf("only %d of the later reads reached a replica: %v", n, reads)
			}
		})
	}
}
