package proc

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestPostmasterPID(t *testing.T) {
	for _, c := range []struct {
		file string
		pid  int
		ok   bool
	}{
		{"1234\n/data\n", 1234, true},
		{" 77 \n", 77, true},
		{"0\n", 0, false},
		{"x\n", 0, false},
		{"", 0, false},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(c.file), 0o600); err != nil {
			t.Fatal(err)
		}
		if pid, ok := PostmasterPID(dir); pid != c.pid || ok != c.ok {
			t.Errorf("postmaster.pid %q: %d %v, want %d %v", c.file, pid, ok, c.pid, c.ok)
		}
	}
	if _, ok := PostmasterPID(t.TempDir()); ok {
		t.Error("no postmaster.pid: ok")
	}
}

func TestSelfAndExited(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if f, err := Stat(os.Getpid()); err != nil || len(f) < 20 {
		t.Errorf("Stat: %d fields, %v", len(f), err)
	}
	if wd, _ := os.Getwd(); Cwd(os.Getpid()) != wd {
		t.Errorf("Cwd %q, want %q", Cwd(os.Getpid()), wd)
	}
	// An exited child not yet waited for is a zombie: not alive.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	pid := cmd.Process.Pid
	for State(pid) != "Z" && State(pid) != "" {
		time.Sleep(time.Millisecond)
	}
	if Alive(pid) {
		t.Errorf("zombie %d (state %q) alive", pid, State(pid))
	}
	cmd.Wait()
	if Alive(pid) || State(pid) != "" {
		t.Errorf("reaped %d alive", pid)
	}
}
