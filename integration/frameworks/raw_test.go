package frameworks

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// CopyFrom through sql.Conn.Raw and RawConn.PrimaryConn: 100,000 rows land
// on the primary, the rest of the sql.Conn reads them there, and the
// replicas replay them.
func TestRawCopyFromOnPrimary(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "raw_copy", "id bigint PRIMARY KEY, name text NOT NULL")
	db, _ := open(t)

	const n = 100_000
	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	rctx, route := pgreplica.WithRoute(ctx)
	var copied int64
	err = sc.Raw(func(dc any) error {
		rc, ok := dc.(pgreplica.RawConn)
		if !ok {
			return fmt.Errorf("Raw handed out %T, not a pgreplica.RawConn", dc)
		}
		pc, err := rc.PrimaryConn(rctx)
		if err != nil {
			return err
		}
		copied, err = pc.CopyFrom(rctx, pgx.Identifier{table}, []string{"id", "name"},
			pgx.CopyFromSlice(n, func(i int) ([]any, error) { return []any{int64(i), fmt.Sprint("row ", i)}, nil }))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if copied != n {
		t.Fatalf("CopyFrom copied %d rows, want %d", copied, n)
	}
	if got := route.Node(); got != testcluster.Cluster().Nodes[0].Addr() || route.Reason() != pgreplica.ReasonWrite {
		t.Fatalf("PrimaryConn was on %s (%s), want the primary", got, route.Reason())
	}
	// The rest of the checkout is pinned to the primary: it reads the copy.
	var count, port int64
	if err := sc.QueryRowContext(ctx, "SELECT count(*), inet_server_port() FROM "+table).Scan(&count, &port); err != nil {
		t.Fatal(err)
	}
	if count != n || int(port) != primaryPort() {
		t.Fatalf("after the copy the sql.Conn read %d rows on %s, want %d on the primary", count, testcluster.Role(int(port)), n)
	}
	sc.Close()

	var onPrimary int64
	if err := testcluster.Direct(t, 0).QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&onPrimary); err != nil {
		t.Fatal(err)
	}
	if onPrimary != n {
		t.Fatalf("the primary has %d rows, want %d", onPrimary, n)
	}
	testcluster.WaitReplayed(t, ctx)
	for i := 1; i < len(testcluster.Cluster().Nodes); i++ {
		if err := testcluster.Direct(t, i).QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if count != n {
			t.Fatalf("replica %d has %d rows after replay, want %d", i, count, n)
		}
	}
}

// LISTEN on the primary through RawConn, pg_notify sent through db: the
// notification arrives. The LISTEN never reaches another database/sql
// conn, even one that gets the same physical connection.
func TestRawListenNotify(t *testing.T) {
	ctx := testCtx(t)
	// One primary connection: the checkout after the listener's gets the
	// very connection that listened.
	db, _ := open(t, "primary_max_conns=1")
	// database/sql keeps no idle conn: the next statement runs on another
	// database/sql conn, the one any other caller would get.
	db.SetMaxIdleConns(0)
	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()

	var pc *pgx.Conn
	if err := sc.Raw(func(dc any) error {
		var err error
		pc, err = dc.(pgreplica.RawConn).PrimaryConn(ctx)
		if err != nil {
			return err
		}
		_, err = pc.Exec(ctx, "LISTEN pgreplica_jobs")
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// db has one primary connection and the listener holds it: send
	// through a second pgreplica *sql.DB, as another service would.
	other, _ := open(t)
	sent := make(chan error, 1)
	go func() {
		_, err := other.ExecContext(ctx, "SELECT pg_notify('pgreplica_jobs', 'job 42')")
		sent <- err
	}()
	var got *pgnotification
	if err := sc.Raw(func(dc any) error {
		pc, err := dc.(pgreplica.RawConn).PrimaryConn(ctx)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		nt, err := pc.WaitForNotification(wctx)
		if err != nil {
			return err
		}
		got = &pgnotification{channel: nt.Channel, payload: nt.Payload}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("pg_notify through db: %v", err)
	}
	if got.channel != "pgreplica_jobs" || got.payload != "job 42" {
		t.Fatalf("got notification %+v", *got)
	}
	sc.Close()

	// Another database/sql conn on the same (only) physical connection to
	// the primary: not listening.
	var channels int64
	if err := db.QueryRowContext(pgreplica.UsePrimary(ctx), "SELECT count(*) FROM pg_listening_channels()").Scan(&channels); err != nil {
		t.Fatal(err)
	}
	if channels != 0 {
		t.Fatalf("the next checkout of the primary connection listens on %d channel(s); LISTEN leaked", channels)
	}
}

type pgnotification struct{ channel, payload string }

// A batch of reads through RawConn.ReplicaConn runs on one replica; the
// replica is chosen like a read: UsePrimary, a session that just wrote, a
// checkout pinned to the primary all get the primary instead.
func TestRawBatchOnReplica(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "raw_batch", "id int PRIMARY KEY, v text")
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "INSERT INTO "+table+" SELECT g, 'v'||g FROM generate_series(1, 10) g"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	db, _ := open(t)

	// batchPorts sends three reads in one batch through ReplicaConn(ctx).
	batchPorts := func(ctx context.Context, sc interface {
		Raw(func(any) error) error
	}) (ports [3]int, count int, reason pgreplica.Reason) {
		t.Helper()
		rctx, route := pgreplica.WithRoute(ctx)
		if err := sc.Raw(func(dc any) error {
			pc, err := dc.(pgreplica.RawConn).ReplicaConn(rctx)
			if err != nil {
				return err
			}
			b := &pgx.Batch{}
			b.Queue("SELECT inet_server_port()").QueryRow(func(r pgx.Row) error { return r.Scan(&ports[0]) })
			b.Queue("SELECT count(*), inet_server_port() FROM " + table).QueryRow(func(r pgx.Row) error { return r.Scan(&count, &ports[1]) })
			b.Queue("SELECT inet_server_port() FROM "+table+" WHERE id = $1", 7).QueryRow(func(r pgx.Row) error { return r.Scan(&ports[2]) })
			return pc.SendBatch(rctx, b).Close()
		}); err != nil {
			t.Fatal(err)
		}
		return ports, count, route.Reason()
	}

	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ports, count, reason := batchPorts(ctx, sc)
	if !isReplicaPort(ports[0]) || ports[1] != ports[0] || ports[2] != ports[0] || count != 10 || reason != pgreplica.ReasonRead {
		t.Fatalf("batch ran on %s, %s, %s (%s) and counted %d rows; want one replica, 10 rows",
			testcluster.Role(ports[0]), testcluster.Role(ports[1]), testcluster.Role(ports[2]), reason, count)
	}
	sc.Close()

	for _, tc := range []struct {
		name   string
		ctx    func() context.Context
		reason pgreplica.Reason
	}{
		{"UsePrimary", func() context.Context { return pgreplica.UsePrimary(ctx) }, pgreplica.ReasonUsePrimary},
		{"session after a write", func() context.Context {
			s := pgreplica.WithSession(ctx)
			if _, err := db.ExecContext(s, "UPDATE "+table+" SET v = 'w' WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			return s
		}, pgreplica.ReasonSession},
	} {
		sc, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ports, _, reason := batchPorts(tc.ctx(), sc)
		sc.Close()
		if ports[0] != primaryPort() || reason != tc.reason {
			t.Fatalf("%s: batch ran on %s (%s), want the primary (%s)", tc.name, testcluster.Role(ports[0]), reason, tc.reason)
		}
	}

	// A sql.Conn that wrote is pinned to the primary: ReplicaConn follows.
	sc, err = db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := sc.ExecContext(ctx, "UPDATE "+table+" SET v = 'pinned' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if ports, _, reason := batchPorts(ctx, sc); ports[0] != primaryPort() || reason != pgreplica.ReasonPinned {
		t.Fatalf("pinned sql.Conn: batch ran on %s (%s), want the primary (pinned)", testcluster.Role(ports[0]), reason)
	}
}

// Inside a transaction RawConn hands out the transaction's connection; the
// primary cannot join a read-only transaction on a replica.
func TestRawInTransaction(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "raw_tx", "id int PRIMARY KEY")
	db, _ := open(t)
	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()

	tx, err := sc.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	// The raw connection is in the transaction: it sees the uncommitted row.
	var seen int
	if err := sc.Raw(func(dc any) error {
		pc, err := dc.(pgreplica.RawConn).PrimaryConn(ctx)
		if err != nil {
			return err
		}
		return pc.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&seen)
	}); err != nil {
		t.Fatal(err)
	}
	if seen != 1 {
		t.Fatalf("PrimaryConn in a transaction saw %d rows, want the transaction's 1", seen)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	sc.Close()

	// A read-only transaction on a replica (on a *sql.DB of its own: the
	// conn above may stay pinned to the primary with its session).
	db, _ = open(t)
	sc, err = db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	rtx, err := sc.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rtx.Rollback()
	var port int
	if err := rtx.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatal(err)
	}
	if !isReplicaPort(port) {
		t.Fatalf("read-only transaction on %s, want a replica", testcluster.Role(port))
	}
	err = sc.Raw(func(dc any) error {
		_, err := dc.(pgreplica.RawConn).PrimaryConn(ctx)
		return err
	})
	if !errors.Is(err, pgreplica.ErrRawReplicaTx) {
		t.Fatalf("PrimaryConn in a read-only replica transaction: %v, want ErrRawReplicaTx", err)
	}
	var rawPort int
	if err := sc.Raw(func(dc any) error {
		pc, err := dc.(pgreplica.RawConn).ReplicaConn(ctx)
		if err != nil {
			return err
		}
		return pc.QueryRow(ctx, "SELECT inet_server_port()").Scan(&rawPort)
	}); err != nil {
		t.Fatal(err)
	}
	if rawPort != port {
		t.Fatalf("ReplicaConn in the transaction ran on %s, the transaction on %s", testcluster.Role(rawPort), testcluster.Role(port))
	}
}

// A write through PrimaryConn in a read-your-writes session is known to the
// session once the checkout ends: the next read in the session sees it,
// even though both replicas have stopped replaying (and are within
// max_replica_lag, so only the session keeps reads off them).
func TestRawPrimaryConnInSession(t *testing.T) {
	ctx := testCtx(t)
	table := newTable(t, ctx, "raw_session", "id int PRIMARY KEY")
	db, _ := open(t, "max_replica_lag=1m")
	for _, n := range testcluster.Cluster().Nodes[1:] {
		if err := n.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.ResumeReplay(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	// Without a session, a plain read is served by a paused replica.
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "INSERT INTO "+table+" VALUES (0)"); err != nil {
		t.Fatal(err)
	}
	var n, port int
	if err := db.QueryRowContext(ctx, "SELECT count(*), inet_server_port() FROM "+table).Scan(&n, &port); err != nil {
		t.Fatal(err)
	}
	if n != 0 || !isReplicaPort(port) {
		t.Fatalf("control read saw %d rows on %s; want 0 on a paused replica", n, testcluster.Role(port))
	}

	sctx := pgreplica.WithSession(ctx)
	sc, err := db.Conn(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Raw(func(dc any) error {
		pc, err := dc.(pgreplica.RawConn).PrimaryConn(sctx)
		if err != nil {
			return err
		}
		_, err = pc.CopyFrom(sctx, pgx.Identifier{table}, []string{"id"}, pgx.CopyFromRows([][]any{{1}, {2}, {3}}))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sc.Close()

	if err := db.QueryRowContext(sctx, "SELECT count(*), inet_server_port() FROM "+table).Scan(&n, &port); err != nil {
		t.Fatal(err)
	}
	if n != 4 || port != primaryPort() {
		t.Fatalf("the session read %d rows on %s after copying 3; want 4, from the primary", n, testcluster.Role(port))
	}
}
