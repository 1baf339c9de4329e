package integration

import (
	"testing"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Ping checks the primary but does not pin a sql.Conn to it: its reads
// still go to replicas.
func TestPingDoesNotPinAConnToThePrimary(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	if port := testcluster.Port(t, ctx, c); port == testcluster.Cluster().Nodes[0].Port {
		t.Fatal("a read after Ping on the same sql.Conn went to the primary")
	}
}
