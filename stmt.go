package pgreplica

import (
	"cmp"
	"context"
	"database/sql/driver"
	"errors"

	"github.com/jackc/pgx/v5/stdlib"
)

// Compile-time checks of the interfaces database/sql looks for.
var (
	_ driver.Stmt             = (*stmt)(nil)
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

// stmt is a prepared statement that routes like the plain call would:
// Exec to the primary, Query by the classifier, on whichever node that is
// when it runs.
type stmt struct {
	c     *conn
	query string
}

// Close is cheap, as database/sql may call it while holding its lock.
func (s *stmt) Close() error { return nil }

// NumInput is -1: pgx checks the argument count itself.
func (s *stmt) NumInput() int { return -1 }

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, args)
}

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.query, named(args))
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.query, named(args))
}

// describe parses and describes query as an unnamed statement on the node
// its plain read would run on, so that a *sql.Stmt, which database/sql
// prepares again on each connection it runs on, works wherever the plain
// call does: on the open transaction's node; on a replica for a text the
// classifier routes to one (while the primary is down too), any replica
// that is up, since describing reads only the schema; else on the primary. A replica that does not know
// an object yet, or refuses the text during recovery, hands it to the
// primary, whose schema is the newest; when the primary cannot be reached
// then, the replica's error stands. Any other text goes to a replica when
// the primary cannot be reached: describing runs nothing, and invalid SQL
// fails at Prepare while the primary is down too. Describing never pins
// the checkout.
func (c *conn) describe(ctx context.Context, query string) error {
	if l := c.txLease; l != nil {
		return describeOn(ctx, l, query)
	}
	o := optionsFrom(ctx)
	onReplica := c.decide(o, classifyCached(query)).replica
	var replicaErr error
	if onReplica {
		var done bool
		if done, replicaErr = c.describeOnReplica(ctx, query); done {
			return replicaErr
		}
	}
	// Describing changes nothing: an unreachable primary is waited out
	// within primary_wait, as for the write the statement may be.
	l, err := c.primaryLeaseUnpinned(ctx, &primaryWait{reachable: true})
	if err == nil {
		if err = describeOn(ctx, l, query); err == nil || !isConnectionError(err) {
			return err
		}
	}
	// The primary cannot be reached.
	if replicaErr != nil || onReplica || ctx.Err() != nil {
		return cmp.Or(replicaErr, err)
	}
	if done, rerr := c.describeOnReplica(ctx, query); done || rerr != nil {
		return rerr
	}
	return err
}

// describeOnReplica describes query on a replica its read could use. done
// reports that this settled it, with err the text's error if any; else the
// primary should describe it, and err is the replica's error that the
// primary may settle (nil when no replica was usable).
//
// It asks any replica that is up, whatever the read's lag and session
// bounds: describing reads no data, only the schema, and a replica that
// lacks an object the text names (a table the session just created)
// answers 42P01, which hands the text to the primary. A session read
// whose write is not yet on a replica still describes while the primary
// is restarting, as its plain call would once the write is replayed.
func (c *conn) describeOnReplica(ctx context.Context, query string) (done bool, err error) {
	maxLag, minLSN := noLagLimit, uint64(0)
	var tried uint64
	var lastErr error
	for {
		l, err := c.nextReplica(ctx, maxLag, minLSN, &tried, &lastErr)
		if errors.Is(err, errSettingsRefused) {
			return false, nil // the primary describes it
		}
		if err != nil {
			return true, err // ctx ended
		}
		if l == nil {
			return false, nil
		}
		err = describeOn(ctx, l, query)
		if err == nil {
			return true, nil
		}
		if _, ok := primaryRerun(err); ok {
			return false, err
		}
		if ctx.Err() != nil || !isRetryableRead(err) {
			return true, err
		}
		c.dropReplica(l, err) // it failed, not the text: try another
	}
}

// describeOn parses and describes query on l's connection.
func describeOn(ctx context.Context, l *lease, query string) error {
	if sc, ok := l.sc.(*stdlib.Conn); ok {
		if _, err := sc.Conn().PgConn().Prepare(ctx, "", query, nil); err != nil {
			return err
		}
	}
	return nil
}

func named(args []driver.Value) []driver.NamedValue {
	nv := make([]driver.NamedValue, len(args))
	for i, v := range args {
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return nv
}
