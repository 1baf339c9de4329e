package pgreplica

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// RawConn is what sql.Conn.Raw hands to its function when the *sql.DB uses
// pgreplica: the typed way to pgx's own API (CopyFrom, SendBatch, LISTEN and
// WaitForNotification, pgx.CollectRows …), where plain pgx code would
// assert *stdlib.Conn.
//
//	sc, _ := db.Conn(ctx)
//	defer sc.Close()
//	err := sc.Raw(func(dc any) error {
//		pc, err := dc.(pgreplica.RawConn).PrimaryConn(ctx)
//		if err != nil {
//			return err
//		}
//		_, err = pc.CopyFrom(ctx, pgx.Identifier{"items"}, cols, src)
//		return err
//	})
//
// A *pgx.Conn it returns belongs to the sql.Conn's current checkout: use it
// until sql.Conn.Close, never after, and never from two goroutines at once.
// pgreplica cannot see what runs on a primary connection, so it treats it
// as holding session state (LISTEN, SET, temporary tables, advisory locks)
// made through SQL: that state never reaches another user of the
// connection.
type RawConn interface {
	// PrimaryConn returns a connection to the primary. Like a write, it pins
	// the rest of the checkout to the primary, so statements run on the
	// sql.Conn afterwards see what was done through it. Inside a transaction
	// it returns the transaction's connection, or ErrRawReplicaTx when the
	// transaction is a read-only one on a replica.
	PrimaryConn(ctx context.Context) (*pgx.Conn, error)
	// ReplicaConn returns a connection for reads, chosen as a read with ctx
	// would be: a usable replica (within max_replica_lag or WithMaxLag, and
	// having replayed ctx's session), else the primary when
	// fallback_to_primary is on (ErrNoReplica when it is off); the primary
	// also when the checkout is pinned to it or ctx carries UsePrimary.
	// Inside a transaction it returns the transaction's connection. A write
	// sent through it to a replica fails with SQLSTATE 25006 and is not
	// re-run. Change no session state on it (SET, advisory locks, PREPARE):
	// a replica connection goes back to the pool as it is.
	ReplicaConn(ctx context.Context) (*pgx.Conn, error)
	// Connector returns the Connector the connection belongs to.
	Connector() *Connector
}

var _ RawConn = (*conn)(nil)

func (c *conn) PrimaryConn(ctx context.Context) (*pgx.Conn, error) {
	o := optionsFrom(ctx)
	if l := c.txLease; l != nil {
		if l != &c.primary {
			return nil, ErrRawReplicaTx
		}
		c.tx.ddl = true // it may run DDL: pgreplica cannot see
		return c.rawConn(o, l, ReasonTransaction, true)
	}
	reason := ReasonWrite
	if o != nil && o.primary {
		reason = ReasonUsePrimary
	}
	l, err := c.primaryLease(ctx)
	if err != nil {
		return nil, err
	}
	pc, err := c.rawConn(o, l, reason, true)
	if err != nil {
		return nil, err
	}
	// Whatever is written through it (DDL included: pgreplica cannot see)
	// is acknowledged by the time the checkout ends: the caller's session
	// learns of it then, as with a write through QueryContext. The
	// connector-wide records (read_your_writes=connector, DDL) are not held
	// open: a sql.Conn may keep its raw connection for hours (a LISTEN
	// loop), which would send every read of the process to the primary.
	// They note a write now and again when the checkout ends.
	c.closeOpenWrite()
	w := c.writeSessions(o, true)
	if w[0] != nil {
		w[0].open.Add(1)
		c.openWrite[0] = w[0]
	}
	for _, s := range w[1:] {
		if s != nil {
			s.noteWrite(c.c)
		}
	}
	c.noteAtEnd = [2]*session{w[1], w[2]}
	return pc, nil
}

func (c *conn) ReplicaConn(ctx context.Context) (*pgx.Conn, error) {
	o := optionsFrom(ctx)
	if l := c.txLease; l != nil {
		return c.rawConn(o, l, ReasonTransaction, false)
	}
	reason := ReasonRead
	switch {
	case o != nil && o.primary:
		return c.rawPrimary(ctx, o, ReasonUsePrimary)
	case c.pinned:
		return c.rawPrimary(ctx, o, ReasonPinned)
	}
	maxLag, minLSN, needPrimary := c.replicaBounds(o, txBounds)
	if needPrimary {
		return c.rawPrimary(ctx, o, ReasonSession)
	}
	var tried uint64
	var lastErr error
	l, err := c.nextReplica(ctx, maxLag, minLSN, &tried, &lastErr)
	if errors.Is(err, errSettingsRefused) {
		return c.rawPrimary(ctx, o, ReasonPinned)
	}
	if err != nil {
		return nil, err
	}
	if l != nil {
		return c.rawConn(o, l, reason, false)
	}
	if minLSN != 0 && c.c.anyUsableReplica(maxLag, tried) {
		return c.rawPrimary(ctx, o, ReasonSession)
	}
	if c.c.cfg.DisableFallback && !c.c.primaryOnly() {
		if lastErr != nil {
			return nil, fmt.Errorf("%w (last replica error: %v)", ErrNoReplica, lastErr)
		}
		return nil, ErrNoReplica
	}
	return c.rawPrimary(ctx, o, c.c.fallbackReason())
}

func (c *conn) rawPrimary(ctx context.Context, o *routeOptions, reason Reason) (*pgx.Conn, error) {
	l, err := c.primaryLease(ctx)
	if err != nil {
		return nil, err
	}
	return c.rawConn(o, l, reason, false)
}

// rawConn hands out the lease's *pgx.Conn. pgreplica cannot see what runs
// on it: for PrimaryConn (session set) it is taken to hold session state;
// either way the checkout counts as used, so a failed read later in it is
// not silently moved.
func (c *conn) rawConn(o *routeOptions, l *lease, reason Reason, session bool) (*pgx.Conn, error) {
	sc, ok := l.sc.(*stdlib.Conn)
	if !ok {
		return nil, fmt.Errorf("pgreplica: node %s has no pgx connection", l.node.addr)
	}
	if session && l == &c.primary {
		c.noteSessionState(l, classification{})
	}
	c.statements++
	l.node.statements.Add(1)
	if o != nil && o.report != nil {
		o.report.set(l.node, reason)
	}
	return sc.Conn(), nil
}
