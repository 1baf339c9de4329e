package pgreplica

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica/internal/testca"
)

// msg builds one backend message: type, length, body.
func msg(typ byte, body string) string {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(4+len(body)))
	return string(typ) + string(l[:]) + body
}

// notice is a NoticeResponse body with the given SQLSTATE.
func notice(code string) string {
	return "SWARNING\x00VWARNING\x00C" + code + "\x00Mterminating connection\x00\x00"
}

var asyncCases = []struct {
	name  string
	queue string
	stays bool // onlyAsyncMessages: the connection may be used
}{
	{"parameter status", msg('S', "TimeZone\x00UTC\x00"), true},
	{"notification", msg('A', "\x00\x00\x00\x01ch\x00payload\x00"), true},
	{"ordinary notice", msg('N', notice("01000")), true},
	{"notice then parameter status", msg('N', notice("01000")) + msg('S', "a\x00b\x00"), true},
	{"a message cut off", msg('S', "TimeZone\x00UTC\x00")[:7], true},
	{"a header cut off", "S\x00\x00", true},
	{"FATAL 57P01", msg('E', "SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command\x00\x00"), false},
	{"immediate shutdown notice", msg('N', notice("57P01")), false},
	{"crash notice", msg('N', notice("57P02")), false},
	{"idle session timeout notice", msg('N', notice("57P05")), false},
	{"notice then FATAL", msg('N', notice("01000")) + msg('E', "SFATAL\x00"), false},
	{"not a message start", "\x17\x03\x03\x00\x20", false},
	{"a length below 4", "S\x00\x00\x00\x02", false},
}

func TestOnlyAsyncMessages(t *testing.T) {
	for _, tc := range asyncCases {
		if got := onlyAsyncMessages([]byte(tc.queue)); got != tc.stays {
			t.Errorf("%s: onlyAsyncMessages = %v, want %v", tc.name, got, tc.stays)
		}
	}
}

func FuzzOnlyAsyncMessages(f *testing.F) {
	for _, tc := range asyncCases {
		f.Add([]byte(tc.queue))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := onlyAsyncMessages(b)
		if len(b) > 0 && b[0] == 'E' && got {
			t.Fatalf("%q starts with an ErrorResponse and was taken for a live connection", b)
		}
	})
}

// socketPair returns a client socket wrapped as dialFunc wraps it, and the
// server's end; TLS when ca is set.
func socketPair(t *testing.T, ca *testca.CA) (client net.Conn, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	n := &node{conns: map[*trackedConn]struct{}{}}
	client = n.track(raw)
	if ca != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.PEM)
		ts := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "localhost")}})
		tcl := tls.Client(client, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		done := make(chan error, 1)
		go func() { done <- ts.Handshake() }()
		if err := tcl.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		client, server = tcl, ts
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// waitQueued waits until the client's socket has at least n bytes queued
// or its end of stream (the server's write is asynchronous).
func waitQueued(t *testing.T, c net.Conn, n int) {
	t.Helper()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	p := c.(*trackedConn).peek
	for {
		switch p.look() {
		case queueEnd:
			return
		case queueData:
			if p.n >= n {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSocketGone: what the check concludes from what an idle
// connection's socket holds, on plain and TLS connections, and that it
// consumes nothing: pgx still reads every byte afterwards.
func TestSocketGone(t *testing.T) {
	fatal := msg('E', "SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command\x00\x00")
	ca := testca.New(t)
	for _, tc := range []struct {
		name  string
		tls   bool
		send  string
		close bool
		gone  bool
	}{
		{name: "idle", gone: false},
		{name: "parameter status", send: msg('S', "TimeZone\x00UTC\x00"), gone: false},
		{name: "ordinary notice", send: msg('N', notice("01000")), gone: false},
		{name: "FATAL queued, not closed yet", send: fatal, gone: true},
		{name: "crash notice, not closed yet", send: msg('N', notice("57P02")), gone: true},
		{name: "FATAL and close", send: fatal, close: true, gone: true},
		{name: "closed", close: true, gone: true},
		{name: "TLS idle", tls: true, gone: false},
		{name: "TLS record queued", tls: true, send: msg('S', "TimeZone\x00UTC\x00"), gone: true},
		{name: "TLS FATAL and close", tls: true, send: fatal, close: true, gone: true},
		{name: "TLS closed", tls: true, close: true, gone: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ca2 *testca.CA
			if tc.tls {
				ca2 = ca
			}
			client, server := socketPair(t, ca2)
			if tc.send != "" {
				if _, err := server.Write([]byte(tc.send)); err != nil {
					t.Fatal(err)
				}
				waitQueued(t, client, 1)
				if !tc.tls {
					waitQueued(t, client, len(tc.send))
				}
			}
			if tc.close {
				server.Close()
				if tc.send == "" {
					waitQueued(t, client, 1) // the end, or TLS close_notify
				}
			}
			if got := socketGone(client); got != tc.gone {
				t.Fatalf("socketGone = %v, want %v", got, tc.gone)
			}
			if tc.send != "" {
				// Nothing was consumed: the client reads it all.
				buf := make([]byte, len(tc.send))
				client.SetReadDeadline(time.Now().Add(time.Minute)) // liveness
				if _, err := readFull(client, buf); err != nil || string(buf) != tc.send {
					t.Fatalf("after the check the client read %q, %v; want %q", buf, err, tc.send)
				}
			}
		})
	}
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestSocketGoneDoesNotWaitForABlockedReader: pgconn's background reader
// may sit in Read on an idle connection (it stops only after its next
// read returns), holding the socket's read lock. The check must neither
// wait for that lock nor steal the reader's bytes. With RawConn.Read in
// place of RawConn.Control it waits until the server sends something,
// which here happens only after the liveness bound.
func TestSocketGoneDoesNotWaitForABlockedReader(t *testing.T) {
	ca := testca.New(t)
	for _, useTLS := range []bool{false, true} {
		var ca2 *testca.CA
		if useTLS {
			ca2 = ca
		}
		client, server := socketPair(t, ca2)
		got := make(chan string, 1)
		go func() {
			buf := make([]byte, 16)
			n, _ := client.Read(buf)
			got <- string(buf[:n])
		}()
		// The reader is parked in the poller, holding the read lock.
		for !goroutineBlockedInRead() {
			time.Sleep(time.Millisecond)
		}
		checked := make(chan bool, 1)
		go func() { checked <- socketGone(client) }()
		var gone bool
		select {
		case gone = <-checked:
		case <-time.After(30 * time.Second): // liveness only: the check never waits
			t.Fatalf("tls=%v: the check waited for a reader blocked in Read", useTLS)
		}
		if gone {
			t.Errorf("tls=%v: an idle connection with a blocked reader was taken for gone", useTLS)
		}
		if _, err := server.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if s := <-got; s != "hello" {
			t.Errorf("tls=%v: the reader got %q, want %q", useTLS, s, "hello")
		}
	}
}

// goroutineBlockedInRead reports whether the test's reader goroutine is
// parked in a socket read.
func goroutineBlockedInRead() bool {
	buf := make([]byte, 1<<20)
	s := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(s, "\n\n") {
		if strings.Contains(g, "internal/poll.runtime_pollWait") && strings.Contains(g, "(*FD).Read") &&
			strings.Contains(g, "TestSocketGoneDoesNotWaitForABlockedReader") {
			return true
		}
	}
	return false
}
