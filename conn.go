package pgreplica

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// Compile-time checks of the interfaces database/sql looks for. conn
// forwards to pgx's stdlib: context-aware Exec, Query, Prepare and BeginTx,
// Ping, session reset, validity and named-value checking; the Rows it
// returns are pgx's own, with every column-type interface.
var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

// conn is what database/sql pools. It owns no physical connection between
// checkouts: a statement takes one from the right node's pool, and it stays
// pinned until database/sql takes the conn back (IsValid), so each node's
// pool size is the real cap on its connections.
type conn struct {
	c *Connector

	primary lease
	replica lease
	txLease *lease // the lease the open transaction runs on
	tx      tx     // reused: one transaction at a time per conn

	// pinned is set once this checkout used the primary: later reads follow
	// it, so a sql.Conn reads its own writes and keeps its session state.
	pinned bool
	// statements run in this checkout; a failed read is retried on another
	// node only when it was the first, so nothing was observed yet.
	statements int

	// openWrite is a session whose write went through the query path in
	// this checkout: it is acknowledged (committed) only once the rows are
	// closed, which database/sql signals by ending the checkout.
	openWrite *session

	// Scratch space for pickReplica, reused to keep routing allocation-free.
	cands     []Candidate
	candNodes []*node
}

// Connector returns the Connector this conn belongs to; it lets code
// holding the driver conn from sql.Conn.Raw reach the cluster status.
func (c *conn) Connector() *Connector { return c.c }

// endCheckout releases the pinned physical connections. database/sql calls
// IsValid when it takes the conn back and Close when it drops it; both end
// the checkout, idempotently.
func (c *conn) endCheckout() {
	if c.txLease != nil {
		// database/sql rolled back or dropped the Tx without telling us
		// (a closed conn); releasing a connection that is mid-transaction
		// makes the pool destroy it.
		c.txLease = nil
	}
	c.primary.release()
	c.replica.release()
	c.closeOpenWrite()
	c.pinned = false
	c.statements = 0
}

func (c *conn) IsValid() bool {
	c.endCheckout()
	return !c.c.closed.Load()
}

func (c *conn) ResetSession(context.Context) error {
	c.endCheckout()
	if c.c.closed.Load() {
		return driver.ErrBadConn
	}
	return nil
}

func (c *conn) Close() error {
	c.endCheckout()
	return nil
}

// CheckNamedValue accepts every argument: pgx encodes them itself.
func (c *conn) CheckNamedValue(*driver.NamedValue) error { return nil }

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext does not prepare on a server: which node runs the
// statement is known only when it is executed. pgx prepares and caches it
// per connection on first use.
func (c *conn) PrepareContext(_ context.Context, query string) (driver.Stmt, error) {
	return &stmt{c: c, query: query}, nil
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// Ping checks the primary. It does not pin the checkout to it: a sql.Conn
// that pings keeps reading from replicas.
func (c *conn) Ping(ctx context.Context) error {
	pinned := c.pinned
	l, err := c.primaryLease(ctx)
	c.pinned = pinned
	if err != nil {
		return err
	}
	return l.sc.Ping(ctx)
}

// primaryLease pins a connection to the primary for the rest of the
// checkout.
func (c *conn) primaryLease(ctx context.Context) (*lease, error) {
	c.pinned = true
	if c.primary.held() {
		return &c.primary, nil
	}
	if c.c.closed.Load() {
		return nil, ErrClosed
	}
	p, err := c.c.primary()
	if err != nil {
		return nil, err
	}
	if err := p.acquire(ctx, &c.primary); err != nil {
		c.c.primaryFailed(err)
		return nil, fmt.Errorf("pgreplica: primary %s: %w", p.addr, err)
	}
	return &c.primary, nil
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	o := optionsFrom(ctx)
	reason := ReasonWrite
	l := c.txLease
	if l != nil {
		reason = ReasonTransaction
	} else {
		var err error
		if l, err = c.primaryLease(ctx); err != nil {
			return nil, err
		}
	}
	if classifyCached(query).sessionState {
		l.dirty = true
	}
	c.statements++
	n := l.node
	n.statements.Add(1)
	res, err := l.sc.ExecContext(c.traceCtx(ctx, reason), query, args)
	if err != nil {
		n.errors.Add(1)
		c.c.primaryFailed(err)
		return nil, err
	}
	if o != nil {
		if o.report != nil {
			o.report.set(n, reason)
		}
		if o.session != nil && c.txLease == nil {
			o.session.noteWrite(c.c)
		}
	}
	return res, nil
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	o := optionsFrom(ctx)
	if c.txLease != nil {
		return c.queryOn(ctx, o, c.txLease, query, args, ReasonTransaction, classifyCached(query))
	}
	cl := classifyCached(query)
	var reason Reason
	switch {
	case cl.hint == hintPrimary:
		reason = ReasonHint
	case o != nil && o.primary:
		reason = ReasonUsePrimary
	case c.pinned:
		reason = ReasonPinned
	case cl.hint == hintReplica:
		return c.queryReplica(ctx, o, query, args, ReasonHint, cl)
	case !cl.readOnly:
		reason = ReasonClassifier
	default:
		return c.queryReplica(ctx, o, query, args, ReasonRead, cl)
	}
	return c.queryPrimary(ctx, o, query, args, reason, cl)
}

func (c *conn) queryPrimary(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, reason Reason, cl classification) (driver.Rows, error) {
	l, err := c.primaryLease(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.queryOn(ctx, o, l, query, args, reason, cl)
	if err != nil {
		c.c.primaryFailed(err)
		return nil, err
	}
	if !cl.readOnly && o != nil && o.session != nil && c.txLease == nil {
		c.closeOpenWrite()
		o.session.open.Add(1)
		c.openWrite = o.session
	}
	return rows, nil
}

// closeOpenWrite records the checkout's query-path write as acknowledged.
func (c *conn) closeOpenWrite() {
	if s := c.openWrite; s != nil {
		c.openWrite = nil
		s.noteWrite(c.c)
		s.open.Add(-1)
	}
}

// queryOn runs one query on a held lease.
func (c *conn) queryOn(ctx context.Context, o *routeOptions, l *lease, query string, args []driver.NamedValue, reason Reason, cl classification) (driver.Rows, error) {
	if cl.sessionState {
		l.dirty = true
	}
	c.statements++
	n := l.node
	n.statements.Add(1)
	rows, err := l.sc.QueryContext(c.traceCtx(ctx, reason), query, args)
	if err != nil {
		n.errors.Add(1)
		return nil, err
	}
	if o != nil && o.report != nil {
		o.report.set(n, reason)
	}
	return rows, nil
}

// replicaBounds are what a read asks of a replica: lag at most maxLag, and
// at least minLSN replayed for a session. needPrimary is set when the
// session's latest write is not yet known to be on any replica.
func (c *conn) replicaBounds(o *routeOptions) (maxLag time.Duration, minLSN uint64, needPrimary bool) {
	maxLag = c.c.cfg.MaxReplicaLag
	if o == nil {
		return maxLag, 0, false
	}
	if o.hasMaxLag {
		maxLag = o.maxLag
	}
	if o.session != nil {
		minLSN, needPrimary = o.session.floor(c.c)
	}
	return maxLag, minLSN, needPrimary
}

// queryReplica runs a read on a usable replica. A read that fails before
// its first row because the replica is unreachable, died or hit a recovery
// conflict is re-run on another replica and then, with fallback on, on the
// primary: each node at most once, within the caller's context.
func (c *conn) queryReplica(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, reason Reason, cl classification) (driver.Rows, error) {
	maxLag, minLSN, needPrimary := c.replicaBounds(o)
	if needPrimary {
		return c.queryPrimary(ctx, o, query, args, ReasonSession, cl)
	}
	first := c.statements == 0
	var tried uint64
	var lastErr error
	for {
		l, err := c.nextReplica(ctx, maxLag, minLSN, &tried, &lastErr)
		if err != nil {
			return nil, err
		}
		if l == nil {
			break
		}
		if lastErr != nil {
			reason = ReasonRetry
		}
		n := l.node
		rows, err := c.queryOn(ctx, o, l, query, args, reason, cl)
		if err == nil {
			return rows, nil
		}
		if isReadOnlyViolation(err) {
			// The text wrote after all (a function, or a hint): nothing
			// happened on the standby, so the primary may run it.
			n.reroutes[rerouteReadOnly].Add(1)
			return c.queryPrimary(ctx, o, query, args, ReasonReadOnly, classification{})
		}
		if ctx.Err() != nil || !isRetryableRead(err) {
			return nil, err
		}
		if !first {
			// Inside a pinned sql.Conn the caller may have seen data from
			// this replica already: report instead of switching silently.
			if errors.Is(err, driver.ErrBadConn) {
				err = fmt.Errorf("pgreplica: replica %s: connection lost before the statement was sent", n.addr)
			}
			return nil, err
		}
		n.reroutes[rerouteRetry].Add(1)
		c.dropReplica(l, err)
		lastErr = err
	}

	if minLSN != 0 && c.c.anyUsableReplica(maxLag, tried) {
		// Replicas are fine; they have not replayed this session's writes
		// yet. That is not a fallback: the session needs the primary.
		return c.queryPrimary(ctx, o, query, args, ReasonSession, cl)
	}
	if !c.c.cfg.FallbackToPrimary {
		if lastErr != nil {
			return nil, fmt.Errorf("%w (last replica error: %v)", ErrNoReplica, lastErr)
		}
		return nil, ErrNoReplica
	}
	if reason != ReasonRetry {
		reason = ReasonFallback
	}
	return c.queryPrimary(ctx, o, query, args, reason, cl)
}

// nextReplica returns the replica lease a read should try next: the one
// this checkout holds while its node stays usable (replicas keep no session
// state, so switching is safe), else a new one from a usable replica not in
// tried. A replica that cannot be reached is marked down and skipped, its
// error kept in lastErr. It returns nil when no replica is left, and an
// error only when ctx ended.
func (c *conn) nextReplica(ctx context.Context, maxLag time.Duration, minLSN uint64, tried *uint64, lastErr *error) (*lease, error) {
	l := &c.replica
	if l.held() {
		if l.node.usableReplica(maxLag, minLSN) {
			*tried |= 1 << l.node.index
			return l, nil
		}
		l.release()
	}
	for !l.held() {
		n := c.c.pickReplica(c, maxLag, minLSN, *tried)
		if n == nil {
			return nil, nil
		}
		*tried |= 1 << n.index
		if err := n.acquire(ctx, l); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			c.c.trafficFailed(n, err)
			n.reroutes[rerouteDown].Add(1)
			*lastErr = err
		}
	}
	return l, nil
}

// dropReplica gives up the replica lease after a statement failed on it in
// a way another node may not: the node leaves routing if its connection
// broke.
func (c *conn) dropReplica(l *lease, err error) {
	if isConnectionError(err) {
		c.c.trafficFailed(l.node, err)
	}
	l.release()
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	o := optionsFrom(ctx)
	var session *session
	if o != nil {
		session = o.session
	}
	wantReplica := opts.ReadOnly && !c.pinned && (o == nil || !o.primary) &&
		// Hot standbys refuse SERIALIZABLE.
		sql.IsolationLevel(opts.Isolation) != sql.LevelSerializable
	if wantReplica {
		if itx, err := c.beginOnReplica(ctx, o, opts); itx != nil || err != nil {
			if err != nil {
				return nil, err
			}
			c.tx = tx{c: c, inner: itx, readOnly: true}
			return &c.tx, nil
		}
	}
	l, err := c.primaryLease(ctx)
	if err != nil {
		return nil, err
	}
	itx, err := l.sc.BeginTx(c.traceCtx(ctx, ReasonTransaction), opts)
	if err != nil {
		c.c.primaryFailed(err)
		return nil, err
	}
	c.txLease = l
	c.tx = tx{c: c, inner: itx, readOnly: opts.ReadOnly, session: session}
	return &c.tx, nil
}

// beginOnReplica starts a read-only transaction on a usable replica. It
// returns (nil, nil) when the primary should take it instead.
func (c *conn) beginOnReplica(ctx context.Context, o *routeOptions, opts driver.TxOptions) (driver.Tx, error) {
	maxLag, minLSN, needPrimary := c.replicaBounds(o)
	if needPrimary {
		return nil, nil
	}
	var tried uint64
	var lastErr error
	for {
		l, err := c.nextReplica(ctx, maxLag, minLSN, &tried, &lastErr)
		if err != nil {
			return nil, err
		}
		if l == nil {
			break
		}
		n := l.node
		itx, err := l.sc.BeginTx(c.traceCtx(ctx, ReasonTransaction), opts)
		if err == nil {
			c.txLease = l
			n.statements.Add(1)
			if o != nil && o.report != nil {
				o.report.set(n, ReasonTransaction)
			}
			return itx, nil
		}
		if ctx.Err() != nil || !isRetryableRead(err) {
			return nil, err
		}
		c.dropReplica(l, err)
	}
	if !c.c.cfg.FallbackToPrimary && (minLSN == 0 || !c.c.anyUsableReplica(maxLag, tried)) {
		return nil, ErrNoReplica
	}
	return nil, nil
}
