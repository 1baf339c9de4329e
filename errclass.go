package pgreplica

import (
	"database/sql/driver"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgCode returns the SQLSTATE of a server error, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// isReadOnlyViolation reports SQLSTATE 25006: a hot standby refused a
// write. Nothing happened, so the primary may run the statement.
func isReadOnlyViolation(err error) bool { return pgCode(err) == "25006" }

// isConnectionError reports errors that say a connection (not the
// statement) failed: it could not be opened, it broke, or its backend was
// terminated. One connection failing says little about its node: only a
// failure to open a new one (see connectFailed) or the monitor takes a node
// out of routing.
func isConnectionError(err error) bool {
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	switch code := pgCode(err); {
	case len(code) == 5 && code[:2] == "08": // connection exception
		return true
	case code == "57P01", code == "57P02", code == "57P03": // admin or crash shutdown, cannot connect now
		return true
	}
	return false
}

// isRetryableRead reports errors after which a read that returned no row
// yet may run again on another node: its connection broke, or a standby
// cancelled it in a recovery conflict.
func isRetryableRead(err error) bool {
	if isConnectionError(err) {
		return true
	}
	switch pgCode(err) {
	case "40001", "40P01": // recovery conflicts are reported as these on a standby
		return true
	}
	return false
}

// isTerminated reports a backend ended by pg_terminate_backend or by a
// shutdown (57P01): the server had accepted the connection, so it says
// nothing about the node until a new connection is tried.
func isTerminated(err error) bool { return pgCode(err) == "57P01" }

// isTooManyConnections reports a server that refused one new connection
// because it has no free slot (53300): it is full, not down.
func isTooManyConnections(err error) bool { return pgCode(err) == "53300" }

// primaryRerun says whether a read that a standby refused before its first
// row should run again on the primary, and with which route reason. Each of
// these leaves nothing behind on the standby:
//   - 25006: the text wrote after all (a function, or a hint);
//   - 0A000, 55000, XX000: the standby cannot serve it (an unlogged table,
//     pg_current_wal_lsn(), an OID to assign) while the primary can;
//   - an undefined object: the standby may not have replayed the DDL that
//     created it yet. The primary has the newest schema, so its answer is
//     the one the application would get without replicas.
func primaryRerun(err error) (Reason, bool) {
	switch pgCode(err) {
	case "25006":
		return ReasonReadOnly, true
	case "0A000", "55000", "XX000":
		return ReasonRecoveryError, true
	case "42P01", "42703", "42883", "42704", "3F000":
		return ReasonUndefinedObject, true
	}
	return ReasonNone, false
}

// errorClass is a short description of err for logs and status: raw
// messages can carry host names and, from some layers, connection strings.
func errorClass(err error) string {
	if code := pgCode(err); code != "" {
		return "sqlstate " + code
	}
	var ce *pgconn.ConnectError
	switch {
	case err == nil:
		return ""
	case pgconn.Timeout(err) || errors.Is(err, errProbeTimeout):
		return "timeout"
	case errors.As(err, &ce):
		return "connect failed"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by server"
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "network error"
	}
	return "error"
}

var errProbeTimeout = errors.New("probe timed out")

// primaryFailed lets the monitor re-check the topology at once when a
// statement on the primary suggests it is gone or no longer writable.
func (c *Connector) primaryFailed(err error) {
	if isReadOnlyViolation(err) || isConnectionError(err) {
		c.mon.kick()
	}
}
