//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pgreplica

import "syscall"

// peekFD is one recv(MSG_PEEK|MSG_DONTWAIT) on fd: it neither waits nor
// consumes. It runs inside RawConn.Control.
func (p *peeker) peekFD(fd uintptr) {
	n, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case n > 0:
		// Data (an error here can only be about the sender's address,
		// which a connected stream socket does not need).
		p.state, p.n = queueData, n
	case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
		p.state = queueEmpty
	default: // 0 bytes: the peer closed; or a reset, a timeout
		p.state = queueEnd
	}
}
