package pgreplica

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/stdlib"
)

// An idle backend sends nothing unless it is going away: a fast shutdown,
// pg_terminate_backend or idle_session_timeout send ErrorResponse (FATAL,
// 57P0x) and close; an immediate shutdown or a crash of another backend
// send a NoticeResponse (WARNING 57P01/57P02) and close. A statement sent
// on such a pooled connection fails after it was sent, so for a write
// nobody can tell whether it ran. Looking at the socket's receive queue
// before anything is sent costs one non-blocking syscall per primary
// checkout, and turns that into a connection that is simply replaced.
//
// What the check may conclude, and why it is safe either way:
//   - It never waits and never takes the socket's read lock (see
//     peeker.peek): pgconn's background reader may sit in Read on an idle
//     connection, holding that lock, until the server sends something.
//   - It never consumes a byte: whatever it sees is still there for pgconn.
//   - "Gone" only ever makes pgreplica close a connection on which nothing
//     was sent and take another, so a wrong "gone" costs a reconnect, never
//     a statement. A wrong "alive" is what happened without the check.
//   - pgconn may already hold bytes the socket no longer shows (its read
//     buffer, or its background reader's): a FATAL read that way is
//     missed, but the close that follows it is not, since the end of the
//     stream stays queued until someone reads it.
//   - TLS: the queued bytes are encrypted records, so their messages cannot
//     be read. The end of the stream or a reset still means gone. Any queued
//     record also counts as gone: on an idle pooled connection (no LISTEN:
//     such a connection holds session state and is never pooled) the server
//     sends one only to say goodbye (an ErrorResponse, the shutdown notice,
//     TLS close_notify), or for a rare notice; replacing the connection for
//     the latter is the safe mistake.

// idleConnGone reports whether the server has hung up, or is saying
// goodbye, on the idle connection l holds. Nothing may have been sent on
// it in this checkout.
func (l *lease) idleConnGone() bool {
	sc, ok := l.sc.(*stdlib.Conn)
	if !ok {
		return false // fakes in routing unit tests
	}
	return socketGone(sc.Conn().PgConn().Conn())
}

// socketGone reports whether the idle connection nc's peer hung up or is
// saying goodbye, from what its socket has queued (see above).
func socketGone(nc net.Conn) bool {
	encrypted := false
	if c, ok := nc.(*tls.Conn); ok {
		nc, encrypted = c.NetConn(), true
	}
	tc, ok := nc.(*trackedConn)
	if !ok || tc.peek == nil {
		return false
	}
	p := tc.peek
	switch p.look() {
	case queueEmpty:
		return false
	case queueData:
		return encrypted || !onlyAsyncMessages(p.buf[:p.n])
	default: // the end of the stream, a reset, a closed socket
		return true
	}
}

// peekLen is how much of the queue a check looks at: an ErrorResponse is
// told by its first byte, a NoticeResponse's SQLSTATE comes in its first
// few dozen.
const peekLen = 256

// peeker looks at a socket's receive queue without consuming it or
// waiting. It belongs to one connection and is used only by the holder of
// its lease.
type peeker struct {
	rc syscall.RawConn
	fn func(fd uintptr) // p.peekFD, bound once: a check allocates nothing
	// The last look: queueEmpty, queueData with n bytes in buf, or
	// queueEnd.
	state queueState
	n     int
	buf   [peekLen]byte
}

type queueState uint8

const (
	queueEmpty queueState = iota // nothing queued: the connection is idle
	queueData                    // bytes queued: buf[:n]
	queueEnd                     // end of stream, an error, or a closed socket
)

// newPeeker returns a peeker for c, or nil when c offers no raw socket.
func newPeeker(c net.Conn) *peeker {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &peeker{rc: rc}
	p.fn = p.peekFD
	return p
}

// look runs one non-blocking peek at the queue. RawConn.Control, unlike
// RawConn.Read, takes no lock of the socket (a reader blocked in Read
// holds its read lock); it fails only once the socket is closed.
func (p *peeker) look() queueState {
	p.state = queueEmpty
	if err := p.rc.Control(p.fn); err != nil {
		return queueEnd
	}
	return p.state
}

// onlyAsyncMessages reports whether b, the start of what an idle
// connection's socket has queued, holds nothing but messages a server may
// send to an idle client that stays: NoticeResponse (other than the
// shutdown and crash warnings, SQLSTATE class 57P), NotificationResponse
// and ParameterStatus. An ErrorResponse to an idle client is always FATAL.
// Bytes that do not start such a message (pgconn read part of one) count
// as goodbye too: the safe mistake.
func onlyAsyncMessages(b []byte) bool {
	for len(b) > 0 {
		switch b[0] {
		case 'N', 'A', 'S':
		default:
			return false // 'E', or not a message start
		}
		if len(b) < 5 {
			return true // the rest is not queued yet
		}
		size := int(binary.BigEndian.Uint32(b[1:5]))
		if size < 4 {
			return false
		}
		end := min(1+size, len(b))
		if b[0] == 'N' && shutdownNotice(b[5:end]) {
			return false
		}
		b = b[end:]
	}
	return true
}

// shutdownNotice reports whether the fields of a NoticeResponse (type
// byte, value, NUL; as far as queued) carry a SQLSTATE of class 57P:
// admin shutdown, crash shutdown, cannot connect now, database dropped,
// idle session timeout.
func shutdownNotice(fields []byte) bool {
	for len(fields) > 0 && fields[0] != 0 {
		typ := fields[0]
		fields = fields[1:]
		end := 0
		for end < len(fields) && fields[end] != 0 {
			end++
		}
		if typ == 'C' {
			v := fields[:end]
			return len(v) >= 3 && string(v[:3]) == "57P"
		}
		if end == len(fields) {
			return false // cut off before its code
		}
		fields = fields[end+1:]
	}
	return false
}
