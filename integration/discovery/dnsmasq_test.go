package discovery

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// dnsServer is Debian's dnsmasq on a loopback port, answering only from
// files the test writes: A records from a hosts file (reloaded on SIGHUP,
// as dnsmasq documents), SRV and host records from its config file (read
// only at start: changing them restarts it on the same port).
type dnsServer struct {
	t      *testing.T
	dir    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

// startDNS starts dnsmasq serving hosts (lines "ADDR NAME") and conf
// (dnsmasq options such as srv-host=…); it stops when t ends.
func startDNS(t *testing.T, hosts, conf string) *dnsServer {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		if os.Getenv("PGREPLICA_INTEGRATION") == "require" {
			t.Fatal("dnsmasq is not installed (apt-get install dnsmasq-base) and PGREPLICA_INTEGRATION=require")
		}
		t.Skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
	}
	d := &dnsServer{t: t, dir: t.TempDir()}
	d.writeHosts(hosts)
	d.writeConf(conf)
	for attempt := 0; ; attempt++ {
		d.port = freeUDPPort(t)
		err := d.start()
		if err == nil {
			break
		}
		if attempt == 4 {
			t.Fatalf("dnsmasq: %v", err)
		}
	}
	t.Cleanup(d.stop)
	return d
}

func (d *dnsServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", d.port) }

// Resolver asks this server only.
func (d *dnsServer) Resolver() *net.Resolver {
	addr := d.Addr()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, network, addr)
	}}
}

func (d *dnsServer) writeHosts(hosts string) {
	d.t.Helper()
	if err := os.WriteFile(filepath.Join(d.dir, "hosts"), []byte(hosts), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

func (d *dnsServer) writeConf(conf string) {
	d.t.Helper()
	conf = "host-record=ready.pg.test,127.0.0.1\n" + conf // see start
	if err := os.WriteFile(filepath.Join(d.dir, "dnsmasq.conf"), []byte(conf), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// SetHosts replaces the A records and makes dnsmasq reload them (SIGHUP).
func (d *dnsServer) SetHosts(hosts string) {
	d.t.Helper()
	d.writeHosts(hosts)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		d.t.Fatal(err)
	}
}

// SetConf replaces the SRV and host records: dnsmasq restarts on its port.
func (d *dnsServer) SetConf(conf string) {
	d.t.Helper()
	d.writeConf(conf)
	d.stop()
	var err error
	for range 50 { // the port was just released: retry a bind that races it
		if err = d.start(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("restarting dnsmasq: %v", err)
}

func (d *dnsServer) start() error {
	cmd := exec.Command("dnsmasq", "--keep-in-foreground", "--conf-file="+filepath.Join(d.dir, "dnsmasq.conf"),
		"--port="+fmt.Sprint(d.port), "--listen-address=127.0.0.1", "--bind-interfaces", "--interface=lo",
		"--no-resolv", "--no-hosts", "--no-poll", "--addn-hosts="+filepath.Join(d.dir, "hosts"),
		"--cache-size=0", "--local-ttl=0", "--user=root", "--pid-file=", "--log-facility=-", "--no-daemon")
	var out syncWriter
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	d.cmd, d.exited = cmd, exited
	// Ready when it answers for its readiness record; exited means the
	// port was taken.
	r := d.Resolver()
	for start := time.Now(); time.Since(start) < time.Minute; time.Sleep(10 * time.Millisecond) {
		select {
		case <-exited:
			return fmt.Errorf("dnsmasq exited: %s", out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := r.LookupHost(ctx, "ready.pg.test")
		cancel()
		if err == nil {
			return nil
		}
	}
	_ = cmd.Process.Kill()
	<-exited
	return fmt.Errorf("dnsmasq did not answer within a minute: %s", out.String())
}

func (d *dnsServer) stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
	d.cmd = nil
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// forwarder relays TCP from listen (an address of the test's choosing,
// such as 127.0.0.3:P) to target: with one per node, A records can name
// the nodes by address, since the sandbox's servers all listen on
// 127.0.0.1 at different ports and an A record carries no port.
type forwarder struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newForwarder(listen, target string) (*forwarder, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	f := &forwarder{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

func (f *forwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.serve(c)
	}
}

func (f *forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *forwarder) serve(c net.Conn) {
	defer f.wg.Done()
	s, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Close()
		return
	}
	if !f.track(c, s) {
		c.Close()
		s.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(s, c)
	go pipe(c, s)
	<-done
	<-done
	f.mu.Lock()
	delete(f.conns, c)
	delete(f.conns, s)
	f.mu.Unlock()
}

func (f *forwarder) Close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// forwarders starts one forwarder per target on ips at one common port
// (A records give addresses only: every member has the DSN's port).
func forwarders(t *testing.T, ips []string, targets []string) int {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		probe, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := probe.Addr().(*net.TCPAddr).Port
		probe.Close()
		var fs []*forwarder
		for i, ip := range ips {
			f, err := newForwarder(fmt.Sprintf("%s:%d", ip, port), targets[i])
			if err != nil {
				break
			}
			fs = append(fs, f)
		}
		if len(fs) == len(ips) {
			t.Cleanup(func() {
				for _, f := range fs {
					f.Close()
				}
			})
			return port
		}
		for _, f := range fs {
			f.Close()
		}
	}
	t.Fatal("no port free on every forwarder address")
	return 0
}
