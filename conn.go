package pgreplica

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
//
// The exception is session state, which stays with the conn that made it,
// as with pgx's own driver: once a statement on the primary changed the
// session (SET, a temporary table, a session advisory lock, LISTEN, …) the
// conn keeps that physical connection across checkouts and sends every
// later statement to it; when database/sql closes the conn, the connection
// is closed too instead of going back to the pool. Nothing is ever reset,
// so whatever the pool's AfterConnect set up stays as it was.
type conn struct {
	c *Connector

	primary lease
	replica lease
	txLease *lease // the lease the open transaction runs on
	tx      tx     // reused: one transaction at a time per conn

	// pinned is set once this checkout used the primary: later reads follow
	// it, so a sql.Conn reads its own writes and keeps its session state.
	pinned bool
	// sticky is set once the primary lease holds session state: it is kept
	// across checkouts until the conn is closed; see sessionstate.go.
	// stickyPin is set when that state is more than plain settings (a
	// temporary table, a lock, SET ROLE, …): pinned then stays set across
	// checkouts too. evicted is set, under Connector.sticky.mu, when a
	// waiter took its connection while database/sql held the conn idle.
	sticky    bool
	stickyPin bool
	evicted   bool
	parked    bool // in Connector.sticky's idle set; only the conn's own calls touch it
	// settings are the plain settings this conn made on its primary
	// connection, replayed on the replica connections that serve its
	// reads (settings.go); nil if none.
	settings *settingsLog
	// statements run in this checkout; a failed read is retried on another
	// node only when it was the first, so nothing was observed yet.
	statements int

	// openWrite are the sessions (the caller's, the connector's under
	// read_your_writes=connector, the connector's DDL record) whose write
	// went through the query path in this checkout: it is acknowledged
	// (committed) only once the rows are closed, which database/sql
	// signals by ending the checkout.
	openWrite [3]*session
	// noteAtEnd are connector-wide sessions that note a write when the
	// checkout ends, without holding their reads on the primary until then
	// (RawConn.PrimaryConn).
	noteAtEnd [2]*session

	// rrows wraps the open result of the replica lease; reused.
	rrows replicaRows

	// hedge is the state of this conn's hedged reads, reused until a hedge
	// fires (hedge.go).
	hedge *hedge
	// hedgeRowsDone, set while a won hedge's rows may be open, ends what
	// ties them to the caller's context (see takeB).
	hedgeRowsDone func()

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
//
// It reports whether session state held by the conn was lost.
func (c *conn) endCheckout() (lost bool) {
	if c.txLease != nil {
		// database/sql rolled back or dropped the Tx without telling us
		// (a closed conn); releasing a connection that is mid-transaction
		// makes the pool destroy it.
		c.txLease = nil
	}
	if c.sticky && !c.stickyUsable() {
		c.sticky, lost = false, true // gone with its connection or role
	}
	if !c.sticky {
		c.primary.release()
	}
	c.replica.release()
	c.endHedgeRows()
	c.closeOpenWrite()
	for i, s := range c.noteAtEnd {
		if s != nil {
			c.noteAtEnd[i] = nil
			s.noteWrite(c.c)
		}
	}
	c.pinned = c.stickyPin
	c.statements = 0
	return lost
}

// countStatement counts a statement of the checkout, for the rules that
// hold only for its first read (a retry elsewhere, a hedge). A plain
// setting is not counted: it showed the caller no data.
func (c *conn) countStatement(cl classification) {
	if !cl.settings {
		c.statements++
	}
}

// endHedgeRows stops tying a won hedge's rows to the caller's context.
func (c *conn) endHedgeRows() {
	if f := c.hedgeRowsDone; f != nil {
		c.hedgeRowsDone = nil
		f()
	}
}

// IsValid ends the checkout. A conn whose session state was lost (its
// connection broke, or its node is no longer the primary) is invalid, so
// database/sql closes it instead of running later statements without it.
func (c *conn) IsValid() bool {
	lost := c.endCheckout()
	valid := !c.c.closed.Load() && !lost
	if valid && c.sticky {
		valid = c.parkSticky()
	}
	return valid
}

// ResetSession runs before a pooled conn is reused. A conn holding session
// state checks its connection as pgx's driver does (a ping after a second
// idle); a broken one is reported as driver.ErrBadConn, so database/sql
// discards the conn and uses another.
func (c *conn) ResetSession(ctx context.Context) error {
	evicted := c.unparkSticky()
	if lost := c.endCheckout(); lost || evicted || c.c.closed.Load() {
		return driver.ErrBadConn
	}
	if r, ok := c.primary.sc.(driver.SessionResetter); ok && c.sticky {
		if err := r.ResetSession(ctx); err != nil {
			return driver.ErrBadConn
		}
	}
	return nil
}

// Close discards the session state this conn holds with its connection.
func (c *conn) Close() error {
	if c.hedge != nil {
		c.c.hedgeWatch.remove(c.hedge)
		c.hedge = nil
	}
	c.unparkSticky()
	c.sticky, c.stickyPin, c.settings = false, false, nil
	c.endCheckout()
	return nil
}

// CheckNamedValue accepts every argument: pgx encodes them itself.
func (c *conn) CheckNamedValue(*driver.NamedValue) error { return nil }

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext checks the statement on the server, as pgx's driver does,
// so that invalid SQL fails here and not at its first execution (see
// describe). Which node runs it is decided at each execution; pgx prepares
// and caches it per connection on first use.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := c.describe(ctx, query); err != nil {
		return nil, err
	}
	return &stmt{c: c, query: query}, nil
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// Ping checks the primary. It does not pin the checkout to it: a sql.Conn
// that pings keeps reading from replicas. Like any statement that sends
// nothing first, it waits out an unreachable primary within primary_wait
// (a caller that wants a quick answer gives a deadline).
func (c *conn) Ping(ctx context.Context) error {
	l, err := c.primaryLeaseUnpinned(ctx, c.unsentWait(true))
	if err != nil {
		return err
	}
	return l.sc.Ping(ctx)
}

// primaryLeaseUnpinned is primaryLeaseFor for a statement that must not
// send the checkout's later reads to the primary (a ping, a describe, a
// plain setting: record decides).
func (c *conn) primaryLeaseUnpinned(ctx context.Context, w *primaryWait) (*lease, error) {
	pinned := c.pinned
	l, err := c.primaryLeaseFor(ctx, w)
	c.pinned = pinned
	return l, err
}

// unsentWait is the wait of a statement that sends nothing the server
// could have run before its connection to the primary is open: a primary
// that cannot be reached is waited out within primary_wait. One that may
// write always waits (writeLease); a read-only one (Ping, BEGIN READ ONLY,
// a plain setting, a read) not on a conn holding session state: its
// session went with the connection, and the caller must hear of it.
func (c *conn) unsentWait(readOnly bool) *primaryWait {
	return &primaryWait{reachable: !readOnly || !c.sticky}
}

// primaryLease pins a connection to the primary for the rest of the
// checkout.
func (c *conn) primaryLease(ctx context.Context) (*lease, error) {
	return c.primaryLeaseFor(ctx, &primaryWait{})
}

// writeLease is primaryLease for a statement that may change data: when
// the primary cannot be reached (a crash before the promotion), it waits
// within primary_wait for one that can, the same node back or a promoted
// one, instead of failing at once. Only a connection that could not be
// opened is waited out: nothing was sent on it.
func (c *conn) writeLease(ctx context.Context) (*lease, error) {
	return c.primaryLeaseFor(ctx, &primaryWait{reachable: true})
}

func (c *conn) primaryLeaseFor(ctx context.Context, w *primaryWait) (*lease, error) {
	c.pinned = true
	if c.primary.held() {
		return &c.primary, nil
	}
	replaced := 0 // pooled connections found gone
	for {
		if c.c.closed.Load() {
			return nil, ErrClosed
		}
		p, err := c.c.waitPrimary(ctx, w)
		if err != nil {
			return nil, err
		}
		if c.replica.held() && c.replica.node == p {
			// The replica it holds was promoted: that connection is the
			// primary's now, and its pool may have no other slot.
			c.primary, c.replica = c.replica, lease{}
			return &c.primary, nil
		}
		// A full pool's connections may all be held by idle conns for their
		// sessions: acquirePrimary takes one from them.
		err = c.c.acquirePrimary(ctx, p, &c.primary)
		if err == nil && replaced <= cap(p.slots) && c.primary.idleConnGone() {
			// Its backend went away while it was idle in the pool (a
			// switchover's shutdown, pg_terminate_backend, a crash):
			// nothing was sent on it, so another connection may take the
			// statement. The monitor looks at the node now. Bounded by
			// the pool's size: a server that says goodbye on every new
			// connection gets the statement, which then fails.
			replaced++
			c.primary.dirty = true
			c.primary.release()
			c.c.mon.kick()
			continue
		}
		if err == nil {
			return &c.primary, nil
		}
		if !w.reachable || ctx.Err() != nil || c.c.cfg.PrimaryWait < 0 || !isOutage(err) {
			c.c.primaryFailed(err)
			return nil, fmt.Errorf("pgreplica: primary %s: %w", p.addr, err)
		}
		// Marked down (the monitor probes it now), unless it only
		// terminated this connection: then look again a round later.
		c.c.connectFailed(p, err)
		w.retry = p.up.Load()
		w.cause = fmt.Errorf("primary %s: %w", p.addr, err)
	}
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	o := optionsFrom(ctx)
	reason := ReasonWrite
	l := c.txLease
	if l != nil {
		if c.tx.movable {
			return c.execTxFirst(ctx, o, query, args)
		}
		reason = ReasonTransaction
	} else {
		var err error
		if classifyCached(query).settings {
			// A plain setting does not pin the checkout: record decides.
			l, err = c.primaryLeaseUnpinned(ctx, c.unsentWait(true))
		} else {
			l, err = c.writeLease(ctx)
		}
		if err != nil {
			return nil, err
		}
	}
	res, err := c.execOn(ctx, o, l, query, args, reason)
	if err != nil && c.txLease == nil && !c.sticky && l.unreceived(err) {
		// The server ended the session before it answered anything of
		// this statement: it never ran (unreceived.go). Never inside a
		// transaction, never with session state.
		res, err = c.rerunUnreceived(ctx, o, query, args, err)
	}
	if err != nil && c.txLease == nil && isReadOnlyViolation(err) && !c.sticky {
		// The node believed primary refused it as a standby: it was
		// demoted and nothing was applied, so the write may run once on
		// the new primary. Never inside a transaction (its earlier
		// statements are gone with the old primary), never with session
		// state (it lives on that connection), never after an unknown
		// outcome (only 25006 gets here).
		res, err = c.rerunOnNewPrimary(ctx, o, l.node, query, args, err)
	}
	if err != nil {
		if c.txLease != nil {
			c.tx.failed = true
		}
		c.c.primaryFailed(err)
		return nil, err
	}
	return res, nil
}

// rerunOnNewPrimary re-runs, once, an autocommit write that old refused
// with 25006, on the primary the monitor finds next (waitPrimary kicks it).
// On no new primary within primary_wait it returns the first error.
func (c *conn) rerunOnNewPrimary(ctx context.Context, o *routeOptions, old *node, query string, args []driver.NamedValue, first error) (driver.Result, error) {
	l, err := c.rerunLease(ctx, old, first)
	if err != nil {
		return nil, err
	}
	return c.execOn(ctx, o, l, query, args, ReasonWrite)
}

// rerunLease gives up the primary connection of old, which refused a write
// with 25006 (first), and leases one on the primary the monitor finds next
// (waitPrimary kicks it), within primary_wait.
func (c *conn) rerunLease(ctx context.Context, old *node, first error) (*lease, error) {
	c.primary.release()
	l, err := c.primaryLeaseFor(ctx, &primaryWait{not: old, reachable: true})
	if err != nil {
		return nil, fmt.Errorf("%w (and %w)", first, err)
	}
	return l, nil
}

// execOn runs one statement through Exec on a held lease.
func (c *conn) execOn(ctx context.Context, o *routeOptions, l *lease, query string, args []driver.NamedValue, reason Reason) (driver.Result, error) {
	cl := classifyCached(query)
	if cl.sessionState {
		c.noteSessionState(l, cl)
	}
	c.countStatement(cl)
	n := l.node
	n.statements.Add(1)
	res, err := l.sc.ExecContext(c.traceCtx(ctx, reason), query, args)
	if err != nil {
		n.errors.Add(1)
	}
	c.record(o, outcome{node: n, reason: reason, cl: cl, err: err, text: query, args: args})
	return res, err
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	o := optionsFrom(ctx)
	if c.txLease != nil {
		if c.tx.movable {
			return c.queryTxFirst(ctx, o, query, args)
		}
		rows, err := c.queryOn(ctx, o, c.txLease, query, args, ReasonTransaction, classifyCached(query))
		if err != nil {
			c.tx.failed = true
		}
		return rows, err
	}
	c.c.waitRolesKnown(ctx)
	cl := classifyCached(query)
	p := c.decide(o, cl)
	if p.replica {
		return c.queryReplica(ctx, o, query, args, p, cl)
	}
	return c.queryPrimary(ctx, o, query, args, p.reason, cl)
}

// hedgeScope is where a read's hedge may go.
type hedgeScope uint8

const (
	hedgeNever    hedgeScope = iota
	hedgeStandbys            // another replica only
	hedgeAny                 // another replica, else the primary when fallback allows
)

// plan is where a query outside a transaction goes, and whether it may be
// hedged: decide makes it, the paths carry it out.
type plan struct {
	reason  Reason
	replica bool // a replica serves it (then perhaps the primary: see queryReplica); else the primary
	hedge   hedgeScope
}

// decide is the one place that says where a query outside a transaction
// may go and whether it may be hedged.
func (c *conn) decide(o *routeOptions, cl classification) plan {
	switch {
	case cl.hint == hintPrimary:
		return plan{reason: ReasonHint}
	case o != nil && o.primary:
		return plan{reason: ReasonUsePrimary}
	case c.pinned:
		return plan{reason: ReasonPinned}
	case cl.sessionState:
		// Session state belongs with the conn's primary connection, even
		// when a hint asks for a replica.
		return plan{reason: ReasonClassifier}
	case cl.hint == hintReplica:
		return plan{reason: ReasonHint, replica: true, hedge: c.hedgeScope(cl)}
	case !cl.readOnly:
		return plan{reason: ReasonClassifier}
	}
	return plan{reason: ReasonRead, replica: true, hedge: c.hedgeScope(cl)}
}

// hedgeScope says whether a replica read may be hedged, and where to. Only
// a checkout's first read is, with no replica connection held: a later one
// may follow data its caller has seen from that replica. A text that may
// have an effect (a replica hint on one the classifier knows is not
// read-only: pg_wal_replay_pause(), pg_stat_reset()) is never hedged: it
// would run twice. A text without effect wherever it runs (it calls only
// known built-ins) may be hedged to the primary, unless the conn already
// holds a primary connection (it would hold two). Any other read-only text
// may call a user function, which a standby refuses if it writes and a
// primary runs: it is hedged only among standbys.
//
// A conn with settings is not hedged: the hedge's connection would need
// them replayed too.
func (c *conn) hedgeScope(cl classification) hedgeScope {
	switch {
	case c.statements != 0 || c.c.cfg.HedgeAfter < 0 || c.replica.held() || !cl.readOnly || c.settings != nil:
		return hedgeNever
	case cl.pure && !c.primary.held():
		return hedgeAny
	}
	return hedgeStandbys
}

// outcome is what one statement did, as facts: the node that answered or
// refused it, why it went there, what the classifier knows of its text,
// and its error.
type outcome struct {
	node   *node
	reason Reason
	cl     classification
	err    error
	// query: it ran through Query, whose write is acknowledged only once
	// its rows are read (when the checkout ends).
	query bool
	// unsent: it never reached the node (no connection could be had).
	unsent bool
	// text and args are the statement, for a settings statement to be
	// replayed (settings.go).
	text string
	args []driver.NamedValue
}

// record books the outcome of every statement, whatever path led to it
// (plain, UsePrimary, a hint, a pinned conn, a hedge's win, a re-run on the
// primary after a standby refused it): which node WithRoute reports, on
// failure too; whether the checkout is now pinned to the primary; and
// whether the session must count a write; and the plain settings the conn
// made, which its reads take to replicas. Only the primary changes data,
// and on it any text that is not pure may have written, a SELECT of a
// user function included; a plain setting changes none.
func (c *conn) record(o *routeOptions, out outcome) {
	n := out.node
	if o != nil && o.report != nil {
		o.report.set(n, out.reason)
	}
	if n.standby.Load() {
		return // a standby changed nothing
	}
	if c.txLease != nil {
		// A transaction's writes count at its commit (tx.Commit), and its
		// checkout is pinned already.
		if out.cl.ddl && mayHaveRun(out.err) {
			c.tx.ddl = true
		}
		return
	}
	if out.cl.settings {
		// It changed no data: the checkout's reads may stay on replicas,
		// which replay it (settings.go). If it failed, the primary's
		// session did not change; if it cannot be replayed, the conn
		// keeps to the primary, as for any session state.
		if out.err == nil && !c.stickyPin && !c.noteSettings(out.cl, out.text, out.args) {
			c.stickyPin, c.pinned = true, true
		}
		return
	}
	// Once the primary answered, it serves the rest of the checkout: a
	// replica may not have what the caller just saw.
	c.pinned = true
	if out.cl.pure || out.unsent || !mayHaveRun(out.err) {
		return
	}
	w := c.writeSessions(o, out.cl.ddl)
	if out.query && out.err == nil {
		c.closeOpenWrite()
		for _, s := range w {
			if s != nil {
				s.beginWrite(c.c)
			}
		}
		c.openWrite = w
		return
	}
	for _, s := range w {
		if s != nil {
			s.noteWrite(c.c)
		}
	}
}

// writeSessions are the sessions a write with o must be noted in: the
// caller's, the connector's (read_your_writes=connector) and, for DDL, the
// connector's record of DDL that bounds catalog reads.
func (c *conn) writeSessions(o *routeOptions, ddl bool) (w [3]*session) {
	if o != nil {
		w[0] = o.session
	}
	w[1] = c.c.ryw
	if ddl {
		w[2] = &c.c.ddl
	}
	return w
}

// mayHaveRun says whether a statement that returned err may have changed
// data: not when the server refused it (in autocommit it rolled back) or
// when database/sql is told nothing was sent; a lost connection leaves it
// unknown.
func mayHaveRun(err error) bool {
	if err == nil {
		return true
	}
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr) && !errors.Is(err, driver.ErrBadConn)
}

func (c *conn) queryPrimary(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, reason Reason, cl classification) (driver.Rows, error) {
	// Nothing is sent while no connection to the primary opens: whatever
	// the statement, it waits for the primary the monitor finds next, as
	// a write does; not a read on a conn whose session state is lost.
	pinned := c.pinned
	l, err := c.primaryLeaseFor(ctx, c.unsentWait(cl.readOnly))
	if cl.settings {
		c.pinned = pinned // record decides
	}
	if err != nil {
		if p, perr := c.c.primary(); perr == nil {
			c.record(o, outcome{node: p, reason: reason, cl: cl, err: err, query: true, unsent: true})
		}
		return nil, err
	}
	rows, err := c.queryOn(ctx, o, l, query, args, reason, cl)
	if err != nil && isReadOnlyViolation(err) && !c.sticky {
		// A write through Query (INSERT … RETURNING) that the node
		// believed primary refused as a standby: as in ExecContext, it
		// runs once on the new primary. pgx reads the first row before
		// QueryContext returns, so the caller has seen nothing of it.
		if l, err = c.rerunLease(ctx, l.node, err); err == nil {
			rows, err = c.queryOn(ctx, o, l, query, args, reason, cl)
		}
	}
	if err != nil {
		c.c.primaryFailed(err)
		if c.mayRerunOnPrimary(cl, err) {
			return c.rerunOnPrimary(ctx, o, query, args, reason, cl, l.node, err)
		}
		return nil, err
	}
	return rows, nil
}

// mayRerunOnPrimary says whether a read whose primary connection broke
// before its first row may run again: a text without effect wherever it
// runs (it calls only known built-ins), outside a transaction, on a conn
// with no session state to lose. A failover or a switchover then costs
// the reads that need the primary (sessions, the default mode's reads
// after a write) a wait, not an error. Anything else may have done
// something: its outcome is unknown, and it is never run again.
func (c *conn) mayRerunOnPrimary(cl classification, err error) bool {
	return cl.pure && !cl.sessionState && !cl.settings && c.txLease == nil && !c.sticky && isOutage(err)
}

// rerunOnPrimary runs a read again on the primary, as the monitor finds
// it, after its connection to tried broke before its first row (failed),
// for as long as mayRerunOnPrimary allows, within primary_wait (and ctx).
// The lease waits out an outage; after a try that broke again it looks
// a probe interval later, not at once, so a fleet does not hammer a host
// that ends every query.
func (c *conn) rerunOnPrimary(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, reason Reason, cl classification, tried *node, failed error) (driver.Rows, error) {
	if c.c.cfg.PrimaryWait < 0 {
		return nil, failed
	}
	w := &primaryWait{reachable: true, cause: failed}
	for {
		c.primary.discard() // broken: never back to the pool
		c.primary.release()
		l, err := c.primaryLeaseFor(ctx, w)
		if err != nil {
			// The node it last tried, or the primary it was for.
			c.record(o, outcome{node: tried, reason: reason, cl: cl, err: err, query: true, unsent: true})
			return nil, err
		}
		tried = l.node
		rows, err := c.queryOn(ctx, o, l, query, args, reason, cl)
		if err == nil {
			return rows, nil
		}
		c.c.primaryFailed(err)
		if !c.mayRerunOnPrimary(cl, err) {
			return nil, err // sent: its outcome is unknown
		}
		w.retry, w.cause = true, fmt.Errorf("primary %s: %w", tried.addr, err)
	}
}

// closeOpenWrite records the checkout's query-path write as acknowledged.
func (c *conn) closeOpenWrite() {
	w := c.openWrite
	c.openWrite = [3]*session{}
	for _, s := range w {
		if s != nil {
			s.noteWrite(c.c)
			s.open.Add(-1)
		}
	}
}

// queryOn runs one query on a held lease.
func (c *conn) queryOn(ctx context.Context, o *routeOptions, l *lease, query string, args []driver.NamedValue, reason Reason, cl classification) (driver.Rows, error) {
	if cl.sessionState {
		c.noteSessionState(l, cl)
	}
	c.countStatement(cl)
	n := l.node
	n.statements.Add(1)
	rows, err := l.sc.QueryContext(c.traceCtx(ctx, reason), query, args)
	if err != nil {
		n.errors.Add(1)
	}
	c.record(o, outcome{node: n, reason: reason, cl: cl, err: err, query: true, text: query, args: args})
	if err != nil {
		return nil, err
	}
	return rows, nil
}

// replicaBounds are what a read with classification cl asks of a replica:
// lag at most maxLag, and at least minLSN replayed for a session: the
// caller's, the connector's under read_your_writes=connector, and for a
// catalog read the connector's latest DDL. needPrimary is set when one of
// those writes is not yet known to be on any replica.
func (c *conn) replicaBounds(o *routeOptions, cl classification) (maxLag time.Duration, minLSN uint64, needPrimary bool) {
	maxLag = lagLimit(c.c.cfg.MaxReplicaLag)
	if o != nil {
		if o.hasMaxLag {
			maxLag = o.maxLag
		}
		if o.session != nil {
			minLSN, needPrimary = o.session.floor(c.c)
		}
	}
	if s := c.c.ryw; s != nil {
		m, np := s.floor(c.c)
		minLSN, needPrimary = max(minLSN, m), needPrimary || np
	}
	if cl.catalog {
		m, np := c.c.ddl.floor(c.c)
		minLSN, needPrimary = max(minLSN, m), needPrimary || np
	}
	return maxLag, minLSN, needPrimary
}

// txBounds is the classification a read-only transaction (or a raw
// replica connection) is bounded as: what it will read is not known when
// it begins. It does not count as a catalog read, so that a read-only
// transaction right after a migration still goes to a replica; a catalog
// read that must see recent DDL runs outside one, or with UsePrimary.
var txBounds = classification{}

// queryReplica runs a read on a usable replica. A read that fails before
// its first row because the replica is unreachable, its connection broke or
// it hit a recovery conflict is re-run on another replica and then, with
// fallback on, on the primary: each node at most once, within the caller's
// context. A read the replica refused as one only the primary can serve
// (see primaryRerun) is re-run on the primary.
func (c *conn) queryReplica(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, p plan, cl classification) (driver.Rows, error) {
	maxLag, minLSN, needPrimary := c.replicaBounds(o, cl)
	c.c.awaitFirstProbes(ctx)
	if needPrimary {
		// The position the read needs is not known yet: ask the primary
		// for it once, then a replica may serve the read (see catchUp).
		c.settleBounds(ctx, o, cl)
		if maxLag, minLSN, needPrimary = c.replicaBounds(o, cl); needPrimary {
			return c.queryPrimary(ctx, o, query, args, ReasonSession, cl)
		}
	}
	// picked is a replica the policy chose for this read already, with the
	// same bounds and nothing tried yet: the first hedged attempt takes it
	// rather than asking the policy again. In the default
	// read_your_writes=connector mode every read of a *sql.DB that ever
	// wrote has a minLSN, and choosing twice was ~330 instructions of a
	// ~28,000-instruction point read (callgrind, BENCHMARKS.md).
	var picked *node
	if minLSN != 0 {
		// Known positions may be a probe old: ask a replica. If none has
		// it, the loop below finds none usable and ends as before.
		if n, err := c.c.pickReplica(c, maxLag, minLSN, 0); n != nil && err == nil {
			picked = n // one is known to have it already
		} else {
			c.catchUp(ctx, maxLag, minLSN, 0)
		}
	}
	first := c.statements == 0
	reason := p.reason
	// A replica connection catchUp took serves the read: no hedge (it
	// would take a second one into the same slot).
	hedgeable := p.hedge != hedgeNever && !c.replica.held()
	var tried uint64
	var lastErr error
	for {
		var (
			l    *lease
			n    *node
			rows driver.Rows
			err  error
		)
		if hedgeable {
			hedgeable = false
			var won bool
			l, rows, err, won = c.queryHedged(ctx, o, query, args, reason, cl, p.hedge, maxLag, minLSN, &tried, picked)
			if won {
				return c.result(l.node, rows), nil
			}
			if l == nil {
				if err != nil {
					return nil, err
				}
				break
			}
			n = l.node
			if !l.held() {
				// Its connection could not be opened, and no hedge answered.
				if ctx.Err() != nil {
					return nil, err
				}
				c.c.connectFailed(n, err)
				lastErr = err
				continue
			}
		} else {
			l, err = c.nextReplica(ctx, maxLag, minLSN, &tried, &lastErr)
			if errors.Is(err, errSettingsRefused) {
				return c.queryPrimary(ctx, o, query, args, ReasonPinned, cl)
			}
			if err != nil {
				return nil, err
			}
			if l == nil {
				break
			}
			if lastErr != nil {
				reason = ReasonRetry
			}
			n = l.node
			rows, err = c.queryOn(ctx, o, l, query, args, reason, cl)
		}
		if err == nil {
			return c.result(n, rows), nil
		}
		if why, ok := primaryRerun(err); ok {
			if why == ReasonReadOnly {
				// The text wrote after all (a function, or a hint): nothing
				// happened on the standby, so the primary may run it, as
				// the write it is.
				n.reroutes[rerouteReadOnly].Add(1)
				return c.queryPrimary(ctx, o, query, args, why, classification{})
			}
			// Still a read; once the primary answered it, the primary
			// serves the rest of the checkout (record).
			n.reroutes[rerouteStandbyError].Add(1)
			return c.queryPrimary(ctx, o, query, args, why, cl)
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
	if c.c.cfg.DisableFallback && !c.c.primaryOnly() {
		if lastErr != nil {
			return nil, fmt.Errorf("%w (last replica error: %v)", ErrNoReplica, lastErr)
		}
		return nil, ErrNoReplica
	}
	if n, err := c.c.fallbackTarget(o != nil && o.hasMaxLag, minLSN, tried); err != nil {
		if lastErr != nil {
			return nil, fmt.Errorf("%w (last replica error: %v)", err, lastErr)
		}
		return nil, err
	} else if n != nil {
		return c.queryStale(ctx, o, n, query, args, cl, tried)
	}
	if reason != ReasonRetry {
		reason = c.c.fallbackReason()
	}
	return c.queryPrimary(ctx, o, query, args, reason, cl)
}

// queryHedged runs a checkout's first read on a usable replica (picked, if
// the caller's policy call chose one already) with a hedge armed (see
// hedge.go). It returns the lease the first attempt ran on, its
// node's connection held unless opening it failed (err says why), and the
// attempt's outcome; won reports that the hedge answered first instead:
// rows are then the hedge's, on c.replica. A nil lease means no replica
// was usable (err is set only if the policy failed).
func (c *conn) queryHedged(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, reason Reason, cl classification, scope hedgeScope, maxLag time.Duration, minLSN uint64, tried *uint64, picked *node) (l *lease, rows driver.Rows, err error, won bool) {
	n := picked
	if n == nil {
		if n, err = c.c.pickReplica(c, maxLag, minLSN, *tried); n == nil || err != nil {
			return nil, nil, err, false
		}
	}
	l = &c.replica
	h := c.armHedge(ctx, n, query, args, scope == hedgeAny, maxLag, minLSN, *tried)
	*tried |= 1 << n.index
	if h == nil {
		err = n.acquire(ctx, l)
	} else {
		err = h.acquireA(ctx, n, l)
	}
	if err == nil {
		rows, err = c.queryOn(ctx, o, l, query, args, reason, cl)
	} else {
		l.node = n // for the caller: which node failed
	}
	if h == nil {
		return l, rows, err, false
	}
	rows, err, won = h.finishA(ctx, l, rows, err)
	if won {
		c.statements++
		if !l.node.standby.Load() {
			// The primary answered: its connection is the checkout's
			// primary one. Left in the replica slot, the conn's next Exec
			// would wait for a slot it holds itself.
			c.primary, c.replica = c.replica, lease{}
			l = &c.primary
		}
		c.record(o, outcome{node: l.node, reason: ReasonHedge, cl: cl, query: true})
		return l, rows, nil, true
	}
	if err != nil && !l.held() {
		l.node = n
	}
	if b := h.target(); b != nil {
		*tried |= 1 << b.index
	}
	return l, rows, err, false
}

// nextReplica returns the replica lease a read should try next: the one
// this checkout holds while its node stays usable (replicas keep no session
// state of their own, so switching is safe), else a new one from a usable
// replica not in tried. A replica that cannot be reached is marked down and
// skipped, its error kept in lastErr. The lease it returns holds the
// conn's settings (replicaReady). It returns nil when no replica is left,
// and an error only when ctx ended or a replica refused the conn's
// settings (errSettingsRefused: the primary must serve the read).
func (c *conn) nextReplica(ctx context.Context, maxLag time.Duration, minLSN uint64, tried *uint64, lastErr *error) (*lease, error) {
	c.c.awaitFirstProbes(ctx)
	l := &c.replica
	if l.held() {
		if l.node.usableReplica(maxLag, minLSN) {
			*tried |= 1 << l.node.index
			err := c.replicaReady(ctx, l)
			if err == nil {
				return l, nil
			}
			if ctx.Err() != nil || errors.Is(err, errSettingsRefused) {
				l.release()
				return nil, err
			}
			c.dropReplica(l, err)
			*lastErr = err
		}
		l.release()
	}
	for !l.held() {
		n, err := c.c.pickReplica(c, maxLag, minLSN, *tried)
		if n == nil || err != nil {
			return nil, err
		}
		*tried |= 1 << n.index
		if err := n.acquire(ctx, l); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			c.c.connectFailed(n, err)
			*lastErr = err
			continue
		}
		if err := c.replicaReady(ctx, l); err != nil {
			if ctx.Err() != nil || errors.Is(err, errSettingsRefused) {
				l.release()
				return nil, err
			}
			// Its connection failed, not the settings: try another.
			c.dropReplica(l, err)
			*lastErr = err
		}
	}
	return l, nil
}

// dropReplica gives up the replica lease after a statement failed on it in
// a way another node may not. Only that connection is lost (the pool
// destroys a broken one); its node stays in routing unless the monitor
// finds it down.
func (c *conn) dropReplica(l *lease, err error) {
	c.c.connectionFailed(err)
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
		var tried uint64
		if itx, err := c.beginOnReplica(ctx, o, opts, &tried); itx != nil || err != nil {
			if err != nil {
				return nil, err
			}
			c.tx = tx{c: c, inner: itx, readOnly: true, opts: opts, tried: tried,
				onStandby: c.txLease.node.standby.Load(), movable: true}
			return &c.tx, nil
		}
	}
	itx, err := c.beginOnPrimary(ctx, opts)
	if err != nil {
		return nil, err
	}
	c.tx = tx{c: c, inner: itx, readOnly: opts.ReadOnly, session: session, opts: opts}
	return &c.tx, nil
}

// beginOnPrimary starts a transaction on the primary and makes its lease
// the conn's txLease.
func (c *conn) beginOnPrimary(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	l, err := c.primaryLeaseFor(ctx, c.unsentWait(opts.ReadOnly)) // nothing is sent before BEGIN
	if err != nil {
		return nil, err
	}
	itx, err := l.sc.BeginTx(c.traceCtx(ctx, ReasonTransaction), opts)
	if err != nil {
		c.c.primaryFailed(err)
		return nil, err
	}
	c.txLease = l
	return itx, nil
}

// beginOnReplica starts a read-only transaction on a usable replica not in
// tried, adding the nodes it tries. It returns (nil, nil) when the primary
// should take it instead.
func (c *conn) beginOnReplica(ctx context.Context, o *routeOptions, opts driver.TxOptions, tried *uint64) (driver.Tx, error) {
	maxLag, minLSN, needPrimary := c.replicaBounds(o, txBounds)
	if needPrimary {
		return nil, nil
	}
	var lastErr error
	for {
		l, err := c.nextReplica(ctx, maxLag, minLSN, tried, &lastErr)
		if errors.Is(err, errSettingsRefused) {
			return nil, nil // the primary takes it
		}
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
			c.record(o, outcome{node: n, reason: ReasonTransaction})
			return itx, nil
		}
		if ctx.Err() != nil || !isRetryableRead(err) {
			return nil, err
		}
		c.dropReplica(l, err)
	}
	if c.c.cfg.DisableFallback && !c.c.primaryOnly() && (minLSN == 0 || !c.c.anyUsableReplica(maxLag, *tried)) {
		return nil, ErrNoReplica
	}
	return nil, nil
}

// queryTxFirst runs the first statement of a read-only transaction that
// began on a replica. Until a statement has succeeded the transaction has
// returned nothing, so when its replica fails (unreachable, died, recovery
// conflict) it begins again on the next usable node and the statement runs
// there: no snapshot that the caller has seen is broken.
func (c *conn) queryTxFirst(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue) (driver.Rows, error) {
	cl := classifyCached(query)
	for {
		l := c.txLease
		rows, err := c.queryOn(ctx, o, l, query, args, ReasonTransaction, cl)
		if err == nil {
			c.tx.movable = false
			return rows, nil
		}
		if !c.moveTx(ctx, o, l, err) {
			c.tx.failed = true
			return nil, err
		}
	}
}

// execTxFirst is queryTxFirst for ExecContext.
func (c *conn) execTxFirst(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue) (driver.Result, error) {
	for {
		l := c.txLease
		res, err := c.execOn(ctx, o, l, query, args, ReasonTransaction)
		if err == nil {
			c.tx.movable = false
			return res, nil
		}
		if !c.moveTx(ctx, o, l, err) {
			c.tx.failed = true
			return nil, err
		}
	}
}

// moveTx begins the conn's movable read-only transaction again on another
// node after its statement failed on l with err, when err says the replica
// (not the statement) failed. It reports whether the statement may run
// again on the new c.txLease.
func (c *conn) moveTx(ctx context.Context, o *routeOptions, l *lease, err error) bool {
	if ctx.Err() != nil || !isRetryableRead(err) || isReadOnlyViolation(err) {
		return false
	}
	l.node.reroutes[rerouteRetry].Add(1)
	// The old transaction is abandoned with its connection: releasing a
	// connection that is mid-transaction makes the pool destroy it.
	c.txLease = nil
	c.tx.movable = false
	c.dropReplica(l, err)
	itx, berr := c.beginOnReplica(ctx, o, c.tx.opts, &c.tx.tried)
	if berr != nil {
		return false
	}
	if itx == nil {
		// No replica is left: the primary takes it, as BeginTx would have.
		if itx, berr = c.beginOnPrimary(ctx, c.tx.opts); berr != nil {
			return false
		}
		c.tx.inner, c.tx.onStandby = itx, false
		return true
	}
	c.tx.inner, c.tx.onStandby, c.tx.movable = itx, c.txLease.node.standby.Load(), true
	return true
}
