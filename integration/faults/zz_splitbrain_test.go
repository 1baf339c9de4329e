package faults

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestSplitBrainKeepsWritesOnThePrimary runs after TestPromotion (file
// order): replica1 is the primary; the old primary is a standby of it or
// stopped. Promoting
// replica2 as well makes two writable nodes. pgreplica must report it and
// keep writing to the primary it has, not guess.
func TestSplitBrainKeepsWritesOnThePrimary(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	if n, err := cl.QueryInt(ctx, 1, "SELECT (NOT pg_is_in_recovery())::int"); err != nil || n != 1 {
		t.Skip("needs TestPromotion to have run first (tests run in file order)")
	}
	testcluster.NoLeaks(t)
	var logs testcluster.SyncBuffer
	cfg, err := pgreplica.ParseConfig(testcluster.DSN(monitorParams))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	connector, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	t.Cleanup(func() { db.Close() })

	current := cl.Nodes[1].Addr()
	testcluster.WaitUntil(t, 10*time.Second, "the connector follows the promoted replica1", func() bool {
		return connector.Status().Primary == current
	})
	if err := cl.Nodes[2].Promote(ctx); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, 10*time.Second, "two writable nodes are reported", func() bool {
		return strings.Contains(logs.String(), "more than one writable node")
	})
	for i := range 20 {
		if _, err := db.ExecContext(ctx, "INSERT INTO acked (id) VALUES ($1)", 1_000_000+i); err != nil {
			t.Fatal(err)
		}
	}
	if got := connector.Status().Primary; got != current {
		t.Fatalf("primary is %s after the split brain, want it kept at %s", got, current)
	}
	count := func(i int) int {
		var n int
		q := "SELECT count(*) FROM acked WHERE id >= 1000000"
		if err := testcluster.Direct(t, i).QueryRowContext(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if on1, on2 := count(1), count(2); on1 != 20 || on2 != 0 {
		t.Fatalf("writes after the split brain: %d on replica1 (the primary kept), %d on replica2; want 20 and 0", on1, on2)
	}
	t.Log(firstLine(logs.String(), "more than one writable node"))
}

func firstLine(s, containing string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, containing) {
			return l
		}
	}
	return fmt.Sprintf("(no line with %q)", containing)
}
