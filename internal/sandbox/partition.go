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
	return runIptables(ctx, nsPID, "iptables", "", args...)
}

// applyRules adds (op "-I") or deletes (op "-D") rules, each "CHAIN spec…",
// in the filter table in one iptables-restore transaction: a partition
// starts in both directions at the same instant, never half-way.
func applyRules(ctx context.Context, nsPID int, op string, rules [][]string) error {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, r := range rules {
		b.WriteString(op)
		for _, f := range r {
			b.WriteString(" ")
			if strings.ContainsAny(f, " \"") {
				f = strconv.Quote(f)
			}
			b.WriteString(f)
		}
		b.WriteString("\n")
	}
	b.WriteString("COMMIT\n")
	_, err := runIptables(ctx, nsPID, "iptables-restore", b.String(), "--noflush")
	return err
}

func runIptables(ctx context.Context, nsPID int, prog, stdin string, args ...string) (string, error) {
	path, err := exec.LookPath(prog)
	if err != nil {
		return "", fmt.Errorf("no %s program: install iptables (apt-get install iptables) to partition nodes", prog)
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
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// healRules deletes rules (each "CHAIN spec…"), as many times as each exists;
// rules that are gone already are fine.
func healRules(ctx context.Context, nsPID int, rules [][]string) error {
	var errs []error
	for _, r := range rules {
		for {
			if _, err := iptables(ctx, nsPID, append([]string{"-C"}, r...)...); err != nil {
				break // no such rule (left)
			}
			if _, err := iptables(ctx, nsPID, append([]string{"-D"}, r...)...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// localDropRules are the rules that partition a local node listening on
// port.
func localDropRules(port int, tag string) [][]string {
	p := strconv.Itoa(port)
	var rules [][]string
	for _, dir := range []string{"--dport", "--sport"} {
		rules = append(rules, []string{"INPUT", "-i", "lo", "-p", "tcp", dir, p,
			"-m", "comment", "--comment", tag, "-j", "DROP"})
	}
	return rules
}

func (l *localNode) partition(ctx context.Context) error {
	return applyRules(ctx, 0, "-I", localDropRules(l.n.Port, ruleTag(l.n.c.id)))
}

func (l *localNode) heal(ctx context.Context) error {
	return healRules(ctx, 0, localDropRules(l.n.Port, ruleTag(l.n.c.id)))
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
