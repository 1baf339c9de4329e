package sandbox

// The Docker backend: one container per node, from any image that holds
// PostgreSQL's server programs (default postgres:17, PGREPLICA_DOCKER_IMAGE
// overrides; scripts/postgres-image.sh builds one from Debian's package
// without a registry). The image's entrypoint and environment conventions
// are not used: every container runs "sleep infinity" under Docker's init,
// and the sandbox runs initdb, pg_ctl and pg_basebackup in it with docker
// exec as the image's postgres user, exactly as the local backend does on
// this machine. So a stop, a restart and a promotion never lose the
// container or its address.
//
// Every container is on a bridge network the sandbox creates, and node i
// listens on its own port Pi on the container's address: the DSN names the
// containers' addresses (this machine's own test hosts), so that a
// partition drops packets (see partition) and inet_server_port() tells the
// nodes apart. Pi is also published on 127.0.0.1:Pi for clients that cannot
// reach container addresses (Docker Desktop); a partition does not cover
// that path.
//
// Everything the sandbox creates is named pgreplica-sandbox-<id>… and
// labelled with the id and its owner (host name, pid and start time of the
// test process): Close removes it, and the next Start removes what a
// crashed run (owner gone) left behind.
//
//	Stop      -> pg_ctl stop -m immediate (the container keeps running)
//	Freeze    -> docker pause (cgroup freezer: every process stops)
//	Partition -> iptables DROP of everything but loopback, in the
//	             container's network namespace (nsenter)
//	Close     -> remove the containers with their volumes, then the network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

// DefaultDockerImage is the image of the Docker backend when
// PGREPLICA_DOCKER_IMAGE is not set.
const DefaultDockerImage = "postgres:17"

const (
	// dockerLabel holds the cluster id on every container and network.
	dockerLabel = "org.pgreplica.sandbox"
	// dockerOwnerLabel is "host pid start": the process that made it.
	dockerOwnerLabel = "org.pgreplica.sandbox.owner"
	// dockerDir holds the data directory, node.conf, the server log and
	// the Unix socket, on a tmpfs (fast, and gone with the container).
	dockerDir  = "/pgreplica"
	dockerData = dockerDir + "/data"
	dockerLog  = dockerDir + "/server.log"
	// dockerSocketDir is a directory of the host mounted into the
	// container: the server puts a second Unix socket there, so the host
	// can reach the node through a socket too (Node.SocketDir).
	dockerSocketDir = "/pgreplica-socket"
)

// dockerHBA lets every address of the sandbox network in with a password.
const dockerHBA = `# pgreplica sandbox (docker)
local all         all          trust
local replication all          trust
host  all         all  all     scram-sha-256
host  replication all  all     scram-sha-256
`

// dockerPool connects to the Docker engine (DOCKER_HOST or the default
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

// dockerImage is the image to run: PGREPLICA_DOCKER_IMAGE or the default.
func dockerImage() string {
	if img := os.Getenv("PGREPLICA_DOCKER_IMAGE"); img != "" {
		return img
	}
	return DefaultDockerImage
}

// dockerOwner identifies this process on this host for reapDocker.
func dockerOwner() string {
	host, _ := os.Hostname()
	st, _ := procStartTime(os.Getpid())
	return fmt.Sprintf("%s %d %s", host, os.Getpid(), st)
}

// ownerGone reports whether the owner label names a process of this host
// that no longer runs. Other hosts' resources are never touched.
func ownerGone(owner string) bool {
	var host, start string
	var pid int
	if _, err := fmt.Sscan(owner, &host, &pid, &start); err != nil {
		return false
	}
	if me, _ := os.Hostname(); host != me {
		return false
	}
	st, err := procStartTime(pid)
	return err != nil || st != start
}

// reapDocker removes the containers and networks of sandboxes whose owner
// is gone: the leftovers of a test binary killed before Close. Errors are
// ignored: this is housekeeping.
func reapDocker(ctx context.Context, cl *dc.Client, logf func(string, ...any)) {
	cts, err := cl.ListContainers(dc.ListContainersOptions{
		All: true, Filters: map[string][]string{"label": {dockerLabel}}, Context: ctx,
	})
	if err == nil {
		for _, ct := range cts {
			if ownerGone(ct.Labels[dockerOwnerLabel]) {
				logf("remove stale sandbox container %s (owner %s is gone)", strings.Join(ct.Names, ","), ct.Labels[dockerOwnerLabel])
				_ = cl.RemoveContainer(dc.RemoveContainerOptions{ID: ct.ID, Force: true, RemoveVolumes: true, Context: ctx})
			}
		}
	}
	nets, err := cl.FilteredListNetworks(dc.NetworkFilterOpts{"label": {dockerLabel: true}})
	if err == nil {
		for _, nw := range nets {
			if ownerGone(nw.Labels[dockerOwnerLabel]) {
				logf("remove stale sandbox network %s", nw.Name)
				_ = cl.RemoveNetwork(nw.ID)
			}
		}
	}
}

// dockerEnv is what every container of one cluster shares.
type dockerEnv struct {
	cl      *dc.Client
	image   string
	prefix  string // pgreplica-sandbox-<id>
	network *dc.Network
	labels  map[string]string
	bin     string // server programs inside the image
	secrets []string
}

func startDocker(ctx context.Context, c *Cluster, pool *dockertest.Pool, replicas int) error {
	cl := pool.Client
	reapDocker(ctx, cl, c.logf)
	c.id = randomHex(4)
	e := &dockerEnv{
		cl:      cl,
		image:   dockerImage(),
		prefix:  baseDirPrefix + c.id,
		labels:  map[string]string{dockerLabel: c.id, dockerOwnerLabel: dockerOwner()},
		secrets: []string{c.superPassword, c.password},
	}
	if _, err := cl.InspectImage(e.image); err != nil {
		if errors.Is(err, dc.ErrNoSuchImage) {
			return fmt.Errorf("sandbox: docker image %s is not on this machine (the sandbox never pulls): "+
				"docker pull %[1]s, or build one from Debian's postgresql package with "+
				"`bash scripts/postgres-image.sh` and set PGREPLICA_DOCKER_IMAGE to the name it prints last", e.image)
		}
		return fmt.Errorf("sandbox: inspect docker image %s: %w", e.image, err)
	}
	nw, err := cl.CreateNetwork(dc.CreateNetworkOptions{
		Name: e.prefix, Driver: "bridge", Labels: e.labels, CheckDuplicate: true, Context: ctx,
	})
	if err != nil {
		return fmt.Errorf("sandbox: create docker network %s: %w", e.prefix, err)
	}
	e.network = nw
	var nodes []*dockerNode
	c.teardown = func() error {
		if err := cl.RemoveNetwork(nw.ID); err != nil {
			return fmt.Errorf("remove docker network %s: %w", e.prefix, err)
		}
		return nil
	}
	c.logf("sandbox %s: docker image %s", e.prefix, e.image)

	ports, err := reservePorts(replicas + 1)
	if err != nil {
		return err
	}
	for i := 0; i <= replicas; i++ {
		n := &Node{Index: i, Port: ports[i], c: c, standby: i > 0}
		d := &dockerNode{env: e, n: n, name: fmt.Sprintf("%s-node%d", e.prefix, i)}
		n.impl = d
		c.Nodes = append(c.Nodes, n)
		nodes = append(nodes, d)
	}
	// AddReplica's container, made as Start makes the first ones.
	c.addNode = func(ctx context.Context, n *Node) error {
		d := &dockerNode{env: e, n: n, name: fmt.Sprintf("%s-node%d", e.prefix, n.Index)}
		n.impl = d
		return d.create(ctx)
	}
	// Containers in parallel: creating one takes a while on a slow
	// storage driver.
	if err := parallel(nodes, (*dockerNode).create, ctx); err != nil {
		return err
	}
	if e.bin, err = nodes[0].findBin(ctx); err != nil {
		return err
	}

	p := nodes[0]
	c.logf("initdb primary on %s", p.n.Addr())
	if err := p.initPrimary(ctx); err != nil {
		return err
	}
	if err := c.waitAccepting(ctx, 0, time.Minute); err != nil {
		return err
	}
	if err := c.bootstrap(ctx); err != nil {
		return err
	}
	if err := c.createSlots(ctx); err != nil {
		return err
	}
	if err := parallel(nodes[1:], func(d *dockerNode, ctx context.Context) error { return d.createReplica(ctx, p.n) }, ctx); err != nil {
		return err
	}
	if replicas > 0 {
		c.logf("wait for %d replica(s) to stream", replicas)
	}
	if err := c.waitStreaming(ctx); err != nil {
		return err
	}
	return c.WaitReplayed(ctx)
}

// parallel runs f on every node at once and joins the errors.
func parallel(nodes []*dockerNode, f func(*dockerNode, context.Context) error, ctx context.Context) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, d := range nodes {
		wg.Go(func() { errs[i] = f(d, ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dockerNode is one container and the server in it.
type dockerNode struct {
	env  *dockerEnv
	n    *Node
	name string // container name
	id   string // container id; "" until created
}

// create creates and starts the container (sleep infinity under Docker's
// init, which reaps the servers pg_ctl leaves behind) and learns its
// address on the sandbox network.
func (d *dockerNode) create(ctx context.Context) error {
	e := d.env
	port := dc.Port(strconv.Itoa(d.n.Port) + "/tcp")
	sock, err := os.MkdirTemp("", d.name+"-socket-")
	if err != nil {
		return fmt.Errorf("sandbox: socket directory for %s: %w", d.name, err)
	}
	if err := os.Chmod(sock, 0o777); err != nil { // the image's postgres user creates the socket
		return fmt.Errorf("sandbox: socket directory for %s: %w", d.name, err)
	}
	d.n.SocketDir = sock
	ct, err := e.cl.CreateContainer(dc.CreateContainerOptions{
		Name: d.name,
		Config: &dc.Config{
			Image:        e.image,
			Entrypoint:   []string{"sleep"},
			Cmd:          []string{"infinity"},
			Labels:       e.labels,
			Hostname:     d.n.name(),
			ExposedPorts: map[dc.Port]struct{}{port: {}},
		},
		HostConfig: &dc.HostConfig{
			Init:          true,
			Tmpfs:         map[string]string{dockerDir: "rw,mode=1777"},
			Binds:         []string{sock + ":" + dockerSocketDir},
			NetworkMode:   e.network.Name,
			PortBindings:  map[dc.Port][]dc.PortBinding{port: {{HostIP: "127.0.0.1", HostPort: strconv.Itoa(d.n.Port)}}},
			RestartPolicy: dc.RestartPolicy{Name: "no"},
		},
		Context: ctx,
	})
	if err != nil {
		return fmt.Errorf("sandbox: create container %s from %s: %w", d.name, e.image, err)
	}
	d.id = ct.ID
	if err := e.cl.StartContainerWithContext(d.id, nil, ctx); err != nil {
		return fmt.Errorf("sandbox: start container %s: %w%s", d.name, err, d.logTail())
	}
	info, err := e.cl.InspectContainerWithContext(d.id, ctx)
	if err != nil {
		return fmt.Errorf("sandbox: inspect container %s: %w", d.name, err)
	}
	if !info.State.Running {
		return fmt.Errorf("sandbox: container %s did not start (%s, exit code %d)%s", d.name, info.State.Status, info.State.ExitCode, d.logTail())
	}
	ip := ""
	if ns := info.NetworkSettings; ns != nil {
		if nw, ok := ns.Networks[e.network.Name]; ok {
			ip = nw.IPAddress
		}
	}
	if net.ParseIP(ip) == nil {
		return fmt.Errorf("sandbox: container %s has no address on network %s", d.name, e.network.Name)
	}
	d.n.host = ip
	return nil
}

// logTail is the end of the container's own output (what its entrypoint
// printed), after a newline, or "".
func (d *dockerNode) logTail() string {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = d.env.cl.Logs(dc.LogsOptions{Context: ctx, Container: d.id, OutputStream: &out, ErrorStream: &out,
		Stdout: true, Stderr: true, Tail: "15"})
	if s := indentTail(redact(out.String(), d.env.secrets...), 15); s != "" {
		return "\n\tcontainer log:" + s
	}
	return ""
}

// findBin finds the server programs in the image: the highest
// /usr/lib/postgresql/*/bin (Debian and the official images), else
// wherever initdb is on PATH (other distributions).
func (d *dockerNode) findBin(ctx context.Context) (string, error) {
	const script = `for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
	[ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/pg_basebackup" ] && { echo "$d"; exit 0; }
done
p=$(command -v initdb) && dirname "$p"`
	out, err := d.exec(ctx, "root", nil, "sh", "-c", script)
	bin := strings.TrimSpace(out)
	if err != nil || bin == "" {
		return "", fmt.Errorf("sandbox: docker image %s has no PostgreSQL server programs (initdb, pg_ctl, pg_basebackup) in /usr/lib/postgresql/*/bin or on PATH: %v", d.env.image, err)
	}
	if _, err := d.exec(ctx, "root", nil, "id", "postgres"); err != nil {
		return "", fmt.Errorf("sandbox: docker image %s has no postgres user to run the server as", d.env.image)
	}
	d.n.c.logf("PostgreSQL programs in %s of %s", bin, d.env.image)
	return bin, nil
}

// pg runs a server program of the image as the postgres user.
func (d *dockerNode) pg(ctx context.Context, env []string, prog string, args ...string) (string, error) {
	return d.exec(ctx, "postgres", env, d.env.bin+"/"+prog, args...)
}

// writeNodeConf writes the node's own settings and pg_hba.conf.
func (d *dockerNode) writeNodeConf(ctx context.Context) error {
	conf := fmt.Sprintf("# pgreplica sandbox node %d\nport = %d\nlisten_addresses = '*'\nunix_socket_directories = '%s'\ncluster_name = %s\n",
		d.n.Index, d.n.Port, dockerDir+","+dockerSocketDir, quoteLiteral("pgreplica-"+d.n.name()))
	_, err := d.exec(ctx, "postgres", []string{"NODE_CONF=" + conf, "HBA=" + dockerHBA}, "sh", "-c",
		`printf '%s' "$NODE_CONF" > `+dockerDir+`/node.conf && printf '%s' "$HBA" > `+dockerData+`/pg_hba.conf`)
	return err
}

func (d *dockerNode) initPrimary(ctx context.Context) error {
	pw := dockerDir + "/pwfile"
	if _, err := d.exec(ctx, "postgres", []string{"PW=" + d.n.c.superPassword}, "sh", "-c", `printf '%s\n' "$PW" > `+pw); err != nil {
		return fmt.Errorf("sandbox: initdb primary: %w", err)
	}
	_, err := d.pg(ctx, []string{"LC_ALL=C"}, "initdb", "-D", dockerData, "-U", superuser, "--pwfile="+pw,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
	_, _ = d.exec(ctx, "postgres", nil, "rm", "-f", pw)
	if err != nil {
		return fmt.Errorf("sandbox: initdb primary: %w", err)
	}
	if _, err := d.exec(ctx, "postgres", []string{"CONF=" + sharedConf + d.n.c.extraConf + "\n"}, "sh", "-c",
		`printf '%s' "$CONF" >> `+dockerData+`/postgresql.conf`); err != nil {
		return fmt.Errorf("sandbox: configure primary: %w", err)
	}
	if err := d.writeNodeConf(ctx); err != nil {
		return fmt.Errorf("sandbox: configure primary: %w", err)
	}
	if err := d.start(ctx); err != nil {
		return fmt.Errorf("sandbox: start primary: %w", err)
	}
	return nil
}

// createReplica takes a base backup of primary and starts it as a streaming
// standby (see localNode.createReplica).
func (d *dockerNode) createReplica(ctx context.Context, primary *Node) error {
	name := d.n.name()
	d.n.c.logf("pg_basebackup %s from %s", name, primary.Addr())
	_, err := d.pg(ctx, []string{"PGPASSWORD=" + d.n.c.superPassword, "LC_ALL=C"}, "pg_basebackup",
		"-h", primary.host, "-p", strconv.Itoa(primary.Port), "-U", superuser,
		"-d", "application_name="+name,
		"-D", dockerData, "-R", "-X", "stream", "-c", "fast", "-S", name, "--no-sync")
	if err != nil {
		return fmt.Errorf("sandbox: pg_basebackup %s: %w", name, err)
	}
	if err := d.writeNodeConf(ctx); err != nil {
		return fmt.Errorf("sandbox: configure %s: %w", name, err)
	}
	d.n.c.logf("start %s on %s", name, d.n.Addr())
	if err := d.start(ctx); err != nil {
		return fmt.Errorf("sandbox: start %s: %w", name, err)
	}
	return nil
}

func (d *dockerNode) pgctl(ctx context.Context, args ...string) error {
	_, err := d.pg(ctx, []string{"LC_ALL=C"}, "pg_ctl", append([]string{"-D", dockerData}, args...)...)
	return err
}

func (d *dockerNode) start(ctx context.Context) error {
	if err := d.pgctl(ctx, "-l", dockerLog, "-w", "-t", "60", "start"); err != nil {
		if tail, _ := d.exec(ctx, "postgres", nil, "tail", "-n", "15", dockerLog); strings.TrimSpace(tail) != "" {
			err = fmt.Errorf("%w\n\tserver log %s:%s", err, dockerLog, indentTail(tail, 15))
		}
		return err
	}
	return nil
}

func (d *dockerNode) stop(ctx context.Context) error {
	return d.pgctl(ctx, "-m", "immediate", "-w", "-t", "30", "stop")
}

func (d *dockerNode) stopClean(ctx context.Context) error {
	return d.pgctl(ctx, "-m", "fast", "-w", "-t", "60", "stop")
}

func (d *dockerNode) promote(ctx context.Context) error {
	return d.pgctl(ctx, "-w", "-t", "60", "promote")
}

// rejoin makes the data directory a standby of primary and starts it (see
// localNode.rejoin).
func (d *dockerNode) rejoin(ctx context.Context, primary *Node) error {
	conninfo := fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s",
		primary.host, primary.Port, superuser, d.n.c.superPassword, d.n.name())
	if _, err := d.exec(ctx, "postgres", []string{"LINE=primary_conninfo = " + quoteLiteral(conninfo)}, "sh", "-c",
		`: > `+dockerData+`/standby.signal && printf '%s\n' "$LINE" >> `+dockerData+`/postgresql.auto.conf`); err != nil {
		return err
	}
	return d.start(ctx)
}

// freeze pauses the container, asking again when the runtime gave up
// ("unable to freeze": the cgroup did not settle, as with a server forking
// a backend per read, seen in TestFrozenReplicaNewConnections); a failed
// pause leaves the container running.
func (d *dockerNode) freeze() error {
	var err error
	for range 10 {
		if err = d.env.cl.PauseContainer(d.id); err == nil || !strings.Contains(err.Error(), "unable to freeze") {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

func (d *dockerNode) thaw() error { return d.env.cl.UnpauseContainer(d.id) }

// running asks pg_ctl status in the container; a paused container's server
// counts as running (it cannot be asked, and Freeze needs it running).
func (d *dockerNode) running() bool {
	if d.id == "" {
		return false
	}
	info, err := d.env.cl.InspectContainer(d.id)
	if err != nil || !info.State.Running {
		return false
	}
	if info.State.Paused {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return d.pgctl(ctx, "status") == nil
}

// nsPID is the container's init process, whose network namespace is the
// container's.
func (d *dockerNode) nsPID(ctx context.Context) (int, error) {
	info, err := d.env.cl.InspectContainerWithContext(d.id, ctx)
	if err != nil {
		return 0, err
	}
	if info.State.Pid == 0 {
		return 0, fmt.Errorf("container %s is not running", d.name)
	}
	return info.State.Pid, nil
}

// dockerDropRules drop every packet in or out of the container but its own
// loopback. Inside the container a DROP on output makes the server's own
// sends fail (EPERM); clients outside only see silence.
func dockerDropRules(tag string) [][]string {
	return [][]string{
		{"INPUT", "!", "-i", "lo", "-m", "comment", "--comment", tag, "-j", "DROP"},
		{"OUTPUT", "!", "-o", "lo", "-m", "comment", "--comment", tag, "-j", "DROP"},
	}
}

// partition uses iptables in the container's network namespace rather than
// docker network disconnect: a disconnected container's address answers
// "no route to host" after ARP fails (measured: 3–4 s), and reconnecting
// may give it another address. The rules die with the container, so a
// crashed run leaves none on this machine.
func (d *dockerNode) partition(ctx context.Context) error {
	pid, err := d.nsPID(ctx)
	if err != nil {
		return err
	}
	return applyRules(ctx, pid, "-I", dockerDropRules(ruleTag(d.n.c.id)))
}

func (d *dockerNode) heal(ctx context.Context) error {
	pid, err := d.nsPID(ctx)
	if err != nil {
		return err
	}
	return healRules(ctx, pid, dockerDropRules(ruleTag(d.n.c.id)))
}

// destroy removes the container, its tmpfs and any anonymous volume of
// the image.
func (d *dockerNode) destroy() error {
	if d.n.SocketDir != "" {
		_ = os.RemoveAll(d.n.SocketDir)
	}
	if d.id == "" {
		return nil
	}
	err := d.env.cl.RemoveContainer(dc.RemoveContainerOptions{ID: d.id, Force: true, RemoveVolumes: true})
	var nsc *dc.NoSuchContainer
	if errors.As(err, &nsc) {
		return nil
	}
	return err
}

// exec runs cmd in the container as user and fails on a non-zero exit, with
// the output's tail (secrets redacted).
func (d *dockerNode) exec(ctx context.Context, user string, env []string, cmd string, args ...string) (string, error) {
	ex, err := d.env.cl.CreateExec(dc.CreateExecOptions{
		Container: d.id, Cmd: append([]string{cmd}, args...), User: user, Env: env,
		AttachStdout: true, AttachStderr: true, Context: ctx,
	})
	if err != nil {
		return "", fmt.Errorf("docker exec %s in %s: %w", cmd, d.name, err)
	}
	var out bytes.Buffer
	if err := d.env.cl.StartExec(ex.ID, dc.StartExecOptions{
		OutputStream: &out, ErrorStream: &out, Context: ctx,
	}); err != nil {
		return "", fmt.Errorf("docker exec %s in %s: %w", cmd, d.name, err)
	}
	insp, err := d.env.cl.InspectExec(ex.ID)
	if err != nil {
		return "", fmt.Errorf("docker exec %s in %s: %w", cmd, d.name, err)
	}
	text := redact(out.String(), d.env.secrets...)
	if insp.ExitCode != 0 {
		return text, fmt.Errorf("%s: exit code %d%s", cmd, insp.ExitCode, indentTail(text, 15))
	}
	return text, nil
}
