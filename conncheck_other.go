//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package pgreplica

// peekFD is not implemented here: a gone server is found when the
// statement fails, as without the check.
func (p *peeker) peekFD(uintptr) { p.state = queueEmpty }
