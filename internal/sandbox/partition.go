package sandbox

// Network partitions: a node cut off the network drops packets silently,
// as a pulled cable or a dead switch does, so clients see neither a refused
// connection nor a reset, only silence: connects and established
// connections hang until their own timeouts.
//
// Local backend: iptables rules on this machine's INPUT chain dropping
// loopback TCP traffic to the node's port (--dport) and from it (--sport).
// Packets are dropped on input, not output: a DROP in OUTPUT makes the
// sender's own system call fail with EPERM, which a client would see as an
// error at once. Each rule carries the comment pgreplica-sandbox-<id>, the
// name of the cluster's base directory, so reapStale can remove the rules
// of a crashed run with its directory. Running iptables needs root (or
// CAP_NET_ADMIN); .ci/run installs the iptables package when missing.
//
// Docker backend: see dockerNode.partition.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// Partition cuts the node off the network: every packet to and from its
// server is dropped, so new connections and established ones hang (no
// refusal, no reset) until Heal. The server itself keeps running. On the
// local backend only the node's client port is cut (its own replication
// connection to the primary goes on); a Docker node loses its whole network.
// Partition on a partitioned node does nothing.
func (n *Node) Partition(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.partitioned {
		return nil
	}
	n.c.logf("partition %s on %s", n.name(), n.Addr())
	if err := n.impl.partition(ctx); err != nil {
		// Some rules may be in place already: remove them.
		_ = n.impl.heal(context.WithoutCancel(ctx))
		return fmt.Errorf("sandbox: partition %s: %w", n.name(), err)
	}
	n.partitioned = true
	return nil
}

// Heal reconnects a partitioned node; connections that were cut may have
// timed out meanwhile, new ones work at once. It does nothing on a node
// that is not partitioned.
func (n *Node) Heal(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.partitioned {
		return nil
	}
	n.c.logf("heal %s on %s", n.name(), n.Addr())
	if err := n.impl.heal(ctx); err != nil {
		return fmt.Errorf("sandbox: heal %s: %w", n.name(), err)
	}
	n.partitioned = false
	return nil
}

func (n *Node) isPartitioned() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.partitioned
}

// ruleTag is the iptables comment on every rule of the cluster with id.
func ruleTag(id string) string { return baseDirPrefix + id }

// iptablesMu serialises this process's iptables calls: each one rewrites
// the whole table, and -w only waits for other processes' locks.
var iptablesMu sync.Mutex

// iptables runs the iptables program of this machine (-w: wait for the
// xtables lock, other sandboxes may change rules at the same time). nsPID,
// when not 0, runs it in the network namespace of that process (nsenter).
func iptables(ctx context.Context, nsPID int, args ...string) (string, error) {
	path, err := exec.LookPath("iptables")
	if err != nil {
		return "", errors.New("no iptables program: install it (apt-get install iptables) to partition nodes")
	}
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	argv := append([]string{path, "-w", "10"}, args...)
	if nsPID != 0 {
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			return "", errors.New("no nsenter program: install util-linux to partition Docker nodes")
		}
		argv = append([]string{nsenter, "-t", strconv.Itoa(nsPID), "-n", "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// localDropRules are the rule specifications (after the chain name) that
// partition a local node listening on port.
func localDropRules(port int, tag string) [][]string {
	p := strconv.Itoa(port)
	var rules [][]string
	for _, dir := range []string{"--dport", "--sport"} {
		rules = append(rules, []string{"-i", "lo", "-p", "tcp", dir, p,
			"-m", "comment", "--comment", tag, "-j", "DROP"})
	}
	return rules
}

func (l *localNode) partition(ctx context.Context) error {
	for _, r := range localDropRules(l.n.Port, ruleTag(l.n.c.id)) {
		if _, err := iptables(ctx, 0, append([]string{"-I", "INPUT"}, r...)...); err != nil {
			return err
		}
	}
	return nil
}

// heal deletes this node's rules, each as many times as it exists, and
// tolerates rules that are gone already.
func (l *localNode) heal(ctx context.Context) error {
	var errs []error
	for _, r := range localDropRules(l.n.Port, ruleTag(l.n.c.id)) {
		for {
			if _, err := iptables(ctx, 0, append([]string{"-C", "INPUT"}, r...)...); err != nil {
				break // no such rule (left)
			}
			if _, err := iptables(ctx, 0, append([]string{"-D", "INPUT"}, r...)...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// removeTaggedRules deletes every INPUT rule of this machine whose comment
// is tag: the partitions a crashed run left behind. Errors are ignored (no
// iptables, not root: then there are no rules either).
func removeTaggedRules(tag string) {
	ctx := context.Background()
	if _, err := exec.LookPath("iptables"); err != nil {
		return
	}
	out, err := iptables(ctx, 0, "-S", "INPUT")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		// iptables -S prints the comment unquoted when it has no spaces.
		if !strings.HasPrefix(line, "-A INPUT ") || !strings.Contains(line, "--comment "+tag+" ") {
			continue
		}
		spec := strings.Fields(strings.TrimPrefix(line, "-A INPUT "))
		_, _ = iptables(ctx, 0, append([]string{"-D", "INPUT"}, spec...)...)
	}
}
