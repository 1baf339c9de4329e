package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pgreplica/pgreplica/internal/sandbox"
)

const sandboxAbout = `
Starts a throwaway PostgreSQL cluster: one primary and --replicas streaming
replicas, on 127.0.0.1 from this machine's PostgreSQL server binaries
(apt-get install postgresql), else in Docker containers (image postgres:17,
or PGREPLICA_DOCKER_IMAGE; PGREPLICA_SANDBOX=docker or local forces one). Prints the
pgreplica DSN and each node's own DSN, then runs until interrupted (Ctrl-C or
SIGTERM), when it stops every node and removes its files.`

func runSandbox(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("sandbox", "[--replicas N] [--verbose]", sandboxAbout)
	replicas := fs.Int("replicas", 2, "number of streaming replicas (0 for a primary alone)")
	verbose := fs.Bool("verbose", false, "log each setup step to stderr")
	pos, code, ok := fs.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return fs.usageError(stderr, "unexpected argument %q", pos[0])
	}
	if *replicas < 0 || *replicas > 20 {
		return fs.usageError(stderr, "--replicas must be between 0 and 20")
	}
	opts := sandbox.Options{Replicas: *replicas}
	if *replicas == 0 {
		opts.Replicas = -1 // sandbox.Options: negative means none
	}
	if *verbose {
		opts.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, "sandbox: "+format+"\n", a...) }
	}
	fmt.Fprintf(stdout, "Starting a primary and %d streaming replica(s) …\n", *replicas)
	started := time.Now()
	cl, err := startSandbox(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "pgreplica sandbox:", err)
		return 1
	}
	defer func() {
		fmt.Fprintln(stdout, "Stopping the sandbox and removing its files …")
		if err := cl.Close(); err != nil {
			fmt.Fprintln(stderr, "pgreplica sandbox:", err)
		}
		fmt.Fprintln(stdout, "Done.")
	}()
	fmt.Fprintf(stdout, "Ready in %.1fs.\n\n", time.Since(started).Seconds())
	fmt.Fprintln(stdout, "pgreplica DSN (primary first):")
	fmt.Fprintf(stdout, "  export PGREPLICA_DSN=%s\n\n", shellQuote(cl.DSN()))
	fmt.Fprintln(stdout, "Nodes:")
	for i, n := range cl.Nodes {
		fmt.Fprintf(stdout, "  %-9s %s  %s\n", nodeName(i), n.Addr(), cl.NodeDSN(i))
	}
	fmt.Fprintln(stdout, "\nTry: pgreplica status (it reads $PGREPLICA_DSN)")
	fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	<-ctx.Done()
	return 0
}

// startSandbox starts a sandbox, explaining what to install when there is
// no way to run PostgreSQL here.
func startSandbox(ctx context.Context, opts sandbox.Options) (*sandbox.Cluster, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cl, err := sandbox.Start(ctx, opts)
	if errors.Is(err, sandbox.ErrUnavailable) {
		return nil, fmt.Errorf("%w\ninstall PostgreSQL's server (e.g. apt-get install postgresql) or start Docker", err)
	}
	return cl, err
}

func nodeName(i int) string {
	if i == 0 {
		return "primary"
	}
	return fmt.Sprintf("replica%d", i)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
