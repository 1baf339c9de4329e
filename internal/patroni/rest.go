package patroni

// Reading and changing the cluster through Patroni's REST API and
// patronictl.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// MemberState is one member as GET /cluster reports it.
type MemberState struct {
	Name     string
	Role     string // "leader", "replica", "sync_standby", …
	State    string // "running", "streaming", "stopped", "starting", …
	Host     string
	Port     int
	Timeline int64 // 0 when not reported
	Lag      int64 // bytes behind the leader; -1 when unknown or not reported
}

// restClient has a short timeout: a member whose Patroni was killed must
// not hold up a poll loop.
var restClient = &http.Client{Timeout: 2 * time.Second}

func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := restClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// State is GET /cluster, asked of the first member whose Patroni answers.
func (c *Cluster) State(ctx context.Context) ([]MemberState, error) {
	var errs []error
	for _, m := range c.Members {
		body, err := httpGet(ctx, m.APIURL()+"/cluster")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var doc struct {
			Members []struct {
				Name     string          `json:"name"`
				Role     string          `json:"role"`
				State    string          `json:"state"`
				Host     string          `json:"host"`
				Port     int             `json:"port"`
				Timeline int64           `json:"timeline"`
				Lag      json.RawMessage `json:"lag"`
			} `json:"members"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			errs = append(errs, fmt.Errorf("%s /cluster: %w", m.Name, err))
			continue
		}
		out := make([]MemberState, len(doc.Members))
		for i, d := range doc.Members {
			var lag int64 = -1
			if len(d.Lag) > 0 {
				if err := json.Unmarshal(d.Lag, &lag); err != nil {
					lag = -1 // "unknown"
				}
			}
			out[i] = MemberState{Name: d.Name, Role: d.Role, State: d.State, Host: d.Host, Port: d.Port, Timeline: d.Timeline, Lag: lag}
		}
		return out, nil
	}
	return nil, fmt.Errorf("patroni: no member's REST API answered: %w", errors.Join(errs...))
}

// Leader is the member /cluster reports as the running leader.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	st, err := c.State(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range st {
		if s.Role == "leader" && s.State == "running" {
			if m := c.Member(s.Name); m != nil {
				return m, nil
			}
		}
	}
	return nil, fmt.Errorf("patroni: no running leader in %+v", st)
}

// waitLeader waits for a running leader other than not (nil: any).
func (c *Cluster) waitLeader(ctx context.Context, not *Member) (*Member, error) {
	var leader *Member
	err := poll(ctx, 2*time.Minute, "a leader", func() (bool, error) {
		m, err := c.Leader(ctx)
		if err == nil && m != not {
			leader = m
			return true, nil
		}
		return false, nil
	})
	return leader, err
}

// WaitHealthy waits until there is a running leader, every member runs as
// a replica on the leader's timeline with a known lag, and, when
// synchronous mode is on, one of them is the synchronous standby and the
// leader's pg_stat_replication says so.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	var last []MemberState
	err := poll(ctx, 3*time.Minute, "every member healthy", func() (bool, error) {
		st, err := c.State(ctx)
		if err != nil {
			return false, nil
		}
		last = st
		if len(st) != len(c.Members) {
			return false, nil
		}
		var leader *MemberState
		for i := range st {
			if st[i].Role == "leader" && st[i].State == "running" {
				leader = &st[i]
			}
		}
		if leader == nil {
			return false, nil
		}
		sync := false
		for _, s := range st {
			if s.Name == leader.Name {
				continue
			}
			if (s.State != "running" && s.State != "streaming") || s.Timeline != leader.Timeline || s.Lag < 0 {
				return false, nil
			}
			sync = sync || s.Role == "sync_standby"
		}
		on, err := c.syncModeOn(ctx)
		if err != nil || on != sync {
			return false, nil
		}
		if on {
			ok, err := c.leaderHasSyncStandby(ctx, c.Member(leader.Name))
			return ok && err == nil, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last /cluster: %+v)", err, last)
	}
	return nil
}

// syncModeOn reads synchronous_mode from GET /config.
func (c *Cluster) syncModeOn(ctx context.Context) (bool, error) {
	var errs []error
	for _, m := range c.Members {
		body, err := httpGet(ctx, m.APIURL()+"/config")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var cfg struct {
			SynchronousMode bool `json:"synchronous_mode"`
		}
		if err := json.Unmarshal(body, &cfg); err != nil {
			return false, err
		}
		return cfg.SynchronousMode, nil
	}
	return false, errors.Join(errs...)
}

func (c *Cluster) leaderHasSyncStandby(ctx context.Context, leader *Member) (bool, error) {
	conn, err := pgx.Connect(ctx, c.dsn(superuser, c.superPassword, "postgres", leader))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").Scan(&n)
	return n > 0, err
}

// SetSynchronousMode turns Patroni's synchronous_mode on or off (PATCH
// /config) and waits until the cluster runs that way (WaitHealthy).
func (c *Cluster) SetSynchronousMode(ctx context.Context, on bool) error {
	body := fmt.Sprintf(`{"synchronous_mode": %t}`, on)
	var errs []error
	for _, m := range c.Members {
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, m.APIURL()+"/config", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := restClient.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("patroni: PATCH /config on %s: %s: %s", m.Name, resp.Status, bytes.TrimSpace(msg))
		}
		c.logf("synchronous_mode %t", on)
		return c.WaitHealthy(ctx)
	}
	return fmt.Errorf("patroni: PATCH /config: %w", errors.Join(errs...))
}

// Switchover runs patronictl switchover from the current leader to
// candidate and returns once patronictl reports it done.
func (c *Cluster) Switchover(ctx context.Context, leader, candidate *Member) error {
	out, err := c.patronictl(ctx, "switchover", "--leader", leader.Name, "--candidate", candidate.Name, "--force")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "Successfully switched over") {
		return fmt.Errorf("patroni: patronictl switchover did not report success:\n%s", out)
	}
	c.logf("switchover %s -> %s", leader.Name, candidate.Name)
	return nil
}

// patronictl runs patronictl with member0's configuration (it only reads
// the scope and the etcd address from it).
func (c *Cluster) patronictl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "patronictl", append([]string{"-c", filepath.Join(c.Members[0].Dir, "patroni.yml")}, args...)...)
	cmd.Env = cleanEnv()
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("patroni: patronictl %s: %w:\n%s", args[0], err, out)
	}
	return string(out), nil
}

// poll calls f until it reports done, returns an error, ctx ends or limit
// passes (a liveness bound: what is waited for normally takes seconds).
func poll(ctx context.Context, limit time.Duration, what string, f func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		done, err := f()
		if err != nil {
			return fmt.Errorf("patroni: waiting for %s: %w", what, err)
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("patroni: no %s after %s", what, limit)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("patroni: waiting for %s: %w", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
