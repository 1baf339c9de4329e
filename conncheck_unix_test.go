//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pgreplica

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSocketGone: the check's cost on an idle loopback connection,
// the common case (one recvfrom answering EAGAIN).
func BenchmarkSocketGone(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			var buf [1]byte
			c.Read(buf[:]) // until the client closes
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	n := &node{conns: map[*trackedConn]struct{}{}}
	c := n.track(raw)
	defer c.Close()
	b.ReportAllocs()
	// CPU time, user and system, of the process: on a loaded machine the
	// time per op is mostly waiting for a core.
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	for b.Loop() {
		if socketGone(c) {
			b.Fatal("idle connection taken for gone")
		}
	}
	b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
}
