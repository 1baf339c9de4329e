package pgreplica

import (
	"errors"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

func TestParseConfigURL(t *testing.T) {
	cfg, err := ParseConfig("postgres://app:secret@primary:5432,replica-1:5433,replica-2/shop?sslmode=disable&application_name=svc&replica_policy=round_robin&primary_max_conns=7&replica_max_conns=30&monitor_interval=250ms&max_replica_lag=2s&fallback_to_primary=false")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Replicas) != 2 {
		t.Fatalf("replicas = %d, want 2", len(cfg.Replicas))
	}
	nodes := append([]string{}, addrOf(cfg.Primary), addrOf(cfg.Replicas[0]), addrOf(cfg.Replicas[1]))
	if strings.Join(nodes, " ") != "primary:5432 replica-1:5433 replica-2:5432" {
		t.Fatalf("nodes = %v", nodes)
	}
	for _, pc := range append(cfg.Replicas, cfg.Primary) {
		cc := pc.ConnConfig
		if cc.Database != "shop" || cc.User != "app" || cc.Password != "secret" || cc.RuntimeParams["application_name"] != "svc" {
			t.Fatalf("node %s lost a setting: %+v", cc.Host, cc.RuntimeParams)
		}
		for k := range cc.RuntimeParams {
			if ownKeys[k] {
				t.Fatalf("pgreplica key %q reached pgx", k)
			}
		}
	}
	if cfg.PrimaryMaxConns != 7 || cfg.ReplicaMaxConns != 30 {
		t.Fatalf("max conns = %d/%d", cfg.PrimaryMaxConns, cfg.ReplicaMaxConns)
	}
	if _, ok := cfg.Policy.(*roundRobinPolicy); !ok {
		t.Fatalf("policy = %T", cfg.Policy)
	}
	if cfg.MonitorInterval != 250*time.Millisecond || cfg.MaxReplicaLag != 2*time.Second || !cfg.DisableFallback {
		t.Fatalf("cfg = %+v", cfg)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig("postgres://app@db1,db2/shop")
	if err != nil {
		t.Fatal(err)
	}
	// Keys left out leave their fields zero, which NewConnector reads as
	// the defaults.
	if cfg.MaxConns != 0 || cfg.PrimaryMaxConns != 0 || cfg.ReplicaMaxConns != 0 || cfg.Policy != nil ||
		cfg.MonitorInterval != 0 || cfg.MaxReplicaLag != 0 || cfg.DisableFallback || cfg.HedgeAfter != HedgeAuto {
		t.Fatalf("a key left out set its field: %+v", cfg)
	}
	r, err := cfg.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.Primary.MaxConns != DefaultPrimaryMaxConns || r.Replicas[0].MaxConns != DefaultReplicaMaxConns ||
		r.MonitorInterval != DefaultMonitorInterval || r.MaxReplicaLag != DefaultMaxReplicaLag || r.DisableFallback || r.HedgeAfter != HedgeAuto {
		t.Fatalf("defaults not applied: %+v", r)
	}
	one, err := ParseConfig("postgres://app@db1/shop")
	if err != nil || len(one.Replicas) != 0 {
		t.Fatalf("single host: %v, %d replicas", err, len(one.Replicas))
	}
	off, err := ParseConfig("postgres://app@db1,db2/shop?max_replica_lag=off")
	if err != nil || off.MaxReplicaLag != MaxReplicaLagOff {
		t.Fatalf("max_replica_lag=off: %v %v", err, off)
	}
}

func TestParseConfigPrimaryWait(t *testing.T) {
	for _, c := range []struct {
		dsn        string
		want, used time.Duration
	}{
		{"postgres://u@a,b/d", 0, DefaultPrimaryWait},
		{"postgres://u@a,b/d?primary_wait=off", PrimaryWaitOff, PrimaryWaitOff},
		{"postgres://u@a,b/d?primary_wait=2s", 2 * time.Second, 2 * time.Second},
		{"host=a,b dbname=d primary_wait=250ms", 250 * time.Millisecond, 250 * time.Millisecond},
	} {
		cfg, err := ParseConfig(c.dsn)
		if err != nil {
			t.Fatalf("%s: %v", c.dsn, err)
		}
		if cfg.PrimaryWait != c.want {
			t.Errorf("%s: PrimaryWait = %v, want %v", c.dsn, cfg.PrimaryWait, c.want)
		}
		r, err := cfg.resolve()
		if err != nil {
			t.Fatalf("%s: resolve: %v", c.dsn, err)
		}
		if r.PrimaryWait != c.used {
			t.Errorf("%s: resolved PrimaryWait = %v, want %v", c.dsn, r.PrimaryWait, c.used)
		}
		for _, pc := range append(cfg.Replicas, cfg.Primary) {
			if _, ok := pc.ConnConfig.RuntimeParams["primary_wait"]; ok {
				t.Fatalf("%s: primary_wait reached pgx", c.dsn)
			}
		}
	}
}

func TestParseConfigHedgeAfter(t *testing.T) {
	for _, c := range []struct {
		dsn  string
		want time.Duration
	}{
		{"postgres://u@a,b/d", HedgeAuto},
		{"postgres://u@a,b/d?hedge_after=auto", HedgeAuto},
		{"postgres://u@a,b/d?hedge_after=off", HedgeOff},
		{"postgres://u@a,b/d?hedge_after=7ms", 7 * time.Millisecond},
		{"host=a,b dbname=d hedge_after=250us", 250 * time.Microsecond},
	} {
		cfg, err := ParseConfig(c.dsn)
		if err != nil {
			t.Fatalf("%s: %v", c.dsn, err)
		}
		if cfg.HedgeAfter != c.want {
			t.Errorf("%s: HedgeAfter = %v, want %v", c.dsn, cfg.HedgeAfter, c.want)
		}
		for _, pc := range append(cfg.Replicas, cfg.Primary) {
			if _, ok := pc.ConnConfig.RuntimeParams["hedge_after"]; ok {
				t.Fatalf("%s: hedge_after reached pgx", c.dsn)
			}
		}
	}
}

func TestParseConfigNearest(t *testing.T) {
	cases := []struct {
		dsn  string
		want time.Duration
	}{
		{"postgres://u@a,b,c/d?replica_policy=nearest", 15 * time.Millisecond},
		{"postgres://u@a,b,c/d?replica_policy=nearest&latency_window=5ms", 5 * time.Millisecond},
		{"postgres://u@a,b,c/d?latency_window=40ms", 40 * time.Millisecond}, // implies nearest, as replica_weights implies weighted
		{"postgres://u@a,b,c/d?replica_policy=nearest&latency_window=0s", 0},
		{"host=a,b,c dbname=d replica_policy=nearest latency_window=1.5ms", 1500 * time.Microsecond},
	}
	for _, c := range cases {
		cfg, err := ParseConfig(c.dsn)
		if err != nil {
			t.Errorf("%s: %v", c.dsn, err)
			continue
		}
		p, ok := cfg.Policy.(nearestPolicy)
		if !ok || p.window != c.want {
			t.Errorf("%s: policy %#v, want Nearest(%v)", c.dsn, cfg.Policy, c.want)
		}
		for _, pc := range append(cfg.Replicas, cfg.Primary) {
			if _, ok := pc.ConnConfig.RuntimeParams["latency_window"]; ok {
				t.Errorf("%s: latency_window reached pgx", c.dsn)
			}
		}
	}
}

func TestParseConfigKeywordValue(t *testing.T) {
	cfg, err := ParseConfig(`host=a,b,c port=5432,5433,5434 dbname=shop user=app password='it''s' replica_weights=1,2,3 sslmode=disable`)
	if err == nil {
		t.Fatalf("a doubled quote is not libpq's escape; got %+v", cfg)
	}
	cfg, err = ParseConfig(`host=a,b,c port=5432,5433,5434 dbname=shop user=app password='it\'s a \\ secret' replica_weights=1,3 sslmode=disable`)
	if err != nil {
		t.Fatal(err)
	}
	if got := addrOf(cfg.Replicas[1]); got != "c:5434" {
		t.Fatalf("third node = %s", got)
	}
	if cfg.Replicas[0].ConnConfig.Password != `it's a \ secret` {
		t.Fatalf("password not preserved")
	}
	w, ok := cfg.Policy.(weightedPolicy)
	if !ok || len(w.weights) != 2 || w.weights[1] != 3 {
		t.Fatalf("policy = %#v", cfg.Policy)
	}
	same, err := ParseConfig("host=a,b port=6000 dbname=x")
	if err != nil || addrOf(same.Replicas[0]) != "b:6000" {
		t.Fatalf("one port for all hosts: %v", err)
	}
}

func TestParseConfigErrorsNameTheKeyNotTheValue(t *testing.T) {
	cases := []struct{ dsn, want string }{
		{"postgres://u@a,b/d?replica_policy=fastest", "replica_policy"},
		{"postgres://u@a,b/d?replica_polcy=random", `unknown pgreplica key "replica_polcy"`},
		{"postgres://u@a,b/d?primary_max_conns=0", "primary_max_conns"},
		{"postgres://u@a,b/d?replica_max_conns=many", "replica_max_conns"},
		{"postgres://u@a,b/d?monitor_interval=5", "monitor_interval"},
		{"postgres://u@a,b/d?max_replica_lag=-1s", "max_replica_lag"},
		{"postgres://u@a,b/d?fallback_to_primary=maybe", "fallback_to_primary"},
		{"postgres://u@a,b/d?fallback_max_share=0", "fallback_max_share must be a number above 0 and at most 1"},
		{"postgres://u@a,b/d?fallback_max_share=1.5", "fallback_max_share must be a number above 0 and at most 1"},
		{"postgres://u@a,b/d?fallback_max_share=NaN", "fallback_max_share must be a number above 0 and at most 1"},
		{"postgres://u@a,b,c/d?replica_weights=1", "replica_weights has 1 numbers for 2 replicas"},
		{"postgres://u@a,b/d?replica_weights=x", "replica_weights"},
		{"postgres://u@a,b/d?replica_policy=weighted", "needs replica_weights"},
		{"postgres://u@a,b/d?replica_policy=random&replica_weights=1", "needs replica_policy=weighted"},
		{"postgres://u@a,b/d?replica_policy=random&latency_window=5ms", "latency_window needs replica_policy=nearest"},
		{"postgres://u@a,b,c/d?replica_weights=1,2&latency_window=5ms", "latency_window needs replica_policy=nearest"},
		{"postgres://u@a,b/d?replica_policy=nearest&latency_window=15", "latency_window must be a duration"},
		{"postgres://u@a,b/d?replica_policy=nearest&latency_window=-1ms", "latency_window must be a duration"},
		{"host=a,b dbname=d latency_window=soon", "latency_window must be a duration"},
		{"postgres://u@a,b/d?latency_windw=5ms", `unknown pgreplica key "latency_windw"`},
		{"postgres://u@a,b/d?hedge_after=soon", "hedge_after must be auto, off or a positive duration"},
		{"postgres://u@a,b/d?hedge_after=0s", "hedge_after must be auto, off or a positive duration"},
		{"host=a,b dbname=d hedge_after=-5ms", "hedge_after must be auto, off or a positive duration"},
		{"postgres://u@a,b/d?hedge_afer=5ms", `unknown pgreplica key "hedge_afer"`},
		{"postgres://u@a,b/d?primary_wait=soon", "primary_wait must be a positive duration"},
		{"postgres://u@a,b/d?primary_wait=0s", "primary_wait must be a positive duration"},
		{"host=a,b dbname=d primary_wait=-1s", "primary_wait must be a positive duration"},
		{"postgres://u@a,b/d?replica_a-b=1", `unknown pgreplica key starting "replica_a"`},
		{"postgres://u@a,b/d?target_session_attrs=read-write", "target_session_attrs"},
		{"postgres://u@a,,b/d", "empty host"},
		{"host=a,b,c port=1,2 dbname=d", "port lists 2 ports for 3 hosts"},
		{"host=a dbname='unterminated", `unterminated quoted value for "dbname"`},
		{"postgres://u@a:notaport/d", "node 1 (the primary): invalid port"},
		{"postgres://u:pass@[::1/d", "node 1 (the primary): failed to parse as URL"},
		{"postgres://u@a,b:99999/d", "node 2 (replica 1)"},
		// pgx would take "#et@h1,h2/db" as a fragment and build one node.
		{"postgres://app:s3cr#et@h1,h2/db", "'#'"},
		{"postgres://app@h1,h2/db?application_name=a#b", "'#'"},
		{"postgres:///db?host=/tmp,r1,r2&port=1,2", "port lists 2 ports for 3 hosts"},
		{"postgres:///db?host=/tmp,,r2", "empty host"},
	}
	for _, c := range cases {
		_, err := ParseConfig(c.dsn)
		if !errors.Is(err, ErrInvalidDSN) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalidDSN mentioning %q", c.dsn, err, c.want)
		}
	}
}

// hostilePasswords are passwords with the characters that break naive
// DSN handling.
// Unix-socket directories are hosts like any other, in both forms, and
// host and port lists may sit in the URL's query (as libpq allows).
func TestParseConfigUnixSockets(t *testing.T) {
	cases := []struct {
		dsn  string
		want []string // host (and port) of each node, in DSN order
	}{
		{"host=/var/run/postgresql,replica-1 port=5432,5433 dbname=d", []string{"/var/run/postgresql 5432", "replica-1 5433"}},
		{"host=replica-0,/tmp/sock dbname=d", []string{"replica-0 5432", "/tmp/sock 5432"}},
		{"postgres:///db?host=/tmp", []string{"/tmp 5432"}},
		{"postgres://u:pw@/db?host=/var/run/postgresql,replica-1&port=6000,6001&sslmode=disable", []string{"/var/run/postgresql 6000", "replica-1 6001"}},
		{"postgres://u@/db?host=/a,/b,c&port=7000", []string{"/a 7000", "/b 7000", "c 7000"}},
	}
	for _, c := range cases {
		cfg, err := ParseConfig(c.dsn)
		if err != nil {
			t.Errorf("%s: %v", c.dsn, err)
			continue
		}
		var got []string
		for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
			got = append(got, pc.ConnConfig.Host+" "+strconv.Itoa(int(pc.ConnConfig.Port)))
			if strings.HasPrefix(pc.ConnConfig.Host, "/") && addrOf(pc) != pc.ConnConfig.Host {
				t.Errorf("%s: a socket node's addr is %q, want its directory", c.dsn, addrOf(pc))
			}
		}
		if strings.Join(got, ", ") != strings.Join(c.want, ", ") {
			t.Errorf("%s: nodes %v, want %v", c.dsn, got, c.want)
		}
	}
	cfg, err := ParseConfig("postgres://u:pw@/db?host=/s,r&port=1,2&application_name=svc")
	if err != nil {
		t.Fatal(err)
	}
	for _, pc := range append(cfg.Replicas, cfg.Primary) {
		if cc := pc.ConnConfig; cc.User != "u" || cc.Password != "pw" || cc.Database != "db" || cc.RuntimeParams["application_name"] != "svc" {
			t.Fatalf("node %s lost a setting: %+v", cc.Host, cc)
		}
	}
}

var hostilePasswords = []string{"p@ss:w/rd", "with space", "q'uote\\back", "per%cent&amp=x?y#z", "ÜnïcødeP@ss"}

func TestErrorsNeverContainThePassword(t *testing.T) {
	for _, pw := range hostilePasswords {
		esc := url.QueryEscape(pw)
		bad := []string{
			"postgres://app:" + url.PathEscape(pw) + "@a,b/d?replica_policy=nope",
			"postgres://app:" + url.PathEscape(pw) + "@a,b:99999/d",
			"postgres://app:" + pw + "@a:xx,b/d",
			"postgres://app:" + pw + "@a,b/d?connect_timeout=abc",
			"host=a,b user=app password=" + pw + " replica_max_conns=-1",
			"postgres://app:" + url.PathEscape(pw) + "@a,b/d?replica_policy=nearest&latency_window=" + esc,
			"host=a,b user=app password='" + strings.ReplaceAll(pw, "'", `\'`) + "' port=1,2,3",
			"host=a,b user=app password='" + strings.ReplaceAll(pw, "'", `\'`) + "' connect_timeout=abc",
		}
		for _, dsn := range bad {
			_, err := ParseConfig(dsn)
			if err == nil {
				t.Errorf("expected an error for a bad DSN")
				continue
			}
			msg := err.Error()
			for _, secret := range []string{pw, esc, url.PathEscape(pw)} {
				if len(secret) > 3 && strings.Contains(msg, secret) {
					t.Errorf("error leaks the password: %s", msg)
				}
			}
			for _, word := range strings.Fields(pw) {
				if len(word) > 3 && strings.Contains(msg, word) {
					t.Errorf("error leaks part of the password (%q): %s", word, msg)
				}
			}
		}
	}
}

func TestHostilePasswordsReachPgxIntact(t *testing.T) {
	for _, pw := range hostilePasswords {
		u := "postgres://app:" + url.PathEscape(pw) + "@a:5432,b:5433/d"
		cfg, err := ParseConfig(u)
		if err != nil {
			t.Fatalf("URL with hostile password: %v", err)
		}
		if cfg.Replicas[0].ConnConfig.Password != pw {
			t.Fatalf("URL password changed")
		}
		kv := "host=a,b port=5432,5433 user=app password='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(pw) + "' dbname=d"
		cfg, err = ParseConfig(kv)
		if err != nil {
			t.Fatalf("keyword DSN with hostile password: %v", err)
		}
		if cfg.Replicas[0].ConnConfig.Password != pw || cfg.Primary.ConnConfig.Password != pw {
			t.Fatalf("keyword password changed")
		}
	}
}

// pool_max_conns sizes every node's pool (pgx would size one pool with
// it, and pgreplica used to replace it silently); primary_max_conns and
// replica_max_conns override it per role. pgx's other pool_* keys reach
// every node's pool as they are.
func TestParseConfigPoolKeys(t *testing.T) {
	for _, c := range []struct {
		dsn              string
		primary, replica int32
	}{
		{"postgres://u@a,b,c/d", DefaultPrimaryMaxConns, DefaultReplicaMaxConns},
		{"postgres://u@a,b,c/d?pool_max_conns=5", 5, 5},
		{"postgres://u@a,b,c/d?pool_max_conns=5&replica_max_conns=40", 5, 40},
		{"postgres://u@a,b,c/d?primary_max_conns=3&pool_max_conns=5", 3, 5},
		{"host=a,b,c dbname=d pool_max_conns=4 primary_max_conns=2", 2, 4},
	} {
		cfg, err := ParseConfig(c.dsn)
		if err != nil {
			t.Fatalf("%s: %v", c.dsn, err)
		}
		r, err := cfg.resolve()
		if err != nil {
			t.Fatalf("%s: %v", c.dsn, err)
		}
		if r.Primary.MaxConns != c.primary {
			t.Errorf("%s: primary pool %d, want %d", c.dsn, r.Primary.MaxConns, c.primary)
		}
		for i, pc := range r.Replicas {
			if pc.MaxConns != c.replica {
				t.Errorf("%s: replica %d pool %d, want %d", c.dsn, i+1, pc.MaxConns, c.replica)
			}
		}
	}

	cfg, err := ParseConfig("postgres://u@a,b/d?pool_min_conns=2&pool_max_conn_lifetime=30m&pool_max_conn_idle_time=5m&pool_health_check_period=5s&pool_max_conn_lifetime_jitter=1m")
	if err != nil {
		t.Fatal(err)
	}
	for _, pc := range append(cfg.Replicas, cfg.Primary) {
		if pc.MinConns != 2 || pc.MaxConnLifetime != 30*time.Minute || pc.MaxConnIdleTime != 5*time.Minute ||
			pc.HealthCheckPeriod != 5*time.Second || pc.MaxConnLifetimeJitter != time.Minute {
			t.Errorf("node %s: pool_* keys not applied: %+v", pc.ConnConfig.Host, pc)
		}
	}

	for _, c := range []struct{ dsn, key string }{
		{"postgres://u@a,b/d?pool_max_conns=0", "pool_max_conns"},
		{"postgres://u@a,b/d?pool_max_conns=many", "pool_max_conns"},
		// More connections kept open than the pool may hold.
		{"postgres://u@a,b/d?pool_min_conns=15", "pool_min_conns"},
		{"postgres://u@a,b/d?pool_min_conns=6&pool_max_conns=5&primary_max_conns=8", "pool_min_conns"},
		{"host=a,b dbname=d pool_min_idle_conns=3 replica_max_conns=2", "pool_min_idle_conns"},
	} {
		_, err := ParseConfig(c.dsn)
		if !errors.Is(err, ErrInvalidDSN) || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: err = %v, want ErrInvalidDSN naming %s", c.dsn, err, c.key)
		}
	}
}

// parseNodes parses one pgxpool configuration per URL, as code that
// builds a Config by hand would.
func parseNodes(t *testing.T, urls ...string) (*pgxpool.Config, []*pgxpool.Config) {
	t.Helper()
	var pcs []*pgxpool.Config
	for _, u := range urls {
		pc, err := pgxpool.ParseConfig(u)
		if err != nil {
			t.Fatal(err)
		}
		pcs = append(pcs, pc)
	}
	return pcs[0], pcs[1:]
}

// ParseConfig(dsn) returns what the same settings written as a Config
// literal are, field for field, and NewConnector makes the same pools of
// both.
func TestParseConfigMatchesConfigLiteral(t *testing.T) {
	for _, c := range []struct {
		params string
		lit    Config
	}{
		{"", Config{}},
		{"fallback_to_primary=true&max_replica_lag=1s&hedge_after=auto&monitor_interval=1s", Config{MaxReplicaLag: time.Second, MonitorInterval: time.Second}},
		{"fallback_to_primary=false&max_replica_lag=off&hedge_after=off", Config{DisableFallback: true, MaxReplicaLag: MaxReplicaLagOff, HedgeAfter: HedgeOff}},
		{"pool_max_conns=5&replica_max_conns=40&monitor_interval=250ms&max_replica_lag=2s&hedge_after=5ms&replica_policy=round_robin",
			Config{MaxConns: 5, ReplicaMaxConns: 40, MonitorInterval: 250 * time.Millisecond, MaxReplicaLag: 2 * time.Second, HedgeAfter: 5 * time.Millisecond, Policy: RoundRobin()}},
		{"primary_max_conns=3&replica_policy=weighted&replica_weights=3,1", Config{PrimaryMaxConns: 3, Policy: Weighted(3, 1)}},
		{"primary_wait=5s", Config{PrimaryWait: 5 * time.Second}},
		{"primary_wait=off", Config{PrimaryWait: PrimaryWaitOff}},
	} {
		dsn := "postgres://app@db1:5432,db2:5432,db3:5432/shop?sslmode=disable"
		if c.params != "" {
			dsn += "&" + c.params
		}
		parsed, err := ParseConfig(dsn)
		if err != nil {
			t.Fatalf("%s: %v", dsn, err)
		}
		lit := c.lit
		lit.Primary, lit.Replicas = parseNodes(t, "postgres://app@db1:5432/shop?sslmode=disable",
			"postgres://app@db2:5432/shop?sslmode=disable", "postgres://app@db3:5432/shop?sslmode=disable")

		// Field for field, but for the pgxpool configurations (they hold
		// functions, which never compare equal): compared below.
		p, l := *parsed, lit
		p.Primary, p.Replicas, l.Primary, l.Replicas = nil, nil, nil, nil
		if !reflect.DeepEqual(p, l) {
			t.Errorf("%s:\nParseConfig %+v\nliteral     %+v", c.params, p, l)
		}
		rp, err := parsed.resolve()
		if err != nil {
			t.Fatal(err)
		}
		rl, err := lit.resolve()
		if err != nil {
			t.Fatal(err)
		}
		if pools(rp) != pools(rl) {
			t.Errorf("%s: pools from ParseConfig %s, from the literal %s", c.params, pools(rp), pools(rl))
		}
		rp.Primary, rp.Replicas, rl.Primary, rl.Replicas = nil, nil, nil, nil
		if !reflect.DeepEqual(rp, rl) {
			t.Errorf("%s: resolved\nParseConfig %+v\nliteral     %+v", c.params, rp, rl)
		}
	}
}

// pools describes a resolved Config's pools: each node's address, database,
// user and size.
func pools(cfg Config) string {
	var b strings.Builder
	for _, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
		cc := pc.ConnConfig
		b.WriteString(addrOf(pc) + "/" + cc.Database + " " + cc.User + " max " + strconv.Itoa(int(pc.MaxConns)) + " min " + strconv.Itoa(int(pc.MinConns)) + "; ")
	}
	return b.String()
}

// A Config written in code gets the DSN's defaults for every field left
// zero; the off states that are not defaults have names of their own.
func TestConfigZeroFieldsMeanDefaults(t *testing.T) {
	var lit Config
	lit.Primary, lit.Replicas = parseNodes(t, "postgres://app@127.0.0.1:1/shop", "postgres://app@127.0.0.1:2/shop")
	c, err := NewConnector(lit)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.cfg.MonitorInterval != DefaultMonitorInterval || c.cfg.MaxReplicaLag != DefaultMaxReplicaLag || c.cfg.DisableFallback || c.cfg.HedgeAfter != HedgeAuto {
		t.Errorf("defaults not applied: %+v", c.cfg)
	}
	if c.ryw == nil {
		t.Error("read_your_writes: the zero value left the connector's session off, want connector (the default)")
	}
	if _, ok := c.policy.(randomPolicy); !ok {
		t.Errorf("policy %T, want Random()", c.policy)
	}
	st := c.Status()
	if st.Nodes[0].Pool.Max != DefaultPrimaryMaxConns || st.Nodes[1].Pool.Max != DefaultReplicaMaxConns {
		t.Errorf("pools %d and %d, want %d and %d", st.Nodes[0].Pool.Max, st.Nodes[1].Pool.Max, DefaultPrimaryMaxConns, DefaultReplicaMaxConns)
	}
	if st.Nodes[1].HedgeDelay <= 0 {
		t.Errorf("replica hedge delay %v: hedging is off, want auto", st.Nodes[1].HedgeDelay)
	}
	if lit.Primary.MaxConns == DefaultPrimaryMaxConns {
		t.Fatal("test needs pgxpool's own default to differ from pgreplica's")
	}

	off := lit
	off.DisableFallback, off.MaxReplicaLag, off.HedgeAfter, off.ReadYourWrites = true, MaxReplicaLagOff, HedgeOff, ReadYourWritesOff
	c2, err := NewConnector(off)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if !c2.cfg.DisableFallback || c2.cfg.MaxReplicaLag > 0 || c2.Status().Nodes[1].HedgeDelay != 0 || c2.ryw != nil {
		t.Errorf("off states not applied: %+v", c2.cfg)
	}
}

// A node's own MaxConns counts when it was chosen for that node, in code or
// by pool_max_conns in its own connection string.
func TestConfigNodeMaxConns(t *testing.T) {
	lit := Config{ReplicaMaxConns: 40}
	lit.Primary, lit.Replicas = parseNodes(t, "postgres://app@db1/shop", "postgres://app@db2/shop?pool_max_conns=3", "postgres://app@db3/shop")
	lit.Primary.MaxConns = 7
	r, err := lit.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if got := pools(r); !strings.Contains(got, "db1:5432/shop app max 7 ") || !strings.Contains(got, "db2:5432/shop app max 3 ") || !strings.Contains(got, "db3:5432/shop app max 40 ") {
		t.Errorf("pools %s, want 7, 3 and 40", got)
	}
	if lit.Replicas[1].MaxConns == 40 {
		t.Error("resolve changed the caller's pool configuration")
	}
}

// NewConnector names what is wrong with a Config, as a Config: it was not
// a DSN.
func TestNewConnectorInvalidConfig(t *testing.T) {
	primary, replicas := parseNodes(t, "postgres://app@db1/shop", "postgres://app@db2/shop")
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "Config.Primary is nil"},
		{Config{Replicas: replicas}, "Config.Primary is nil"},
		{Config{Primary: primary, Replicas: []*pgxpool.Config{nil}}, "Config.Replicas[0] is nil"},
		{Config{Primary: primary, MonitorInterval: time.Millisecond}, "MonitorInterval"},
		{Config{Primary: primary, MaxConns: -1}, "MaxConns"},
		{Config{Primary: primary, ReplicaMaxConns: -1}, "ReplicaMaxConns"},
		{Config{Primary: primary, ReadYourWrites: ReadYourWritesOff + 1}, "ReadYourWrites (read_your_writes)"},
	} {
		c2, err := NewConnector(c.cfg)
		if err == nil {
			c2.Close()
			t.Errorf("%+v: no error", c.cfg)
			continue
		}
		if !errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrInvalidDSN) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err = %v, want ErrInvalidConfig naming %q (and not ErrInvalidDSN)", err, c.want)
		}
	}
}
