package failover

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// The tests of this file need a cluster with no writable node: a DSN that
// lists only Nodes[2], a standby this package never promotes. Its first
// probe round finds no primary, so every write waits for one.

// write is refused by a standby (25006): it must never get there.
const write = "CREATE TABLE pw_never (id int)"

// standbyOnly opens a *sql.DB whose DSN lists only a standby and waits
// until its monitor has found that no node is writable.
func standbyOnly(t *testing.T, ctx context.Context, params ...string) *sql.DB {
	t.Helper()
	cl := testcluster.Cluster()
	db := testcluster.OpenVia(t, []string{cl.Nodes[2].Addr()}, params...)
	c := connectorOf(t, db)
	testcluster.WaitUntil(t, time.Minute, "the monitor finds no primary", func() bool {
		st := c.Status()
		return st.Primary == "" && len(st.Nodes) == 1 && !st.Nodes[0].LastProbe.IsZero()
	})
	return db
}

func connectorOf(t *testing.T, db *sql.DB) *pgreplica.Connector {
	t.Helper()
	c, err := pgreplica.ConnectorOf(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPrimaryWaitBoundExpires: with no writable node, a write waits
// primary_wait and then fails with ErrNoPrimary, saying why there is none;
// it never reaches the standby (which would answer 25006).
func TestPrimaryWaitBoundExpires(t *testing.T) {
	const bound = 2 * time.Second
	// The context outlives the bound many times over: the bound, not the
	// caller's deadline, must end the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := standbyOnly(t, ctx, "primary_wait="+bound.String())
	start := time.Now()
	_, err := db.ExecContext(ctx, write)
	took := time.Since(start)
	t.Logf("write with no primary, primary_wait=%v: %v after %v", bound, err, took)
	if !errors.Is(err, pgreplica.ErrNoPrimary) {
		t.Fatalf("write with no writable node: %v; want ErrNoPrimary", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("write ended by the caller's context (%v), not by primary_wait", err)
	}
	if took < bound {
		t.Errorf("write failed after %v, before primary_wait (%v) ran out", took, bound)
	}
	if !strings.Contains(err.Error(), "primary_wait") || !strings.Contains(err.Error(), "writable") {
		t.Errorf("error %q does not say it waited primary_wait and why no node was writable", err)
	}
	testcluster.NoLeaks(t)
}

// TestPrimaryWaitOff: primary_wait=off fails a write at once with
// ErrNoPrimary. "At once" is checked against the default bound (30 s): the
// caller's deadline is shorter, so a write that waited at all for a
// primary would end with the context's error instead.
func TestPrimaryWaitOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := standbyOnly(t, ctx, "primary_wait=off")
	for i := range 5 {
		wctx, wcancel := context.WithTimeout(ctx, pgreplica.DefaultPrimaryWait/2)
		start := time.Now()
		_, err := db.ExecContext(wctx, write)
		wcancel()
		t.Logf("write %d with no primary, primary_wait=off: %v after %v", i, err, time.Since(start))
		if !errors.Is(err, pgreplica.ErrNoPrimary) || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("write %d with primary_wait=off and no writable node: %v; want ErrNoPrimary at once", i, err)
		}
	}
	testcluster.NoLeaks(t)
}

// TestPrimaryWaitEndsWithCallerContext: a caller's deadline or cancel
// shorter than primary_wait ends the wait with the context's error.
func TestPrimaryWaitEndsWithCallerContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := standbyOnly(t, ctx, "primary_wait=1h")

	const deadline = time.Second
	// Timed from before the deadline is set: the other way round, a busy
	// machine's scheduling between the two made a write that ended at its
	// deadline look early ("ended after 984ms", a concurrent CI pair).
	start := time.Now()
	dctx, dcancel := context.WithTimeout(ctx, deadline)
	_, err := db.ExecContext(dctx, write)
	took := time.Since(start)
	dcancel()
	t.Logf("write with a %v deadline and no primary: %v after %v", deadline, err, took)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("write with a %v deadline and no primary: %v; want the context's error", deadline, err)
	}
	if took < deadline {
		t.Errorf("write ended after %v, before its deadline (%v)", took, deadline)
	}

	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(cctx, write)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("write with no primary returned before its cancel: %v", err)
	case <-time.After(deadline):
	}
	ccancel()
	err = <-done
	t.Logf("write cancelled while waiting for a primary: %v", err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("write cancelled while waiting for a primary: %v; want context.Canceled", err)
	}
	testcluster.NoLeaks(t)
}
