package pgreplica

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// membership keeps the Connector's members what discovery reports (see
// Discoverer): it asks every DiscoveryInterval, adds a node per new member
// and drains the nodes whose member is gone. It changes who the members
// are, never their roles: the monitor's probes decide those, and a new
// node serves no read before its first probe answered.
//
// Guarantees it touches: a write goes only to the node the monitor found
// writable (membership never makes a node primary, and never removes the
// primary while it is one); a read goes only to a probed, usable replica
// (a new node starts down); a removed node's statements in flight finish
// (its pool closes when the last is released) and its new ones go
// elsewhere, as from a replica marked down.
type membership struct {
	c        *Connector
	disc     []Discoverer
	dns      *dnsDiscoverer // nil without DNSNames and SRVNames
	interval time.Duration
	timeout  time.Duration // one discovery
	ctx      context.Context
	cancel   context.CancelFunc // at stop: ends a discovery under way
	done     chan struct{}      // closed when run returns; nil if never started

	// Owned by run (and by first, before run starts).
	draining    []*node // removed, closing once idle: their indexes are not reused yet
	failing     bool    // the last discovery failed (logged once per streak)
	keptPrimary *node   // a primary discovery no longer reports (logged once)
	overflow    bool    // more members than maxNodes (logged once)
}

// defaultDiscoveryTimeout bounds one discovery when the DSN sets no
// connect_timeout: long enough for a DNS server's retry, short enough that
// NewConnector (and sql.Open's first use) is not held up long.
const defaultDiscoveryTimeout = 5 * time.Second

func newMembership(c *Connector) *membership {
	cfg := &c.cfg
	m := &membership{c: c, interval: cfg.DiscoveryInterval, timeout: defaultDiscoveryTimeout}
	if t := cfg.Primary.ConnConfig.ConnectTimeout; t > 0 {
		m.timeout = t
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if len(cfg.DNSNames)+len(cfg.SRVNames) > 0 {
		m.dns = newDNSDiscoverer(cfg)
		m.disc = append(m.disc, m.dns)
	}
	if cfg.Discoverer != nil {
		m.disc = append(m.disc, cfg.Discoverer)
	}
	return m
}

// first asks discovery once, for NewConnector, and returns a node per
// member; nil when discovery failed or found none: the DSN's hosts are
// then the members until it answers. These first nodes are trusted as the
// DSN's are (up, standbys) until the first probe round, which finds the
// primary; none is assumed to be it.
func (m *membership) first() []*node {
	ms, err := m.discover()
	if err != nil || len(ms) == 0 {
		m.noteFailure(err)
		return nil
	}
	var nodes []*node
	for i, mb := range ms {
		if i+1 >= maxNodes {
			m.noteOverflow(len(ms))
			break
		}
		if n := m.newMemberNode(i+1, mb); n != nil {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

func (m *membership) start() {
	if m == nil {
		return
	}
	m.done = make(chan struct{})
	go m.run()
}

func (m *membership) stop() {
	if m == nil {
		return
	}
	m.cancel()
	if m.done != nil {
		<-m.done
	}
}

func (m *membership) run() {
	defer close(m.done)
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		ms, err := m.discover()
		if m.ctx.Err() != nil {
			return
		}
		if err != nil || len(ms) == 0 {
			m.noteFailure(err)
			continue
		}
		if m.failing {
			m.failing = false
			m.c.log.Info("pgreplica: discovery answers again", "members", len(ms))
		}
		m.update(ms)
	}
}

// discover asks every discoverer, bounded by the timeout, and merges their
// members: an address reported twice is one member (the first report's).
// Any discoverer failing fails the whole answer: the members it would have
// reported must not look gone.
func (m *membership) discover() ([]Member, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	defer cancel()
	defPort := m.c.cfg.Primary.ConnConfig.Port
	seen := map[string]bool{}
	var all []Member
	for _, d := range m.disc {
		ms, err := safeDiscover(ctx, d)
		if err != nil {
			return nil, err
		}
		for _, mb := range ms {
			if mb.Host == "" {
				continue
			}
			if mb.Port == 0 {
				mb.Port = defPort
			}
			if mb.Source == "" {
				mb.Source = SourceCustom
			}
			if a := mb.addr(); !seen[a] {
				seen[a] = true
				all = append(all, mb)
			}
		}
	}
	return all, nil
}

// safeDiscover runs one Discoverer; a panic in a custom one is its error,
// not the end of the process.
func safeDiscover(ctx context.Context, d Discoverer) (ms []Member, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%T panicked: %v", d, r)
		}
	}()
	return d.Discover(ctx)
}

// update makes the members those of ms: new ones join (down until their
// first probe answers), missing ones are drained. The primary stays while
// it is the primary, reported or not: writes never lose their node to a
// discovery that missed it, and once the monitor follows another primary
// the next update drains it.
func (m *membership) update(ms []Member) {
	c := m.c
	m.prune()
	cur := c.topo.Load()
	want := make(map[string]bool, len(ms))
	for _, mb := range ms {
		want[mb.addr()] = true
	}
	var used [maxNodes]bool
	have := map[string]bool{}
	for _, n := range cur.nodes {
		used[n.index], have[n.addr] = true, true
	}
	for _, n := range m.draining {
		used[n.index] = true
	}
	var added []*node
	for _, mb := range ms {
		if have[mb.addr()] {
			continue
		}
		i := 1 // 0 is the DSN's first host only
		for i < maxNodes && used[i] {
			i++
		}
		if i == maxNodes {
			m.noteOverflow(len(ms))
			break
		}
		if n := m.newMemberNode(i, mb); n != nil {
			n.setDown() // no reads until its first probe answers
			used[i] = true
			added = append(added, n)
		}
	}
	gone := false
	for _, n := range cur.nodes {
		gone = gone || !want[n.addr] && n != cur.primary
	}
	if p := cur.primary; p != nil && !want[p.addr] && m.keptPrimary != p {
		m.keptPrimary = p
		c.log.Warn("pgreplica: discovery no longer reports the primary; it stays a member while it is the primary", "node", p.addr)
	}
	if len(added) == 0 && !gone {
		return
	}
	var removed []*node
	c.changeTopology(func(t *topology) *topology {
		removed = removed[:0]
		nodes := make([]*node, 0, len(t.nodes)+len(added))
		for _, n := range t.nodes {
			if want[n.addr] || n == t.primary {
				nodes = append(nodes, n)
			} else {
				removed = append(removed, n)
			}
		}
		return newTopology(t.primary, append(nodes, added...))
	})
	for _, n := range added {
		c.log.Info("pgreplica: member added", "node", n.addr, "source", string(n.source))
	}
	for _, n := range removed {
		// Like a replica marked down: new reads go elsewhere, a read
		// waiting for one of its connections moves on, and statements
		// running on it finish; the pool closes when the last is released.
		n.setDown()
		n.closeWhenIdle()
		m.draining = append(m.draining, n)
		c.log.Info("pgreplica: member removed; draining", "node", n.addr, "source", string(n.source))
	}
	if len(added) > 0 {
		c.mon.kick() // probe the new members now, not at the next tick
	}
}

// prune forgets drained nodes whose last statement finished: their
// indexes may serve new members.
func (m *membership) prune() {
	kept := m.draining[:0]
	for _, n := range m.draining {
		if n.inFlight.Load() > 0 {
			kept = append(kept, n)
		}
	}
	clear(m.draining[len(kept):])
	m.draining = kept
}

// newMemberNode builds the node of a discovered member: the Primary's pool
// configuration with the member's host and port, sized as a replica's.
func (m *membership) newMemberNode(index int, mb Member) *node {
	n, err := newNode(index, m.nodeConfig(mb), roleSizes{m.c.cfg.poolSize(false), m.c.cfg.poolSize(true)})
	if err != nil {
		m.c.log.Warn("pgreplica: discovered member left out", "node", mb.addr(), "error", m.safeText(err))
		return nil
	}
	n.source = mb.Source
	return n
}

func (m *membership) nodeConfig(mb Member) *pgxpool.Config {
	pc := m.c.cfg.Primary.Copy() // copies the TLS configurations and fallbacks too
	pc.MaxConns = m.c.cfg.poolSize(false)
	name := mb.TLSServerName
	if name == "" {
		name = mb.Host
	}
	cc := pc.ConnConfig
	cc.Host, cc.Port = mb.Host, mb.Port
	if m.dns != nil {
		cc.LookupFunc = m.dns.lookupHost
	}
	if cc.TLSConfig != nil {
		cc.TLSConfig.ServerName = name
	}
	for _, fb := range cc.Fallbacks { // sslmode=prefer's plain retry, for one
		fb.Host, fb.Port = mb.Host, mb.Port
		if fb.TLSConfig != nil {
			fb.TLSConfig.ServerName = name
		}
	}
	return pc
}

func (m *membership) noteFailure(err error) {
	if m.failing {
		return
	}
	m.failing = true
	if err == nil {
		err = errors.New("no members")
	}
	m.c.log.Warn("pgreplica: discovery failed; the members stay as they are", "error", m.safeText(err))
}

func (m *membership) noteOverflow(members int) {
	if !m.overflow {
		m.overflow = true
		m.c.log.Error("pgreplica: discovery reports more members than pgreplica supports; the rest are left out", "members", members, "max", maxNodes-1)
	}
}

// urlCredentials matches the user and password of a URL.
var urlCredentials = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@`)

// safeText is an error's text for the log without a URL's credentials or
// the DSN's password: a custom Discoverer's errors may quote its endpoint.
func (m *membership) safeText(err error) string {
	msg := urlCredentials.ReplaceAllString(err.Error(), "${1}xxxxx@")
	return redact(msg, m.c.cfg.Primary.ConnConfig.Password)
}
