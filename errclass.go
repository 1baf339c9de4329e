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

// isConnectionError reports errors that say the node (not the statement) is
// unusable: it could not be reached, the connection broke, or the server is
// shutting down or starting up.
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
// yet may run again on another node: the node failed, or a standby
// cancelled it in a recovery conflict, or it has no free connection slot.
func isRetryableRead(err error) bool {
	if isConnectionError(err) {
		return true
	}
	switch pgCode(err) {
	case "40001", "40P01": // recovery conflicts are reported as these on a standby
		return true
	case "53300": // too_many_connections
		return true
	}
	return false
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
