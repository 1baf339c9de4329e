// Package failover fails a real primary over and checks what writes
// through pgreplica see: they wait for the new primary instead of failing,
// and none goes to a node only the DSN's order calls primary. It has a
// cluster of its own: the failover changes it for good.
package failover

import (
	"os"
	"testing"

	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }
