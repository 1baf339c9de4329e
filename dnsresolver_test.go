package pgreplica

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"testing"
	"time"
)

// udpDNS answers every A query for any name with 127.0.0.9 over UDP, and
// other queries with no answer.
func udpDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			q := buf[:n]
			// The question ends after its name's zero byte, type and class.
			end := 12
			for end < n && q[end] != 0 {
				end += int(q[end]) + 1
			}
			end += 5
			if end > n || binary.BigEndian.Uint16(q[end-4:]) != 1 { // A only (Go asks AAAA too)
				resp := append([]byte(nil), q[:min(end, n)]...)
				resp[2], resp[3] = 0x81, 0x80 // a response, no error
				binary.BigEndian.PutUint16(resp[6:], 0)
				pc.WriteTo(resp, from)
				continue
			}
			resp := append([]byte(nil), q[:end]...)
			resp[2], resp[3] = 0x81, 0x80
			binary.BigEndian.PutUint16(resp[6:], 1) // one answer
			binary.BigEndian.PutUint16(resp[8:], 0)
			binary.BigEndian.PutUint16(resp[10:], 0)
			resp = append(resp, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 9)
			pc.WriteTo(resp, from)
		}
	}()
	return pc.LocalAddr().String()
}

// discovery_dns_server's resolver speaks UDP to the server: its query's
// connection must still be a net.PacketConn to Go's resolver, or the query
// goes out framed for TCP and no server answers it (075b5bb's wrapper: every
// lookup timed out).
func TestDNSServerResolver(t *testing.T) {
	r := dnsServerResolver(udpDNS(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // liveness
	defer cancel()
	addrs, err := r.LookupHost(ctx, "pg.test")
	if err != nil || !slices.Equal(addrs, []string{"127.0.0.9"}) {
		t.Fatalf("LookupHost: %v, %v; want [127.0.0.9]", addrs, err)
	}
}
