package faults

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestUnsentPrimaryStatementsWaitOutARestart: statements for the primary
// that send nothing the server could run before their connection opens,
// and change no data (Ping, a plain SET, BEGIN READ ONLY with UsePrimary,
// a serializable read-only BEGIN), begun while the primary is down (pg_ctl
// -m immediate), wait for it within primary_wait, as a write does, and
// are then answered by it. They failed at once with "connection refused".
func TestUnsentPrimaryStatementsWaitOutARestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	primary := cl.Nodes[0]
	db := testcluster.Open(t, monitorParams, "hedge_after=off")
	c := connector(t, db)
	for _, n := range cl.Nodes {
		testcluster.WaitUntil(t, 30*time.Second, n.Addr()+" probed healthy", func() bool { return nodeState(c, n.Addr()) == pgreplica.StateHealthy })
	}

	statements := map[string]func(context.Context) (int, error){
		"SET on a new sql.Conn": func(ctx context.Context) (int, error) {
			conn, err := db.Conn(ctx)
			if err != nil {
				return 0, err
			}
			defer conn.Close()
			// Its session holds the setting: the pool must not keep it.
			defer func() { _ = conn.Raw(func(any) error { return driver.ErrBadConn }) }()
			rctx, route := pgreplica.WithRoute(ctx)
			if _, err := conn.ExecContext(rctx, "SET application_name = 'unsent_wait'"); err != nil {
				return 0, err
			}
			if route.Node() != primary.Addr() {
				return 0, fmt.Errorf("SET ran on %q", route.Node())
			}
			// The conn's reads carry the setting to whichever node serves
			// them.
			var name string
			err = conn.QueryRowContext(ctx, "SELECT current_setting('application_name')").Scan(&name)
			if err == nil && name != "unsent_wait" {
				t.Errorf("SET's conn reads application_name %q", name)
			}
			return primary.Port, err
		},
		"Ping": func(ctx context.Context) (int, error) {
			// Ping answers for the primary alone.
			return primary.Port, db.PingContext(ctx)
		},
		"BEGIN READ ONLY, UsePrimary": func(ctx context.Context) (int, error) {
			return readOnlyTx(pgreplica.UsePrimary(ctx), db, &sql.TxOptions{ReadOnly: true})
		},
		"BEGIN READ ONLY SERIALIZABLE": func(ctx context.Context) (int, error) {
			return readOnlyTx(ctx, db, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelSerializable})
		},
	}
	for name, run := range statements {
		if port, err := run(ctx); err != nil || port != primary.Port {
			t.Fatalf("%s, primary up: %v, answered by %s; want the primary", name, err, testcluster.Role(port))
		}
	}

	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() { _ = primary.Start(context.Background()) })
	type answer struct {
		name string
		port int
		err  error
		end  time.Time
	}
	answers := make(chan answer, len(statements))
	begun := make(chan struct{}, len(statements))
	for name, run := range statements {
		go func() {
			begun <- struct{}{}
			port, err := run(ctx)
			answers <- answer{name, port, err, time.Now()}
		}()
	}
	for range statements {
		<-begun
	}
	// The primary stays down until the connector has seen it down (a
	// statement's refused connection, or a probe), and then for as long
	// again: a refused connection comes back within a round trip, so a
	// statement that did not wait has failed by then.
	down := testcluster.WaitUntil(t, time.Minute, "the primary seen down", func() bool { return nodeState(c, primary.Addr()) == pgreplica.StateDown })
	time.Sleep(down)
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	for range statements {
		a := <-answers
		t.Logf("%s: answered by %s %v after the stop (%v after the start): %v", a.name, testcluster.Role(a.port), a.end.Sub(stopped), a.end.Sub(started), a.err)
		if a.err != nil || a.port != primary.Port {
			t.Errorf("%s, begun while the primary was down: %v, answered by %s; want it to wait for the primary", a.name, a.err, testcluster.Role(a.port))
		}
		if a.end.Before(started) {
			t.Errorf("%s answered before the primary started again", a.name)
		}
	}
	testcluster.WaitReplayed(t, ctx)
}

// readOnlyTx reads the answering server's port in a read-only transaction.
func readOnlyTx(ctx context.Context, db *sql.DB, opts *sql.TxOptions) (int, error) {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	var port int
	if err := tx.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		return 0, err
	}
	return port, tx.Commit()
}
