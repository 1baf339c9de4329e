package patroni

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCluster drives the harness through what the integration tests use:
// start, synchronous mode, a switchover, a crashed leader failed over, and
// a Close that leaves no process and no directory behind.
func TestCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Logf: t.Logf})
	if errors.Is(err, ErrUnavailable) && os.Getenv("PGREPLICA_INTEGRATION") != "require" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	st, err := c.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 3 {
		t.Fatalf("/cluster lists %d members, want 3: %+v", len(st), st)
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := inRecovery(ctx, t, c, leader); got {
		t.Fatalf("leader %s is in recovery", leader.Name)
	}

	if err := c.SetSynchronousMode(ctx, true); err != nil {
		t.Fatal(err)
	}
	st, _ = c.State(ctx)
	if !hasRole(st, "sync_standby") {
		t.Fatalf("synchronous_mode on, no sync_standby: %+v", st)
	}

	// In synchronous mode Patroni switches over only to the sync standby
	// (412 "candidate name does not match with sync_standby" otherwise).
	var candidate *Member
	for _, s := range st {
		for _, m := range c.Members {
			if m.Name == s.Name && s.Role == "sync_standby" {
				candidate = m
			}
		}
	}
	if candidate == nil {
		t.Fatalf("no sync_standby member: %+v", st)
	}
	if err := c.Switchover(ctx, leader, candidate); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if now, _ := c.Leader(ctx); now != candidate {
		t.Fatalf("after switchover to %s the leader is %v", candidate.Name, now)
	}
	if inRecovery(ctx, t, c, candidate) || !inRecovery(ctx, t, c, leader) {
		t.Fatalf("after switchover: %s should be primary and %s a standby", candidate.Name, leader.Name)
	}

	old := candidate
	if err := old.CrashPostgres(ctx); err != nil {
		t.Fatal(err)
	}
	next, err := c.waitLeader(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s crashed, %s promoted", old.Name, next.Name)
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}

	base, scope := c.base, c.Scope
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Close (%v)", base, err)
	}
	if left := processesMentioning(base, scope+":"); len(left) > 0 {
		t.Errorf("processes left after Close: %v", left)
	}
}

func hasRole(st []MemberState, role string) bool {
	for _, s := range st {
		if s.Role == role {
			return true
		}
	}
	return false
}

func inRecovery(ctx context.Context, t *testing.T, c *Cluster, m *Member) bool {
	t.Helper()
	conn, err := pgx.Connect(ctx, c.AdminDSN(m))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func processesMentioning(words ...string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || e.Name() == "self" || e.Name() == "thread-self" {
			continue
		}
		for _, w := range words {
			if strings.Contains(string(b), w) {
				out = append(out, e.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
	return out
}
