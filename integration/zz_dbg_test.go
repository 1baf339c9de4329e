package integration

import (
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestDbgFirst(t *testing.T) {
	ctx := testCtx(t)
	for i := 0; i < 5; i++ {
		db := openDB(t)
		c, _ := pgreplica.ConnectorOf(ctx, db)
		start := time.Now()
		port := testcluster.Port(t, ctx, db)
		t.Logf("first read %v after %v", testcluster.Role(port), time.Since(start))
		for _, n := range c.Status().Nodes {
			t.Logf("  %s %s %s lag %v bytes %d probe %v", n.Addr, n.Role, n.State, n.Lag, n.LagBytes, n.LastProbe.Format("15:04:05.000"))
		}
		db.Close()
	}
}
