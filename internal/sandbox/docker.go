package sandbox

// The Docker backend, used only when this machine has no PostgreSQL server
// binaries. One container per node from the postgres:15 image, on a Docker
// network of their own; each node's 5432 is published on a fixed free port
// of 127.0.0.1, so Node.Port survives Stop/Start. Mapping of the API:
//
//	Stop     -> kill the container (SIGKILL), like an immediate shutdown
//	Start    -> start the container again, wait until it accepts connections
//	Freeze   -> pause the container (cgroup freezer: every process stops)
//	Thaw     -> unpause it
//	Promote  -> docker exec pg_ctl promote -w as the postgres user
//	Close    -> remove the containers with their volumes, then the network
//
// Replica containers run pg_basebackup -R from the primary container on
// their first start, then exec postgres; on later starts the data directory
// exists and postgres starts directly. Not exercised in this repository's CI
// (no Docker daemon there): keep it small.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

const (
	dockerRepo = "postgres"
	dockerTag  = "15"
	// dockerData is the replicas' PGDATA: a not yet existing directory
	// inside the image's volume, as pg_basebackup wants.
	dockerReplicaData = "/var/lib/postgresql/data/replica"
	dockerPrimaryData = "/var/lib/postgresql/data"
)

// dockerServerArgs are the server settings, passed on the command line of
// every container (the replicas' postgresql.conf comes from the primary's,
// which the image does not write them to).
var dockerServerArgs = []string{
	"-c", "listen_addresses=*",
	"-c", "wal_level=replica",
	"-c", "max_wal_senders=10",
	"-c", "max_replication_slots=10",
	"-c", "hot_standby=on",
	"-c", "hot_standby_feedback=on",
	"-c", "wal_receiver_status_interval=1s",
	"-c", "wal_retrieve_retry_interval=200ms",
	"-c", "max_connections=300",
	"-c", "shared_buffers=32MB",
	"-c", "fsync=off",
	"-c", "full_page_writes=off",
	"-c", "synchronous_commit=on",
}

// dockerPool connects to the Docker daemon (DOCKER_HOST or the default
// socket) and checks that it answers.
func dockerPool() (*dockertest.Pool, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := pool.Client.PingWithContext(ctx); err != nil {
		return nil, err
	}
	return pool, nil
}

func startDocker(ctx context.Context, c *Cluster, pool *dockertest.Pool, replicas int) error {
	prefix := "pgreplica-sandbox-" + randomHex(4)
	net, err := pool.CreateNetwork(prefix)
	if err != nil {
		return fmt.Errorf("sandbox: docker network: %w", err)
	}
	var nodes []*dockerNode
	c.teardown = func() error {
		if err := net.Close(); err != nil {
			return fmt.Errorf("remove docker network %s: %w", prefix, err)
		}
		return nil
	}
	ports, err := reservePorts(replicas + 1)
	if err != nil {
		return err
	}
	for i := 0; i <= replicas; i++ {
		n := &Node{Index: i, Port: ports[i], c: c, standby: i > 0}
		d := &dockerNode{pool: pool, n: n, name: fmt.Sprintf("%s-node%d", prefix, i), data: dockerPrimaryData}
		if i > 0 {
			d.data = dockerReplicaData
		}
		n.impl = d
		c.Nodes = append(c.Nodes, n)
		nodes = append(nodes, d)
	}

	run := func(d *dockerNode, opts *dockertest.RunOptions) error {
		opts.Name, opts.Hostname = d.name, d.name
		opts.Repository, opts.Tag = dockerRepo, dockerTag
		opts.Networks = []*dockertest.Network{net}
		opts.ExposedPorts = []string{"5432/tcp"}
		opts.PortBindings = map[dc.Port][]dc.PortBinding{
			"5432/tcp": {{HostIP: "127.0.0.1", HostPort: strconv.Itoa(d.n.Port)}},
		}
		res, err := pool.RunWithOptions(opts, func(hc *dc.HostConfig) {
			hc.AutoRemove = false // Stop must leave the container startable
			hc.RestartPolicy = dc.RestartPolicy{Name: "no"}
		})
		if err != nil {
			return fmt.Errorf("sandbox: run container for %s: %w", d.n.name(), err)
		}
		d.res = res
		return c.waitAccepting(ctx, d.n.Index, 2*time.Minute)
	}

	p := nodes[0]
	c.logf("docker run %s:%s primary on %s", dockerRepo, dockerTag, p.n.Addr())
	if err := run(p, &dockertest.RunOptions{
		Env: []string{"POSTGRES_USER=" + superuser, "POSTGRES_PASSWORD=" + c.superPassword},
		Cmd: append([]string{"postgres"}, dockerServerArgs...),
	}); err != nil {
		return err
	}
	// The image's pg_hba.conf allows "host all all all" only.
	if _, err := p.exec(ctx, "postgres", "sh", "-c",
		`echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"`); err != nil {
		return fmt.Errorf("sandbox: allow replication connections: %w", err)
	}
	if err := c.execOn(ctx, 0, "postgres", "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("sandbox: reload primary configuration: %w", err)
	}
	if err := c.bootstrap(ctx); err != nil {
		return err
	}

	if err := c.createSlots(ctx); err != nil {
		return err
	}
	for _, d := range nodes[1:] {
		name := d.n.name()
		c.logf("docker run %s on %s (pg_basebackup from %s)", name, d.n.Addr(), p.name)
		script := fmt.Sprintf(`set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pg_basebackup -h %s -p 5432 -U %s -d application_name=%s -D "$PGDATA" -R -X stream -c fast -S %s
fi
exec postgres "$@"`, p.name, superuser, name, name)
		err := run(d, &dockertest.RunOptions{
			User:       "postgres",
			Env:        []string{"PGDATA=" + d.data, "PGPASSWORD=" + c.superPassword},
			Entrypoint: []string{"bash", "-c", script, "sandbox-replica"},
			Cmd:        dockerServerArgs,
		})
		if err != nil {
			return err
		}
	}
	c.logf("wait for %d replica(s) to stream", replicas)
	if err := c.waitStreaming(ctx); err != nil {
		return err
	}
	return c.WaitReplayed(ctx)
}

// dockerNode is one container.
type dockerNode struct {
	pool *dockertest.Pool
	res  *dockertest.Resource // nil until the container runs
	n    *Node
	name string // container name and host name on the network
	data string // PGDATA inside the container
}

func (d *dockerNode) id() string { return d.res.Container.ID }

func (d *dockerNode) start(ctx context.Context) error {
	if d.res == nil {
		return errors.New("container was never created")
	}
	if err := d.pool.Client.StartContainerWithContext(d.id(), nil, ctx); err != nil {
		return err
	}
	return d.n.c.waitAccepting(ctx, d.n.Index, time.Minute)
}

func (d *dockerNode) stop(ctx context.Context) error {
	if d.res == nil {
		return nil
	}
	return d.pool.Client.KillContainer(dc.KillContainerOptions{ID: d.id(), Signal: dc.SIGKILL, Context: ctx})
}

// stopClean stops the container with SIGTERM's grace: the server runs a
// smart-then-fast shutdown, so replicas receive all WAL first.
func (d *dockerNode) stopClean(ctx context.Context) error {
	if d.res == nil {
		return nil
	}
	return d.pool.Client.StopContainerWithContext(d.id(), 60, ctx)
}

func (d *dockerNode) rejoin(context.Context, *Node) error {
	return errors.New("not supported with the Docker backend")
}

func (d *dockerNode) freeze() error { return d.pool.Client.PauseContainer(d.id()) }
func (d *dockerNode) thaw() error   { return d.pool.Client.UnpauseContainer(d.id()) }

func (d *dockerNode) promote(ctx context.Context) error {
	_, err := d.exec(ctx, "postgres", "pg_ctl", "promote", "-w", "-t", "60", "-D", d.data)
	return err
}

func (d *dockerNode) running() bool {
	if d.res == nil {
		return false
	}
	ct, err := d.pool.Client.InspectContainer(d.id())
	return err == nil && ct.State.Running
}

func (d *dockerNode) destroy() error {
	if d.res == nil {
		return nil
	}
	return d.pool.Purge(d.res)
}

// exec runs cmd in the container as user and fails on a non-zero exit.
func (d *dockerNode) exec(ctx context.Context, user string, cmd ...string) (string, error) {
	ex, err := d.pool.Client.CreateExec(dc.CreateExecOptions{
		Container: d.id(), Cmd: cmd, User: user,
		AttachStdout: true, AttachStderr: true, Context: ctx,
	})
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	if err := d.pool.Client.StartExec(ex.ID, dc.StartExecOptions{
		OutputStream: &out, ErrorStream: &out, Context: ctx,
	}); err != nil {
		return "", err
	}
	insp, err := d.pool.Client.InspectExec(ex.ID)
	if err != nil {
		return "", err
	}
	text := redact(out.String(), d.n.c.superPassword, d.n.c.password)
	if insp.ExitCode != 0 {
		return text, fmt.Errorf("%s: exit code %d%s", strings.Join(cmd[:1], " "), insp.ExitCode, indentTail(text, 15))
	}
	return text, nil
}

func (d *dockerNode) partition(context.Context) error {
	return errors.New("not supported with the Docker backend yet")
}

func (d *dockerNode) heal(context.Context) error { return nil }
