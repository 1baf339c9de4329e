package sandbox

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return ln.Addr().String()
}

// noLeaks fails t if goroutines started after it are left once t's
// cleanups (the echo server's among them) have run.
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func roundTrip(t *testing.T, c net.Conn, msg []byte) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo through the proxy changed the data")
	}
	return time.Since(start)
}

func TestLatencyProxy(t *testing.T) {
	noLeaks(t)
	target := echoServer(t)
	const delay = 20 * time.Millisecond
	p, err := NewLatencyProxy(target, delay)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	direct, err := net.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	base := roundTrip(t, direct, []byte("ping"))
	for range 3 {
		rtt := roundTrip(t, c, []byte("ping"))
		if rtt < 2*delay || rtt > 2*delay+base+200*time.Millisecond {
			t.Fatalf("round trip through the proxy %v; direct %v, want about %v more", rtt, base, 2*delay)
		}
	}

	// Many chunks in flight at once: in order, and the delay is not paid
	// once per chunk.
	var want bytes.Buffer
	for i := range 2000 {
		want.WriteString(time.Duration(i).String())
	}
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() {
		msg := want.Bytes()
		for len(msg) > 0 {
			n := min(len(msg), 100)
			if _, err := c.Write(msg[:n]); err != nil {
				t.Error(err)
				return
			}
			msg = msg[n:]
		}
	})
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("chunks came back out of order or changed")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%d bytes in small writes took %v: the delay is not pipelined", want.Len(), d)
	}

	p.SetDelay(0)
	if rtt := roundTrip(t, c, []byte("ping")); rtt >= 2*delay {
		t.Fatalf("round trip %v after SetDelay(0)", rtt)
	}
	p.SetDelay(delay)

	// Close cuts open connections (a read on one ends) and leaves no
	// goroutine, even with data queued in both directions.
	if _, err := c.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a connection through the closed proxy stays open")
	}
	c.Close()
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("the closed proxy still accepts connections")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// A client that hangs up is seen by the target as a hang-up (after the
// delay), and the proxy's goroutines for it end.
func TestLatencyProxyHalfClose(t *testing.T) {
	noLeaks(t)
	target := echoServer(t)
	p, err := NewLatencyProxy(target, 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(c) // the echo, then EOF once the target hung up
	if err != nil || string(got) != "last words" {
		t.Fatalf("after a half close: %q, %v", got, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.conns)
		p.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d proxied connections still open after both sides hung up", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
