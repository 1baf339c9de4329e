// Package failover fails a real primary over and checks what writes
// through pgreplica see: they wait for the new primary instead of failing,
// and none goes to a node only the DSN's order calls primary. It has a
// cluster of its own: the failover changes it for good.
package failover

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }

// writableTable finds the node that answers as writable now (the earlier
// tests of this package may have promoted another) and creates on it a
// table (id int) named after prefix; it returns the node's index and the
// table.
func writableTable(t *testing.T, ctx context.Context, prefix string) (int, string) {
	t.Helper()
	cl := testcluster.Cluster()
	primary := -1
	for _, n := range cl.Nodes {
		if got, err := cl.QueryInt(ctx, n.Index, "SELECT pg_is_in_recovery()::int"); err == nil && got == 0 {
			primary = n.Index
		}
	}
	if primary < 0 {
		t.Fatal("no writable node left by the earlier tests")
	}
	table := prefix + "_" + time.Now().Format("150405")
	if _, err := testcluster.Direct(t, primary).ExecContext(ctx, "CREATE TABLE "+table+" (id int)"); err != nil {
		t.Fatal(err)
	}
	return primary, table
}
