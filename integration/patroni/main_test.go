// Package patroni runs pgreplica on a real Patroni cluster
// (internal/patroni: etcd and three Patroni members on loopback) through a
// switchover and a crashed leader, side by side with pgx's own multi-host
// target_session_attrs=read-write on the same cluster in the same run, and
// reads the members from Patroni's REST API with the Patroni discoverer.
// The tests assert what a user sees (failed reads and writes, lost
// acknowledged writes); the timings are logged figures (docs/failures.md,
// "Patroni").
package patroni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/patroni"
)

var cluster *patroni.Cluster

func TestMain(m *testing.M) {
	// A liveness bound: the cluster starts in about 10 s here.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	c, err := patroni.Start(ctx, patroni.Options{Logf: func(f string, a ...any) { fmt.Printf("patroni: "+f+"\n", a...) }})
	cancel()
	if err != nil {
		if errors.Is(err, patroni.ErrUnavailable) && os.Getenv("PGREPLICA_INTEGRATION") != "require" {
			fmt.Println("SKIP Patroni tests:", err)
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "Patroni cluster:", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	if err := c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "closing the Patroni cluster:", err)
	}
	os.Exit(code)
}
