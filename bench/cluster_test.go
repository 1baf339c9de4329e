package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica/internal/sandbox"
)

// benchCluster is what setup needs from a primary (node 0) and one replica
// (node 1): the sandbox's (the default), or one already running named by
// PGREPLICA_BENCH_DSN. The second exists for instruction counts under
// valgrind: a process that starts the sandbox itself gets SIGCHLD from
// its server processes, which callgrind does not survive, and the
// sandbox's start-up (polling, SCRAM handshakes) varies by hundreds of
// millions of instructions from run to run, far more than the queries
// being counted.
type benchCluster interface {
	DSN() string
	NodeDSN(i int) string
	ReplicaPort() int
	Exec(ctx context.Context, i int, sql string) error
	WaitReplayed(ctx context.Context) error
}

type sandboxCluster struct{ *sandbox.Cluster }

func (c sandboxCluster) ReplicaPort() int { return c.Nodes[1].Port }

// external is a running primary + replica named by a pgreplica DSN whose
// user owns its database, e.g. the one `go run ./cmd/pgreplica sandbox
// --replicas 1` prints.
type external struct {
	dsn   string
	hosts []string // host:port, primary first
	u     url.URL
}

func externalCluster(dsn string) (*external, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, errors.New("PGREPLICA_BENCH_DSN is not a postgres:// URL")
	}
	hosts := strings.Split(u.Host, ",")
	if len(hosts) != 2 {
		return nil, fmt.Errorf("PGREPLICA_BENCH_DSN names %d hosts, want a primary and one replica", len(hosts))
	}
	return &external{dsn: dsn, hosts: hosts, u: *u}, nil
}

func (e *external) DSN() string { return e.dsn }

func (e *external) NodeDSN(i int) string {
	u := e.u
	u.Host = e.hosts[i]
	return u.String()
}

func (e *external) ReplicaPort() int {
	_, p, _ := net.SplitHostPort(e.hosts[1])
	port, _ := strconv.Atoi(p)
	return port
}

func (e *external) Exec(ctx context.Context, i int, sql string) error {
	c, err := pgx.Connect(ctx, e.NodeDSN(i))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.PgConn().Exec(ctx, sql).ReadAll() // simple protocol: several statements
	return err
}

func (e *external) WaitReplayed(ctx context.Context) error {
	var lsn string
	if err := e.queryRow(ctx, 0, &lsn, "SELECT pg_current_wal_lsn()::text"); err != nil {
		return err
	}
	c, err := pgx.Connect(ctx, e.NodeDSN(1))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	for {
		var done bool
		if err := c.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn).Scan(&done); err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (e *external) queryRow(ctx context.Context, i int, dst any, sql string, args ...any) error {
	c, err := pgx.Connect(ctx, e.NodeDSN(i))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.QueryRow(ctx, sql, args...).Scan(dst)
}
