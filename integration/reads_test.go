package integration

import (
	"testing"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Plain reads are served by the replicas, both of them, and never by the
// primary: 200 reads through QueryRow and Query alternately, each answered
// with the port of the server that ran it.
func TestPlainReadsSpreadOverBothReplicasNeverPrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	testcluster.WaitReplayed(t, ctx)

	byRole := map[string]int{}
	for i := range 200 {
		rctx, route := pgreplica.WithRoute(ctx)
		var port int
		if i%2 == 0 {
			if err := db.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&port); err != nil {
				t.Fatalf("read %d: %v", i, err)
			}
		} else {
			rows, err := db.QueryContext(rctx, "SELECT inet_server_port(), g FROM generate_series(1, 3) g")
			if err != nil {
				t.Fatalf("read %d: %v", i, err)
			}
			defer rows.Close()
			n := 0
			for rows.Next() {
				var g int
				if err := rows.Scan(&port, &g); err != nil {
					t.Fatal(err)
				}
				n++
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			rows.Close()
			if n != 3 {
				t.Fatalf("read %d: %d rows, want 3", i, n)
			}
		}
		if port == primaryPort() {
			t.Fatalf("read %d was served by the primary (port %d)", i, port)
		}
		if !isReplicaPort(port) {
			t.Fatalf("read %d was served by %s", i, testcluster.Role(port))
		}
		if !replicaRead(route.Reason()) || !testcluster.IsReplicaAddr(route.Node()) {
			t.Fatalf("read %d: route %s %s, want a replica for reason read", i, route.Node(), route.Reason())
		}
		byRole[testcluster.Role(port)]++
	}
	t.Logf("reads per node: %v", byRole)
	if byRole["replica1"] == 0 || byRole["replica2"] == 0 {
		t.Fatalf("reads did not reach both replicas: %v", byRole)
	}
}

// A prepared statement routes like the plain call would, each time it runs:
// a prepared read on a replica, a prepared INSERT … RETURNING on the primary.
// read_your_writes=off: each read follows this *sql.DB's INSERT, and in the
// default mode whether a replica has that row yet (else the primary serves
// the read, for the connector's session) would decide where it goes.
func TestPreparedStatementsRouteLikePlainCalls(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "read_your_writes=off")
	table := testcluster.NewTable(t, ctx, "prep", "id bigserial PRIMARY KEY, v text")

	read, err := db.PrepareContext(ctx, "SELECT inet_server_port() WHERE $1::int > 0")
	if err != nil {
		t.Fatal(err)
	}
	defer read.Close()
	write, err := db.PrepareContext(ctx, "INSERT INTO "+table+" (v) VALUES ($1) RETURNING id, inet_server_port()")
	if err != nil {
		t.Fatal(err)
	}
	defer write.Close()

	for i := range 10 {
		var port int
		if err := read.QueryRowContext(ctx, i+1).Scan(&port); err != nil {
			t.Fatal(err)
		}
		if !isReplicaPort(port) {
			t.Fatalf("prepared read %d served by %s", i, testcluster.Role(port))
		}
		var id int64
		if err := write.QueryRowContext(ctx, "v").Scan(&id, &port); err != nil {
			t.Fatal(err)
		}
		if port != primaryPort() {
			t.Fatalf("prepared INSERT … RETURNING %d served by %s", i, testcluster.Role(port))
		}
	}
	if n := queryInt(t, ctx, testcluster.Direct(t, 0), "SELECT count(*) FROM "+table); n != 10 {
		t.Fatalf("primary has %d rows, want 10", n)
	}
}
