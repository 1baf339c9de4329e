package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// flagSet is a subcommand's flags with its usage text. Flags may come
// before or after the positional arguments.
type flagSet struct {
	*flag.FlagSet
	synopsis, about string
}

func newFlagSet(name, synopsis, about string) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet("pgreplica "+name, flag.ContinueOnError), synopsis: synopsis, about: about}
	fs.SetOutput(io.Discard)
	return fs
}

func (fs *flagSet) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace(fs.Name()+" "+fs.synopsis), strings.TrimSpace(fs.about))
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "\nFlags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

// parse parses args and returns the positional arguments. When it returns
// ok false, the caller returns code: 0 after --help, 2 after a bad flag.
func (fs *flagSet) parse(args []string, stdout, stderr io.Writer) (positional []string, code int, ok bool) {
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fs.printUsage(stdout)
			return nil, 0, false
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n\n", fs.Name(), err)
			fs.printUsage(stderr)
			return nil, 2, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, 0, true
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), 0, true
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// usageError reports wrong positional arguments.
func (fs *flagSet) usageError(stderr io.Writer, format string, a ...any) int {
	fmt.Fprintf(stderr, "%s: %s\n\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.printUsage(stderr)
	return 2
}
