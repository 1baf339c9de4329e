// Package timeline fails a real primary over to a replica and checks what
// pgreplica makes of the replica that is left following the dead primary,
// on a timeline the new primary's writes never reach. It has a cluster of
// its own: the failover changes it for good.
package timeline

import (
	"os"
	"testing"

	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }
