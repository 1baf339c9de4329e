package pgreplica

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// discoveryDSNs are the rows below, which also seed FuzzParseConfig.
var discoveryDSNs = []struct {
	dsn      string
	dns, srv []string
	interval time.Duration // 0: the default
	resolver bool          // a Resolver is set (discovery_dns_server)
	err      string        // the error must name this, and never the value
}{
	{dsn: "postgres://app:pw@pg.ns.svc:5432/shop?discovery=dns", dns: []string{"pg.ns.svc:5432"}},
	{dsn: "postgres://app:pw@a:5433,b/shop?discovery=dns&discovery_interval=2s", dns: []string{"a:5433", "b:5432"}, interval: 2 * time.Second},
	{dsn: "host=pg-headless port=6432 dbname=shop discovery=dns discovery_dns_server=127.0.0.1:5353", dns: []string{"pg-headless:6432"}, resolver: true},
	{dsn: "postgres://app@db.example.com/shop?discovery=srv", srv: []string{"db.example.com"}},
	{dsn: "host=db1.example.com,db2.example.com dbname=shop discovery=srv discovery_interval=30s", srv: []string{"db1.example.com", "db2.example.com"}, interval: 30 * time.Second},
	{dsn: "postgres://app@p,r/shop?discovery_interval=500ms", interval: 500 * time.Millisecond},
	{dsn: "postgres://app@[::1]:5432/shop?discovery=dns", dns: []string{"[::1]:5432"}},
	{dsn: "postgres://app@a/shop?discovery=consulsecret", err: "discovery must be dns or srv"},
	{dsn: "postgres://app@a/shop?discovery=", err: "discovery must be dns or srv"},
	{dsn: "postgres://app@a/shop?discovery_interval=5ms", err: "discovery_interval must be a duration of at least 10ms"},
	{dsn: "host=a dbname=d discovery_interval=soonsecret", err: "discovery_interval must be a duration"},
	{dsn: "postgres://app@a/shop?discovery_dns_server=10.0.0.10secret", err: "discovery_dns_server must be host:port"},
	{dsn: "postgres://app@a/shop?discovery_dns_server=10.0.0.10:", err: "discovery_dns_server must be host:port"},
	{dsn: "postgres:///shop?host=/var/run/postgresql&discovery=dns", err: "discovery=dns needs host names"},
	{dsn: "host=/tmp dbname=d discovery=srv", err: "discovery=srv needs host names"},
	{dsn: "postgres://app@a/shop?discovery_intervl=1s", err: `unknown pgreplica key "discovery_intervl"`},
}

func TestParseConfigDiscoveryKeys(t *testing.T) {
	for _, c := range discoveryDSNs {
		cfg, err := ParseConfig(c.dsn)
		if c.err != "" {
			if !errors.Is(err, ErrInvalidDSN) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err = %v, want ErrInvalidDSN naming %q", c.dsn, err, c.err)
			} else if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "/var/run") {
				t.Errorf("%s: the error shows the value: %v", c.dsn, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.dsn, err)
			continue
		}
		if !slices.Equal(cfg.DNSNames, c.dns) || !slices.Equal(cfg.SRVNames, c.srv) {
			t.Errorf("%s: DNSNames %q SRVNames %q, want %q %q", c.dsn, cfg.DNSNames, cfg.SRVNames, c.dns, c.srv)
		}
		if cfg.DiscoveryInterval != c.interval {
			t.Errorf("%s: DiscoveryInterval %v, want %v", c.dsn, cfg.DiscoveryInterval, c.interval)
		}
		if (cfg.Resolver != nil) != c.resolver {
			t.Errorf("%s: Resolver set = %v, want %v", c.dsn, cfg.Resolver != nil, c.resolver)
		}
		// pgreplica's keys never reach the server as runtime parameters.
		for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
			for k := range pc.ConnConfig.RuntimeParams {
				if strings.HasPrefix(k, "discovery") {
					t.Errorf("%s: %s reaches the server", c.dsn, k)
				}
			}
		}
	}
}

func TestConfigDiscoveryFields(t *testing.T) {
	primary, err := pgxpool.ParseConfig("postgres://app@a/shop")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		cfg  Config
		want string // "" : valid
	}{
		{Config{Primary: primary, DNSNames: []string{"pg.svc", "pg2.svc:6432"}}, ""},
		{Config{Primary: primary, SRVNames: []string{"db.example.com"}, DiscoveryInterval: time.Second}, ""},
		{Config{Primary: primary, DNSNames: []string{""}}, "DNSNames[0] (discovery=dns)"},
		{Config{Primary: primary, DNSNames: []string{"ok", "pg.svc:port"}}, "DNSNames[1] (discovery=dns): its port"},
		{Config{Primary: primary, DNSNames: []string{"/var/run/postgresql"}}, "DNSNames[0]"},
		{Config{Primary: primary, SRVNames: []string{"db.example.com:5432"}}, "SRVNames[0] (discovery=srv)"},
		{Config{Primary: primary, DiscoveryInterval: time.Millisecond}, "DiscoveryInterval (discovery_interval)"},
	}
	for _, c := range cases {
		got, err := c.cfg.resolve()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.cfg, err)
		case c.want == "" && got.DiscoveryInterval <= 0:
			t.Errorf("%+v: DiscoveryInterval %v after resolve", c.cfg, got.DiscoveryInterval)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: err = %v, want one naming %q", c.cfg, err, c.want)
		}
	}
	if got, _ := (Config{Primary: primary}).resolve(); got.DiscoveryInterval != DefaultDiscoveryInterval {
		t.Errorf("default DiscoveryInterval %v, want %v", got.DiscoveryInterval, DefaultDiscoveryInterval)
	}
}

// The DSN examples of docs/operations.md's discovery section parse as the
// text around them says.
func TestOperationsDiscoveryDSNs(t *testing.T) {
	doc, err := os.ReadFile("docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Running with Patroni, Kubernetes and DNS")
	if !ok {
		t.Fatal("no discovery section in docs/operations.md")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	want := map[string]func(*Config) bool{
		"postgres://app:secret@pg-headless.shop.svc.cluster.local:5432/shop?discovery=dns": func(c *Config) bool {
			return slices.Equal(c.DNSNames, []string{"pg-headless.shop.svc.cluster.local:5432"})
		},
		"postgres://app:secret@db.example.com/shop?discovery=srv&sslmode=verify-full&sslrootcert=/etc/pgreplica/root.crt": nil, // needs the file: checked below without it
		"host=pg.internal port=5432 dbname=shop user=app discovery=dns discovery_dns_server=10.0.0.10:53 discovery_interval=30s": func(c *Config) bool {
			return slices.Equal(c.DNSNames, []string{"pg.internal:5432"}) && c.Resolver != nil && c.DiscoveryInterval == 30*time.Second
		},
	}
	for dsn, check := range want {
		if !strings.Contains(section, "\n"+dsn+"\n") {
			t.Errorf("docs/operations.md no longer shows %s", dsn)
			continue
		}
		if check == nil {
			dsn = strings.Replace(dsn, "&sslmode=verify-full&sslrootcert=/etc/pgreplica/root.crt", "", 1)
			check = func(c *Config) bool { return slices.Equal(c.SRVNames, []string{"db.example.com"}) }
		}
		cfg, err := ParseConfig(dsn)
		if err != nil {
			t.Errorf("%s: %v", dsn, err)
		} else if !check(cfg) {
			t.Errorf("%s: DNSNames %q SRVNames %q interval %v", dsn, cfg.DNSNames, cfg.SRVNames, cfg.DiscoveryInterval)
		}
	}
}
