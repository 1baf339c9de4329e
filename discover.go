package pgreplica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Discoverer tells pgreplica which servers belong to the cluster: a control
// plane (Patroni, Consul, etcd, a cloud API, DNS) knows when members come
// and go long after the DSN was written. Discover returns every member as
// the control plane sees it now; pgreplica calls it at
// Config.DiscoveryInterval, from one goroutine at a time, with a context
// that ends when the call should give up or the Connector closes.
//
// Discovery says only who the members are. Which one is the primary is
// always asked of the servers themselves (the monitor's probe): a member a
// control plane calls the leader gets no write until it answers as
// writable.
//
// An error, or an empty list, leaves the membership as it was: a control
// plane that cannot be reached for a while does not empty the cluster.
type Discoverer interface {
	Discover(ctx context.Context) ([]Member, error)
}

// DiscoverFunc adapts a function to the Discoverer interface.
type DiscoverFunc func(ctx context.Context) ([]Member, error)

// Discover calls f(ctx).
func (f DiscoverFunc) Discover(ctx context.Context) ([]Member, error) { return f(ctx) }

// Member is one server a Discoverer reports. Members are told apart by
// Host and Port: the same pair twice is one node.
type Member struct {
	// Host is a host name or an IP address; Port 0 means the port of the
	// DSN's first host (5432 unless it says otherwise).
	Host string
	Port uint16
	// Source says where the member came from; Status and the health report
	// show it. Left empty, it is SourceCustom.
	Source Source
	// TLSServerName, when set, is the name the server's certificate is
	// checked against (sslmode=verify-full) instead of Host: an address
	// found by resolving a name is verified as that name.
	TLSServerName string
}

// addr is the member's host:port, as a node's address is written.
func (m Member) addr() string { return net.JoinHostPort(m.Host, strconv.Itoa(int(m.Port))) }

// Source says where a node came from.
type Source string

const (
	SourceDSN     Source = "dsn"     // a host of the DSN (or of Config.Primary and Config.Replicas)
	SourceDNS     Source = "dns"     // an address of a name in Config.DNSNames, or an SRV target of Config.SRVNames
	SourcePatroni Source = "patroni" // a member of a Patroni cluster's REST API
	SourceCustom  Source = "custom"  // Config.Discoverer, when its Member left Source empty
)

// DefaultDiscoveryInterval is how often the members are discovered again
// when Config.DiscoveryInterval is zero (discovery_interval): Kubernetes
// and Patroni replace a member in tens of seconds, and a lookup every 10 s
// costs the DNS server or control plane next to nothing.
const DefaultDiscoveryInterval = 10 * time.Second

// minDiscoveryInterval is the shortest discovery interval accepted.
const minDiscoveryInterval = 10 * time.Millisecond

// srvService is the SRV service and protocol looked up for Config.SRVNames:
// _postgresql._tcp.<name>.
const (
	srvService = "postgresql"
	srvProto   = "tcp"
)

// discovering says whether the Config asks for any discovery: without it,
// the members are the DSN's hosts for the Connector's life.
func (cfg *Config) discovering() bool {
	return cfg.Discoverer != nil || len(cfg.DNSNames) > 0 || len(cfg.SRVNames) > 0
}

// resolveDiscovery checks the discovery fields and fills in their
// defaults; its errors name the field and the DSN key, never the value (a
// host in a malformed DSN may be a piece of the password).
func (cfg *Config) resolveDiscovery() error {
	switch {
	case cfg.DiscoveryInterval == 0:
		cfg.DiscoveryInterval = DefaultDiscoveryInterval
	case cfg.DiscoveryInterval < minDiscoveryInterval:
		return errors.New("DiscoveryInterval (discovery_interval) must be at least 10ms, or 0 for the default")
	}
	for i, name := range cfg.DNSNames {
		if _, _, err := splitDNSName(name); err != nil {
			return fmt.Errorf("DNSNames[%d] (discovery=dns): %v", i, err)
		}
	}
	for i, name := range cfg.SRVNames {
		if name == "" || strings.ContainsAny(name, ":/ ") {
			return fmt.Errorf("SRVNames[%d] (discovery=srv): must be a DNS name, without a port", i)
		}
	}
	return nil
}

// splitDNSName reads a DNSNames entry, "name" or "name:port" (port 0 when
// none is given).
func splitDNSName(s string) (string, uint16, error) {
	host, port := s, uint16(0)
	if strings.Contains(s, ":") && !strings.HasSuffix(s, "]") {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return "", 0, errors.New(`must be "name" or "name:port"`)
		}
		v, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return "", 0, errors.New("its port must be a number from 0 to 65535")
		}
		host, port = h, uint16(v)
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return "", 0, errors.New("must be a DNS name (a path or an empty name is no DNS name)")
	}
	return host, port, nil
}

// dnsServerResolver returns a resolver that sends every query to addr
// (discovery_dns_server), over UDP or TCP as Go's resolver asks. A query's
// connection closes when its context ends: Go's resolver waits for a lost
// UDP answer until its own timeout otherwise, and that wait would outlive
// Connector.Close. The connection is returned as dialed, not wrapped: Go's
// resolver frames a query for UDP only on a net.PacketConn (a wrapper that
// hid it sent TCP framing over UDP, which no server answers).
func dnsServerResolver(addr string) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The resolver cancels ctx when its exchange returns, so this
			// runs (and is gone) then at the latest; closing twice is harmless.
			context.AfterFunc(ctx, func() { c.Close() })
			return c, nil
		},
	}
}

// discoveryFromHosts makes the DSN's hosts the names discovery follows:
// discovery=dns resolves each host (at its port) to one node per address,
// discovery=srv looks up each host's SRV records.
func (cfg *Config) discoveryFromHosts(kind string) error {
	for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
		cc := pc.ConnConfig
		if cc.Host == "" || strings.HasPrefix(cc.Host, "/") {
			return dsnError("discovery=%s needs host names in the DSN, not a socket directory", kind)
		}
		if kind == "srv" {
			cfg.SRVNames = append(cfg.SRVNames, cc.Host)
		} else {
			cfg.DNSNames = append(cfg.DNSNames, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))))
		}
	}
	return nil
}
