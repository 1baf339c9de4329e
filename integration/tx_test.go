package integration

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// A read-write transaction runs every statement, reads included, on the
// primary; its commit is visible there and its rollback leaves nothing.
func TestTransactionsRunOnPrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	direct := testcluster.Direct(t, 0)
	table := testcluster.NewTable(t, ctx, "tx", "id int PRIMARY KEY, v text")

	for _, commit := range []bool{true, false} {
		id := 1
		if !commit {
			id = 2
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback() // no-op once finished; keeps a failing test from holding it
		if p := testcluster.Port(t, ctx, tx); p != primaryPort() {
			t.Fatalf("first read in the transaction served by %s", testcluster.Role(p))
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1, 'x')", id); err != nil {
			t.Fatal(err)
		}
		rctx, route := pgreplica.WithRoute(ctx)
		var port, n int
		if err := tx.QueryRowContext(rctx, "SELECT inet_server_port(), count(*) FROM "+table+" WHERE id = $1", id).Scan(&port, &n); err != nil {
			t.Fatal(err)
		}
		if port != primaryPort() || n != 1 {
			t.Fatalf("read after the insert in the transaction: %s, %d rows; want primary, 1", testcluster.Role(port), n)
		}
		wantPrimary(t, "read in a transaction", route, pgreplica.ReasonTransaction)
		var xid1, xid2 int64
		if err := tx.QueryRowContext(ctx, "SELECT txid_current()").Scan(&xid1); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRowContext(ctx, "SELECT txid_current()").Scan(&xid2); err != nil {
			t.Fatal(err)
		}
		if xid1 != xid2 {
			t.Fatalf("statements of one transaction ran in transactions %d and %d", xid1, xid2)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
		want := int64(0)
		if commit {
			want = 1
		}
		if got := queryInt(t, ctx, direct, "SELECT count(*) FROM "+table+" WHERE id = $1", id); got != want {
			t.Fatalf("commit=%v: the primary has %d rows with id %d, want %d", commit, got, id, want)
		}
	}
	// The committed row reaches the replicas, and plain reads see it there
	// once a probe has found them caught up (until then, with the writes
	// of this test a moment ago, a replica is not known to be within
	// max_replica_lag and the primary serves: a liveness wait).
	testcluster.WaitReplayed(t, ctx)
	testcluster.WaitUntil(t, time.Minute, "a plain read on a replica", func() bool {
		var port, n int
		if err := db.QueryRowContext(ctx, "SELECT inet_server_port(), count(*) FROM "+table).Scan(&port, &n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("after commit and rollback: %s sees %d rows, want 1", testcluster.Role(port), n)
		}
		return isReplicaPort(port)
	})
}

// txPorts runs several statements in one transaction with opts and returns
// the ports that answered them and the isolation level and read-only flag
// the server reports; it fails t if the backend changed within it.
func txPorts(t *testing.T, ctx context.Context, db *sql.DB, opts *sql.TxOptions) (ports []int, isolation, readOnly string) {
	t.Helper()
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for range 5 {
		ports = append(ports, testcluster.Port(t, ctx, tx))
	}
	if err := tx.QueryRowContext(ctx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')").Scan(&isolation, &readOnly); err != nil {
		t.Fatal(err)
	}
	var pid1, pid2 int
	if err := tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid1 != pid2 {
		t.Fatalf("one transaction ran on backends %d and %d", pid1, pid2)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return ports, isolation, readOnly
}

// A read-only transaction runs on one replica for all of its statements
// (a standby accepts READ COMMITTED and REPEATABLE READ); a SERIALIZABLE
// one goes to the primary, as hot standbys refuse that level.
func TestReadOnlyTransactions(t *testing.T) {
	ctx := testCtx(t)
	// max_replica_lag=off: under the default 1s bound a loaded machine's
	// late probe round makes both replicas' measurements too old for a
	// moment, and a read-only transaction then rightly falls back to the
	// primary (a CI pair on 2 cores saw it); routing is what is tested.
	db := openDB(t, "max_replica_lag=off")
	testcluster.WaitReplayed(t, ctx)

	cases := []struct {
		name      string
		opts      *sql.TxOptions
		isolation string
		replica   bool
	}{
		{"default isolation", &sql.TxOptions{ReadOnly: true}, "read committed", true},
		{"read committed", &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelReadCommitted}, "read committed", true},
		{"repeatable read", &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead}, "repeatable read", true},
		{"serializable", &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelSerializable}, "serializable", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for range 10 {
				ports, iso, ro := txPorts(t, ctx, db, tc.opts)
				for _, p := range ports[1:] {
					if p != ports[0] {
						t.Fatalf("one read-only transaction moved between servers: %v", ports)
					}
				}
				if tc.replica && !isReplicaPort(ports[0]) || !tc.replica && ports[0] != primaryPort() {
					t.Fatalf("transaction served by %s (replica wanted: %v)", testcluster.Role(ports[0]), tc.replica)
				}
				if iso != tc.isolation || ro != "on" {
					t.Fatalf("server reports isolation %q read_only %q, want %q on", iso, ro, tc.isolation)
				}
				seen[testcluster.Role(ports[0])] = true
			}
			t.Logf("served by %v", seen)
		})
	}

	// A read-only transaction goes to the primary when the caller asked for
	// the primary, or when its sql.Conn already wrote there (it must see the
	// write).
	t.Run("UsePrimary", func(t *testing.T) {
		ports, _, ro := txPorts(t, pgreplica.UsePrimary(ctx), db, &sql.TxOptions{ReadOnly: true})
		if ports[0] != primaryPort() || ro != "on" {
			t.Fatalf("read-only transaction with UsePrimary on %s (read only %s)", testcluster.Role(ports[0]), ro)
		}
	})
	t.Run("sql.Conn that wrote", func(t *testing.T) {
		table := testcluster.NewTable(t, ctx, "rotx", "id int")
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		mustExec(t, ctx, c, "INSERT INTO "+table+" VALUES (1)")
		tx, err := c.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		var port, n int
		if err := tx.QueryRowContext(ctx, "SELECT inet_server_port(), count(*) FROM "+table).Scan(&port, &n); err != nil {
			t.Fatal(err)
		}
		if port != primaryPort() || n != 1 {
			t.Fatalf("read-only transaction after a write on the same sql.Conn: %s sees %d rows, want the primary with 1", testcluster.Role(port), n)
		}
	})

	// The read-only flag is enforced by the server wherever it runs.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelSerializable})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "CREATE TEMP TABLE ro_tx_t (x int)"); pgCode(err) != "25006" {
		t.Fatalf("write in a read-only transaction on the primary: %v, want SQLSTATE 25006", err)
	}
}
