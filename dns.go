package pgreplica

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
)

// dnsDiscoverer follows Config.DNSNames and Config.SRVNames: each address a
// name resolves to is a member (a Kubernetes headless Service lists one
// per ready pod), and each SRV target of _postgresql._tcp.<name> is a
// member at the port the record gives.
type dnsDiscoverer struct {
	resolver *net.Resolver
	names    []dnsName
	srv      []string

	// targets holds the addresses of the SRV targets of the last answer.
	// Connecting to a target uses them (lookupHost), so that a DNS server
	// restarting or losing a query does not make a member unreachable:
	// members change only when discovery answers again.
	mu      sync.Mutex
	targets map[string][]string
}

type dnsName struct {
	host string
	port uint16 // 0: the DSN's
}

func newDNSDiscoverer(cfg *Config) *dnsDiscoverer {
	d := &dnsDiscoverer{resolver: cfg.Resolver, srv: cfg.SRVNames}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	for _, s := range cfg.DNSNames {
		host, port, _ := splitDNSName(s) // checked by resolve
		d.names = append(d.names, dnsName{host: host, port: port})
	}
	return d
}

// Discover resolves every name; any lookup that fails fails the whole
// answer, so that a name the DNS server could not answer for a moment does
// not look like a name with no members.
func (d *dnsDiscoverer) Discover(ctx context.Context) ([]Member, error) {
	var ms []Member
	for _, n := range d.names {
		addrs, err := d.resolver.LookupHost(ctx, n.host)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", n.host, err)
		}
		for _, a := range addrs {
			ms = append(ms, Member{Host: a, Port: n.port, Source: SourceDNS, TLSServerName: n.host})
		}
	}
	targets := map[string][]string{}
	for _, name := range d.srv {
		_, recs, err := d.resolver.LookupSRV(ctx, srvService, srvProto, name)
		if err != nil {
			return nil, fmt.Errorf("looking up SRV _%s._%s.%s: %w", srvService, srvProto, name, err)
		}
		for _, r := range recs {
			target := strings.TrimSuffix(r.Target, ".")
			if _, seen := targets[target]; !seen && net.ParseIP(target) == nil {
				addrs, err := d.resolver.LookupHost(ctx, target)
				if err != nil {
					return nil, fmt.Errorf("resolving SRV target %s of %s: %w", target, name, err)
				}
				targets[target] = addrs
			}
			ms = append(ms, Member{Host: target, Port: r.Port, Source: SourceDNS})
		}
	}
	if len(d.srv) > 0 {
		d.mu.Lock()
		d.targets = targets
		d.mu.Unlock()
	}
	return ms, nil
}

// lookupHost is the LookupFunc of the nodes discovery added: an SRV
// target's addresses from the last answer, any other name resolved now.
func (d *dnsDiscoverer) lookupHost(ctx context.Context, host string) ([]string, error) {
	d.mu.Lock()
	addrs, ok := d.targets[host]
	d.mu.Unlock()
	if ok {
		return addrs, nil
	}
	return d.resolver.LookupHost(ctx, host)
}
