package sandbox

// A latency-injecting TCP proxy: a replica in another availability zone,
// on one machine. Each chunk read from either side is written to the other
// side no sooner than the delay after it was read; chunks stay in order and
// are pipelined, as on a long link, so the delay adds to each round trip
// once per direction rather than once per chunk in flight.

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// LatencyProxy listens on a loopback port and forwards every connection to
// a target address, delaying each direction by a configurable amount.
type LatencyProxy struct {
	target string
	ln     net.Listener
	delay  atomic.Int64 // nanoseconds, per direction

	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// NewLatencyProxy starts a proxy to target (host:port) that delays each
// chunk by delay in each direction: a round trip through it takes at least
// 2×delay longer than one to target.
func NewLatencyProxy(target string, delay time.Duration) (*LatencyProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &LatencyProxy{target: target, ln: ln, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.delay.Store(int64(delay))
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's "127.0.0.1:PORT", to list in a DSN in place of the
// target's address.
func (p *LatencyProxy) Addr() string { return p.ln.Addr().String() }

// SetDelay changes the delay of chunks read from now on.
func (p *LatencyProxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Close stops listening, cuts every connection and returns once none of
// the proxy's goroutines is left. It is idempotent.
func (p *LatencyProxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	close(p.done)
	err := p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track registers c so that Close cuts it; false when the proxy is closing
// (c is then closed here).
func (p *LatencyProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *LatencyProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
}

func (p *LatencyProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(client) {
			return
		}
		p.wg.Go(func() { p.serve(client) })
	}
}

// serve connects client to the target and relays both ways until both
// directions have ended or the proxy closes.
func (p *LatencyProxy) serve(client net.Conn) {
	d := net.Dialer{Timeout: 5 * time.Second}
	server, err := d.Dial("tcp", p.target)
	if err != nil {
		p.untrack(client) // the client sees the refusal as a closed connection
		return
	}
	if !p.track(server) {
		p.untrack(client)
		return
	}
	var pipes sync.WaitGroup
	pipes.Go(func() { p.relay(client, server) })
	pipes.Go(func() { p.relay(server, client) })
	pipes.Wait()
	p.untrack(client, server)
}

// chunk is data read from one side, due on the other at due.
type chunk struct {
	data []byte
	due  time.Time
}

// relay copies src to dst, each chunk delayed. A reader queues chunks
// stamped with their due time, the writer sends them when due: the queue
// keeps them in order and lets later chunks wait concurrently. When src
// ends (EOF), what is queued is delivered and dst's write side is shut, as
// a TCP peer would see it; on any error both connections are cut.
func (p *LatencyProxy) relay(src, dst net.Conn) {
	queue := make(chan chunk, 64) // bounded: a stalled reader stops reading
	readErr := make(chan error, 1)
	go func() { // ends when src fails or is closed: relay waits for it below
		defer close(queue)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				c := chunk{data: append([]byte(nil), buf[:n]...), due: time.Now().Add(time.Duration(p.delay.Load()))}
				select {
				case queue <- c:
				case <-p.done:
					readErr <- net.ErrClosed
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	failed := false
	for c := range queue {
		if failed {
			continue // drain so that the reader can end
		}
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-p.done:
				failed = true
				continue
			}
		}
		if _, err := dst.Write(c.data); err != nil {
			failed = true
			src.Close() // the reader stops; the other direction fails too
			dst.Close()
		}
	}
	err := <-readErr
	if failed || !errors.Is(err, io.EOF) {
		src.Close()
		dst.Close()
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
