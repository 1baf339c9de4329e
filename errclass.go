package pgreplica

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

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

// Cause is why a node is not serving: the SQLSTATE of the server's
// refusal, when it sent one, and a short reason. It never holds a raw
// error message: those can carry host names, user names and, from some
// layers, connection strings.
type Cause struct {
	// SQLState is the server's error code (28P01, 3D000, 53300, 57P03…),
	// "" when the server sent none (refused, timed out, TLS).
	SQLState string `json:"sqlstate,omitempty"`
	// Reason is one of: authentication failed, database does not exist,
	// too many connections, server starting up or shutting down,
	// terminated, server error, connection refused, timeout, TLS error,
	// host not found, connection closed by server, network error, error.
	Reason string `json:"reason"`
}

// String is "reason (SQLSTATE)", or the reason alone; "" for no cause.
func (c Cause) String() string {
	if c.SQLState == "" {
		return c.Reason
	}
	return c.Reason + " (" + c.SQLState + ")"
}

// sqlStateReasons name the SQLSTATEs a server answers a new connection
// with; any other code is "server error".
var sqlStateReasons = map[string]string{
	"28P01": "authentication failed", // invalid_password
	"28000": "authentication failed", // invalid_authorization_specification: pg_hba.conf, no such role
	"3D000": "database does not exist",
	"53300": "too many connections",
	"57P03": "server starting up or shutting down", // cannot_connect_now
	"57P01": "terminated",                          // admin_shutdown, pg_terminate_backend
	"57P02": "terminated",                          // crash_shutdown
	"42501": "permission denied",
}

// refusesLogin says whether c is a refusal that no wait ends: the server,
// or its TLS, refused this login itself (a wrong password, a missing
// database or role, no permission, a certificate that does not verify).
// A failover or a restart ends the others: refused, reset, timed out, a
// server shutting down or starting, full.
func (c Cause) refusesLogin() bool {
	switch code := c.SQLState; {
	case c.Reason == "TLS error":
		return true
	case code == "", code == "57P01", code == "57P02", code == "57P03", code == "53300", code[:2] == "08":
		return false
	}
	return true
}

// isOutage reports a connection error that a failover or a restart ends,
// one worth waiting out within primary_wait; a refused login is reported
// at once.
func isOutage(err error) bool {
	return isConnectionError(err) && !errorCause(err).refusesLogin()
}

// errorCause classifies err for logs and status, never quoting it.
func errorCause(err error) Cause {
	if err == nil {
		return Cause{}
	}
	if code := pgCode(err); code != "" {
		reason, ok := sqlStateReasons[code]
		if !ok {
			reason = "server error"
			if len(code) == 5 && code[:2] == "08" {
				reason = "connection failure"
			}
		}
		return Cause{SQLState: code, Reason: reason}
	}
	var (
		dnsErr  *net.DNSError
		certErr *tls.CertificateVerificationError
		recErr  tls.RecordHeaderError
		alert   tls.AlertError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		ne      net.Error
	)
	switch {
	case pgconn.Timeout(err) || errors.Is(err, errProbeTimeout) || errors.Is(err, context.DeadlineExceeded):
		return Cause{Reason: "timeout"}
	case errors.Is(err, syscall.ECONNREFUSED):
		return Cause{Reason: "connection refused"}
	case errors.As(err, &certErr), errors.As(err, &recErr), errors.As(err, &alert),
		errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid),
		// pgconn's refusal is a plain error: "server refused TLS
		// connection" (sslmode=require on a server without TLS). The text
		// is matched, never shown.
		hasLeaf(err, "server refused TLS"):
		return Cause{Reason: "TLS error"}
	case errors.As(err, &dnsErr):
		return Cause{Reason: "host not found"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return Cause{Reason: "connection closed by server"}
	case errors.As(err, &ne):
		return Cause{Reason: "network error"}
	}
	return Cause{Reason: "error"}
}

// hasLeaf says whether an error at the end of err's chain (one that wraps
// nothing) has text in its message. Only leaves are read: a wrapper's
// Error() may format fields a half-built error lacks.
func hasLeaf(err error, text string) bool {
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			return hasLeaf(inner, text)
		}
		return false // a wrapper of nothing: nothing to read
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if e != nil && hasLeaf(e, text) {
				return true
			}
		}
		return false
	}
	return strings.Contains(err.Error(), text)
}

// errorClass is errorCause as one string, for logs.
func errorClass(err error) string { return errorCause(err).String() }

var errProbeTimeout = errors.New("probe timed out")

// errProbeConnectTimeout is a probe timeout while opening its connection:
// the server accepted it and never finished the startup.
var errProbeConnectTimeout = fmt.Errorf("%w while connecting", errProbeTimeout)

// primaryFailed lets the monitor re-check the topology at once when a
// statement on the primary suggests it is gone or no longer writable.
func (c *Connector) primaryFailed(err error) {
	if isReadOnlyViolation(err) || isConnectionError(err) {
		c.mon.kick()
	}
}
