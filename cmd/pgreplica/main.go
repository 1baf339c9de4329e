// Command pgreplica inspects a pgreplica cluster and shows the driver at
// work on a throwaway one:
//
//	pgreplica status DSN        the cluster as pgreplica sees it (table or --json, --watch)
//	pgreplica sandbox           a local primary + streaming replicas until Ctrl-C
//	pgreplica demo              a workload through the driver while a replica lags and stops
//
// Every subcommand takes --help. Install from a clone of the repository
// with
//
//	go install ./cmd/pgreplica
//
// or, once the module is published, from anywhere with
//
//	go install github.com/pgreplica/pgreplica/cmd/pgreplica@latest
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"status", "print the cluster's status as pgreplica sees it", runStatus},
	{"sandbox", "run a throwaway local primary and replicas until Ctrl-C", runSandbox},
	{"demo", "show reads, writes, a lagging and a stopped replica on a sandbox", runDemo},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and returns the exit status: 0 success,
// 1 failure, 2 usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "pgreplica: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: pgreplica <command> [flags] [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "pgreplica <command> --help" for a command's flags.`)
}
