package monitor

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestFrozenReplicaLoggedInTwoSteps: a frozen replica is logged as what
// happens to it. The first probe timeout only stops new reads ("probe timed
// out, no new reads"); the second in a row aborts its connections ("node
// frozen, connections aborted"). Calling the first one "frozen" told an
// operator that reads were cut when none were.
func TestFrozenReplicaLoggedInTwoSteps(t *testing.T) {
	cl := testcluster.Cluster()
	victim := cl.Nodes[2]
	var logs testcluster.SyncBuffer
	db := testcluster.OpenConfig(t, func(cfg *pgreplica.Config) {
		cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	}, "monitor_interval=200ms")
	c, err := pgreplica.ConnectorOf(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Thaw() })
	testcluster.WaitUntil(t, time.Minute, "the replica healthy", func() bool { return state(c, victim.Addr()) == pgreplica.StateHealthy })
	if err := victim.Freeze(); err != nil {
		t.Fatal(err)
	}
	about := func() []string { // the victim's warnings, in order
		var msgs []string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `"node":"`+victim.Addr()+`"`) && strings.Contains(l, `"level":"WARN"`) {
				msgs = append(msgs, l)
			}
		}
		return msgs
	}
	testcluster.WaitUntil(t, time.Minute, "a warning about the frozen replica", func() bool { return len(about()) >= 1 })
	if first := about()[0]; !strings.Contains(first, `"msg":"pgreplica: probe timed out, no new reads"`) {
		t.Fatalf("first warning after one probe timeout: %s\nwant msg \"pgreplica: probe timed out, no new reads\"", first)
	}
	// A liveness bound: the second timeout needs a new connection, bounded
	// by the connect timeout, on a machine of any load.
	testcluster.WaitUntil(t, time.Minute, "a second warning about the frozen replica", func() bool { return len(about()) >= 2 })
	got := about()
	if !strings.Contains(got[1], `"msg":"pgreplica: node frozen, connections aborted"`) {
		t.Fatalf("second warning: %s\nwant msg \"pgreplica: node frozen, connections aborted\"", got[1])
	}
	for _, l := range got {
		if !strings.Contains(l, `"cause":"timeout"`) {
			t.Fatalf("warning without cause timeout: %s", l)
		}
	}
	if err := victim.Thaw(); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitUntil(t, time.Minute, "the replica healthy again", func() bool { return state(c, victim.Addr()) == pgreplica.StateHealthy })
	t.Logf("%s\n%s", got[0], got[1])
}
