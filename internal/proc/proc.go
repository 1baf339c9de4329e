// Package proc reads what the test harnesses (internal/sandbox,
// internal/patroni) need to know of this machine's processes from /proc:
// a data directory's postmaster, whether a pid is alive, its state.
package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// PostmasterPID reads the first line of data/postmaster.pid.
func PostmasterPID(data string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return pid, err == nil && pid > 0
}

// Alive says whether pid runs: it exists (EPERM: someone else's) and is
// not a zombie.
func Alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return (err == nil || errors.Is(err, syscall.EPERM)) && State(pid) != "Z"
}

// Stat returns the fields of /proc/pid/stat after the command name: [0] is
// the state, [1] the parent pid, [19] the start time.
func Stat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may contain ") "
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// State is pid's state letter (R, S, T, Z, …; "" if unknown).
func State(pid int) string {
	f, err := Stat(pid)
	if err != nil || len(f) < 1 {
		return ""
	}
	return f[0]
}

// Cwd is the working directory of pid ("" if unknown); a postmaster's is
// its data directory.
func Cwd(pid int) string {
	d, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	return d
}
