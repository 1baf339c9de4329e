package faults

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// TestStandbyListedAsPrimary lists replica1 first: the DSN's guess of the
// primary is wrong, as it is after a failover nobody told the application
// about. Writes wait for the connector's first probe round (primary_wait),
// so none reaches the standby listed first: no 25006, every write
// acknowledged on the real primary exactly once.
func TestStandbyListedAsPrimary(t *testing.T) {
	ctx := context.Background()
	cl := testcluster.Cluster()
	u, err := url.Parse(cl.NodeDSN(1))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = strings.Join([]string{cl.Nodes[1].Addr(), cl.Nodes[0].Addr(), cl.Nodes[2].Addr()}, ",")
	u.RawQuery += "&monitor_interval=10s" // the first round, not a tick, must decide
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "CREATE TABLE IF NOT EXISTS wrong_primary (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	testcluster.NoLeaks(t)

	// Before primary_wait the connector's first probe raced the first
	// write and lost some of the time; now the write waits for it.
	refused, acked := 0, 0
	for attempt := range 10 {
		r, a := writeThroughWrongPrimary(t, ctx, u.String(), attempt*1000)
		refused, acked = refused+r, acked+a
	}
	if refused != 0 {
		t.Fatalf("%d writes reached the standby listed first (25006): writes must wait for the first probe round", refused)
	}
	t.Log(fmt.Sprintf("%d writes acknowledged on the real primary, none refused by the standby listed first", acked))
}

// writeThroughWrongPrimary opens a connector on dsn and writes until 20
// writes were acknowledged, ids from base. It checks that exactly the
// acknowledged ones are on the real primary and that the connector then
// names it the primary.
func writeThroughWrongPrimary(t *testing.T, ctx context.Context, dsn string, base int) (refused, acked int) {
	t.Helper()
	cl := testcluster.Cluster()
	db, err := sql.Open("pgreplica", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(10 * time.Second)
	for i := base; acked < 20; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("writes did not reach the real primary: %d acknowledged, %d refused", acked, refused)
		}
		_, err := db.ExecContext(ctx, "INSERT INTO wrong_primary (id) VALUES ($1)", i)
		var pe *pgconn.PgError
		switch {
		case err == nil:
			acked++
		case errors.As(err, &pe) && pe.Code == "25006":
			refused++ // reached the standby: reported, not re-run
			time.Sleep(10 * time.Millisecond)
		default:
			t.Fatal(err)
		}
	}
	var rows int
	q := "SELECT count(*) FROM wrong_primary WHERE id >= $1 AND id < $2"
	if err := testcluster.Direct(t, 0).QueryRowContext(ctx, q, base, base+1000).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != acked {
		t.Fatalf("%d rows on the primary for %d acknowledged writes: a refused write was re-run", rows, acked)
	}
	if got := connector(t, db).Status().Primary; got != cl.Nodes[0].Addr() {
		t.Fatalf("status says the primary is %s, want %s", got, cl.Nodes[0].Addr())
	}
	return refused, acked
}
