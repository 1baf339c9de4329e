package pgreplica

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// A switchover's fast shutdown, or pg_terminate_backend, can end a backend
// just as a statement reaches it: the statement is sent on a connection
// that looked idle and alive (conncheck.go), and FATAL 57P01 comes back.
// Usually nobody can tell whether such a statement ran. One case is
// certain: the server answers the messages of the extended protocol in
// order through one output buffer (Parse with ParseComplete, Bind with
// BindComplete, before Execute runs; after an error it skips to Sync), so
// when the first byte it sent after pgx began writing the statement is an
// ErrorResponse, neither Parse nor Bind completed, and Execute never ran.
// Such an autocommit Exec may run once more, as a 25006 one does.
//
// Not covered: the simple protocol (pgx sends a statement without
// arguments as Query, whose last statement commits before its
// CommandComplete is written), TLS (the socket's bytes are encrypted
// records, which never read as 'B', 'P' or 'E'), transactions and session
// state (they are gone with the backend), Query (rows may have been read).

// unreceived reports whether err, returned by a statement on l, is the
// server ending the session before it answered anything of the statement
// (see above). l's socket holds what was last written and answered.
func (l *lease) unreceived(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || !strings.HasPrefix(pe.Code, "57P") {
		return false
	}
	if sev := pe.SeverityUnlocalized; sev != "FATAL" && (sev != "" || pe.Severity != "FATAL") {
		return false
	}
	sc, ok := l.sc.(*stdlib.Conn)
	if !ok {
		return false
	}
	tc, ok := sc.Conn().PgConn().Conn().(*trackedConn) // not under TLS
	if !ok {
		return false
	}
	switch tc.sent.Load() {
	case 'B', 'P': // Bind (a cached statement) or Parse: extended protocol
	default:
		return false
	}
	return tc.reply.Load() == 'E'|replied
}

// rerunUnreceived runs once more an autocommit Exec the server never ran
// (unreceived), on a new primary connection: the same node if it still
// answers as primary (the backend alone was terminated), else the one the
// monitor finds within primary_wait.
func (c *conn) rerunUnreceived(ctx context.Context, o *routeOptions, query string, args []driver.NamedValue, first error) (driver.Result, error) {
	c.primary.dirty = true
	c.primary.release()
	c.c.mon.kick()
	l, err := c.writeLease(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w (and %w)", first, err)
	}
	return c.execOn(ctx, o, l, query, args, ReasonWrite)
}
