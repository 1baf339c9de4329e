package patroni

// Processes, files and ports of this machine.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgreplica/pgreplica/internal/proc"
)

// findBinDir is the highest /usr/lib/postgresql/*/bin holding the server
// programs Patroni runs.
func findBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		x, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		y, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return y - x
	})
	for _, d := range dirs {
		ok := true
		for _, p := range []string{"initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_rewind"} {
			if _, err := os.Stat(filepath.Join(d, p)); err != nil {
				ok = false
			}
		}
		if ok {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w: no /usr/lib/postgresql/*/bin with initdb, pg_ctl, postgres, pg_basebackup and pg_rewind", ErrUnavailable)
}

// spawn starts prog in a process group of its own (so that what it runs,
// initdb or pg_basebackup, is killed with it), as the postgres OS user when
// root, its output appended to logPath. done is closed when it exits.
func (c *Cluster) spawn(logPath, prog string, args ...string) (*exec.Cmd, chan struct{}, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(prog, args...)
	cmd.Dir = filepath.Dir(logPath)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.cred}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		// Whatever it started in its group goes with it.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		close(done)
	}()
	return cmd, done, nil
}

// cleanEnv is the environment without libpq variables (PGHOST, …) and
// with a locale PostgreSQL and Patroni's Python accept.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "PATRONI") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C.UTF-8", "LANG=C.UTF-8")
}

func (c *Cluster) own(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

func (c *Cluster) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return c.own(path)
}

// tail is the last lines of a log file, after a newline, with the
// cluster's passwords redacted.
func (c *Cluster) tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	s := "\n\t" + strings.Join(lines, "\n\t")
	for _, sec := range []string{c.superPassword, c.replPass, c.password} {
		s = strings.ReplaceAll(s, sec, "***")
	}
	return s
}

// reservePorts returns n distinct free TCP ports on 127.0.0.1.
func reservePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("patroni: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// killPostmaster ends the postmaster of data, if one runs there: SIGQUIT
// (immediate shutdown, which ends its backends), SIGKILL after 10 s. A pid
// is only signalled while its working directory is data: pids are reused.
func killPostmaster(data string) error {
	pid, ok := proc.PostmasterPID(data)
	if !ok || !proc.Alive(pid) || !sameDir(proc.Cwd(pid), data) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGQUIT)
	for i := 0; proc.Alive(pid); i++ {
		if i == 1000 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if i == 1500 {
			return fmt.Errorf("postmaster %d survives SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func sameDir(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// writeOwner records this process in <base>/owner, for reapStale.
func writeOwner(base string) error {
	f, _ := proc.Stat(os.Getpid())
	if len(f) < 20 {
		return errors.New("cannot read this process's start time")
	}
	return os.WriteFile(filepath.Join(base, "owner"), fmt.Appendf(nil, "%d %s\n", os.Getpid(), f[19]), 0o644)
}

// reapStale kills what a test binary that died without Close (a go test
// timeout, SIGKILL) left running, and removes its directory: every
// process whose command line names the leftover directory (etcd, Patroni,
// the postmasters, started with -D under it) or its scope (every backend's
// title carries cluster_name, which Patroni sets to the scope).
func reapStale(logf func(string, ...any)) {
	bases, _ := filepath.Glob(filepath.Join(os.TempDir(), baseDirPrefix+"*"))
	for _, base := range bases {
		b, err := os.ReadFile(filepath.Join(base, "owner"))
		if err != nil {
			continue
		}
		var pid int
		var start string
		if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
			continue
		}
		if f, _ := proc.Stat(pid); len(f) >= 20 && f[19] == start {
			continue // its owner is alive
		}
		logf("remove stale Patroni cluster %s (owner pid %d is gone)", base, pid)
		scope := "pgr-" + strings.TrimPrefix(filepath.Base(base), baseDirPrefix)
		killMentioning(base, scope+":")
		os.RemoveAll(base)
	}
}

// killMentioning SIGKILLs every process whose command line contains one of
// words.
func killMentioning(words ...string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, w := range words {
			if strings.Contains(string(cmdline), w) {
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
}
