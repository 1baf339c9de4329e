package failover

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestWriteSentToATerminatedBackend: a pooled primary connection's backend
// is terminated just as a write reaches it, the race of a switchover's
// fast shutdown, made certain: the backend is stopped (SIGSTOP), then
// terminated (the signal waits), then the write is sent (the idle check
// sees nothing: the backend has not answered), and once the statement is
// in the backend's receive queue the backend continues and ends with
// FATAL 57P01 before reading it. The write's first answer is that error,
// so it never ran: it runs once on a new connection and is stored once.
// A write the backend was running when it was terminated (the first
// answer is BindComplete) fails with 57P01 and is not run again.
func TestWriteSentToATerminatedBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testcluster.Cluster()
	primary, table := writableTable(t, ctx, "unrecv")
	// One primary connection: the write must take the one whose backend
	// is stopped.
	db := testcluster.Open(t, "hedge_after=off", "primary_max_conns=1")
	db.SetMaxIdleConns(1)
	backend := func() int {
		t.Helper()
		var pid int
		if err := db.QueryRowContext(pgreplica.UsePrimary(ctx), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	count := func(id int) int {
		t.Helper()
		n, err := cl.QueryInt(ctx, primary, fmt.Sprintf("SELECT count(*) FROM %s WHERE id = %d", table, id))
		if err != nil {
			t.Fatal(err)
		}
		return int(n)
	}

	// Sent to a backend that ends before it reads it.
	pid := backend()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	if err := cl.Exec(ctx, primary, fmt.Sprintf("SELECT pg_terminate_backend(%d)", pid)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", 1)
		done <- err
	}()
	testcluster.WaitUntil(t, time.Minute, "the write queued at the stopped backend", func() bool {
		return receiveQueued(t, pid)
	})
	syscall.Kill(pid, syscall.SIGCONT)
	stopped = false
	if err := <-done; err != nil {
		t.Errorf("a write sent to a backend that was terminated before it read it: %v, want it run on another connection", err)
	}
	if n := count(1); n != 1 {
		t.Errorf("the write is stored %d times, want once", n)
	}

	// Running when its backend is terminated: its outcome is unknown.
	pid = backend()
	go func() {
		_, err := db.ExecContext(ctx, "INSERT INTO "+table+" SELECT $1::int FROM pg_sleep(20)", 2)
		done <- err
	}()
	testcluster.WaitUntil(t, time.Minute, "the write running", func() bool {
		n, err := cl.QueryInt(ctx, primary, fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'active' AND query LIKE 'INSERT%%pg_sleep%%'", pid))
		return err == nil && n == 1
	})
	if err := cl.Exec(ctx, primary, fmt.Sprintf("SELECT pg_terminate_backend(%d)", pid)); err != nil {
		t.Fatal(err)
	}
	err := <-done
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Errorf("a write whose backend was terminated while it ran: %v, want 57P01 (it must not run again)", err)
	}
	if n := count(2); n != 0 {
		t.Errorf("the terminated write is stored %d times, want 0", n)
	}
	testcluster.NoLeaks(t)
}

// receiveQueued reports whether one of process pid's TCP sockets has
// bytes in its receive queue (/proc/net/tcp's rx_queue).
func receiveQueued(t *testing.T, pid int) bool {
	t.Helper()
	inodes := map[string]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			// tx_queue:rx_queue, hexadecimal
			if q := strings.SplitN(fs[4], ":", 2); len(q) == 2 {
				if n, err := strconv.ParseInt(q[1], 16, 64); err == nil && n > 0 {
					fh.Close()
					return true
				}
			}
		}
		fh.Close()
	}
	return false
}
