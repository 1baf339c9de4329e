package pgreplica

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// newTestNode builds a replica node on an address nothing listens on; its
// pool never connects unless asked to.
func newTestNode(t *testing.T, maxConns int32) *node {
	t.Helper()
	cfg, err := pgxpool.ParseConfig("postgres://u@127.0.0.1:1/d?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	n, err := newNode(1, cfg, roleSizes{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.close)
	return n
}

// A dial in progress (a partitioned node drops the SYN) ends as soon as the
// node is marked down, and later dials fail at once.
func TestDialEndsWhenMarkedDown(t *testing.T) {
	n := newTestNode(t, 1)
	started := make(chan struct{})
	dial := n.dialFunc(func(ctx context.Context, _, _ string) (net.Conn, error) {
		close(started)
		<-ctx.Done() // a dropped SYN: nothing comes back
		return nil, ctx.Err()
	})
	done := make(chan error, 1)
	go func() {
		_, err := dial(context.Background(), "tcp", n.addr)
		done <- err
	}()
	<-started
	n.markDown()
	select {
	case err := <-done:
		if !errors.Is(err, errNodeDown) {
			t.Fatalf("dial error %v, want errNodeDown", err)
		}
	case <-time.After(time.Second):
		t.Fatal("the dial kept waiting after the node was marked down")
	}
	if _, err := dial(context.Background(), "tcp", n.addr); !errors.Is(err, errNodeDown) {
		t.Fatalf("dial to a node marked down: %v, want errNodeDown at once", err)
	}
	// Up again: dials go through.
	n.setUp()
	ok := n.dialFunc(func(context.Context, string, string) (net.Conn, error) {
		c, _ := net.Pipe()
		return c, nil
	})
	c, err := ok(context.Background(), "tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// A dial to a node that never answers is bounded by the connect timeout
// even when the caller's context is not (pgx's cancel requests use 15 s).
func TestDialBoundedByConnectTimeout(t *testing.T) {
	n := newTestNode(t, 1)
	n.replicaTimeout = 100 * time.Millisecond
	dial := n.dialFunc(func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	start := time.Now()
	if _, err := dial(context.Background(), "tcp", n.addr); err == nil {
		t.Fatal("dial succeeded")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("dial took %v with a 100ms connect timeout", took)
	}
}

// A read waiting for a slot of a full replica stops waiting when the node is
// marked down; a primary's waits are left to the caller's context.
func TestSlotWaitEndsWhenMarkedDown(t *testing.T) {
	n := newTestNode(t, 1)
	if err := n.takeSlot(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.takeSlot(context.Background(), nil) }()
	select {
	case err := <-done:
		t.Fatalf("took a slot of a full node: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	n.markDown()
	select {
	case err := <-done:
		if !errors.Is(err, errNodeDown) {
			t.Fatalf("err %v, want errNodeDown", err)
		}
	case <-time.After(time.Second):
		t.Fatal("the wait went on after the node was marked down")
	}
	if err := n.takeSlot(context.Background(), nil); !errors.Is(err, errNodeDown) {
		t.Fatalf("waiting on a full node already down: %v, want errNodeDown at once", err)
	}

	n.setUp()
	n.standby.Store(false) // the primary
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	go func() { done <- n.takeSlot(ctx, nil) }()
	time.Sleep(20 * time.Millisecond)
	n.markDown()
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("primary slot wait: %v, want the caller's deadline", err)
	}
	<-n.slots
	if err := n.takeSlot(context.Background(), nil); err != nil {
		t.Fatalf("a free slot: %v", err)
	}
}

// A down node is probed again at most max(interval, 500 ms) after a
// failure, counting the tick: a restarted replica serves within an interval
// plus 1 s, with room for a slow reconnect.
func TestProbeBackoffCapped(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		want     []time.Duration
	}{
		{200 * time.Millisecond, []time.Duration{200, 300, 300, 300}},
		{100 * time.Millisecond, []time.Duration{100, 200, 400, 400}},
		{time.Second, []time.Duration{1000, 1000, 1000}},
		{5 * time.Second, []time.Duration{5000, 5000}},
	} {
		m := &monitor{interval: tc.interval}
		for i, want := range tc.want {
			if got := m.backoff(int32(i + 1)); got != want*time.Millisecond {
				t.Errorf("interval %v, failure %d: backoff %v, want %v", tc.interval, i+1, got, want*time.Millisecond)
			}
		}
		if got := m.backoff(100); got > max(tc.interval, maxProbeGap) {
			t.Errorf("interval %v: backoff after 100 failures %v", tc.interval, got)
		}
	}
}

// A dial that completes after the connector closed (pgx's cancel request
// for a connection it abandons, dialled just before db.Close) is closed at
// once: close had already closed the sockets it tracked, so this one's
// reader goroutine would have outlived db.Close (seen in
// TestReplicaAtMaxConnections' leak check under a CI pair on Docker).
func TestDialCompletingAfterCloseIsClosed(t *testing.T) {
	n := newTestNode(t, 1)
	n.standby.Store(false) // a primary: no up period ends its dials
	entered, release := make(chan struct{}), make(chan struct{})
	client, server := net.Pipe()
	defer server.Close()
	dial := n.dialFunc(func(context.Context, string, string) (net.Conn, error) {
		close(entered)
		<-release // it connected before the close; it returns after
		return client, nil
	})
	done := make(chan error, 1)
	go func() {
		c, err := dial(context.Background(), "tcp", "127.0.0.1:1")
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	<-entered
	n.closeWhenIdle()
	close(release)
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("dial completing after close: %v, want ErrClosed", err)
	}
	_ = client.SetWriteDeadline(time.Now().Add(time.Second)) // a pipe's write waits for a reader
	if _, err := client.Write([]byte{0}); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatal("its socket is still open")
	}
	n.connsMu.Lock()
	defer n.connsMu.Unlock()
	if len(n.conns) != 0 {
		t.Fatalf("%d sockets still tracked", len(n.conns))
	}
}
