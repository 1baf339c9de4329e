// Package monitor checks, against a real primary and replicas, how the
// monitor's probes judge nodes: what a read in flight sees when a replica
// stalls for a moment, and how fast a promotion is followed.
package monitor

import (
	"os"
	"testing"

	"github.com/pgreplica/pgreplica/internal/sandbox"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Run(m, sandbox.Options{})) }
