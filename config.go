package pgreplica

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults for the DSN keys pgreplica reads, and for a Config field left
// zero. Replica pools are larger than the primary's because a read-heavy
// service sends most statements there.
const (
	DefaultPrimaryMaxConns = 10
	DefaultReplicaMaxConns = 20
	DefaultMonitorInterval = time.Second
	DefaultMaxReplicaLag   = time.Second
	// DefaultPrimaryWait is 30s: Patroni's default ttl, the longest a
	// failed leader keeps its key before a replica is promoted.
	DefaultPrimaryWait = 30 * time.Second
)

// PrimaryWaitOff, as Config.PrimaryWait, makes a statement that needs the
// primary fail at once with ErrNoPrimary when none is known
// (primary_wait=off).
const PrimaryWaitOff time.Duration = -1

// MaxReplicaLagOff, as Config.MaxReplicaLag, lets a replica serve reads
// however far behind the primary it is (max_replica_lag=off). Any negative
// duration means the same.
const MaxReplicaLagOff time.Duration = -1

// HedgeAuto, as Config.HedgeAfter, hedges a read after a delay that follows
// the latency of the replica serving it: the default (hedge_after=auto), and
// so the zero value. HedgeOff, or any negative duration, turns hedging off
// (hedge_after=off).
const (
	HedgeAuto time.Duration = 0
	HedgeOff  time.Duration = -1
)

// minMonitorInterval is the shortest probe interval accepted: a shorter one
// would spend the servers' CPU on probes.
const minMonitorInterval = 10 * time.Millisecond

// Config describes a primary, its replicas and how pgreplica routes between
// them. A field left zero means the documented default, the same as a DSN
// without that key: ParseConfig(dsn) returns exactly the Config one would
// write by hand for the same settings, and only Primary is required.
//
//	primary, _ := pgxpool.ParseConfig("postgres://app@primary/shop")
//	replica, _ := pgxpool.ParseConfig("postgres://app@replica-1/shop")
//	c, err := pgreplica.NewConnector(pgreplica.Config{
//		Primary:  primary,
//		Replicas: []*pgxpool.Config{replica},
//		// fallback on, lag limit 1s, hedging auto, pools of 10 and 20
//	})
//
// Settings whose off state is not their default are switched off with
// DisableFallback, MaxReplicaLagOff and HedgeOff.
type Config struct {
	// Primary is the pool configuration of the node listed first; it is
	// required. Build it with pgxpool.ParseConfig. Its MaxConns counts only
	// when it was set (pool_max_conns in its own connection string, or
	// assigned after parsing); otherwise the pool size comes from
	// PrimaryMaxConns or MaxConns below.
	Primary *pgxpool.Config
	// Replicas are the pool configurations of the other nodes, in DSN order;
	// their MaxConns counts as the Primary's does.
	Replicas []*pgxpool.Config
	// Policy chooses among usable replicas; nil means Random().
	Policy Policy

	// MaxConns is every node's pool size (pool_max_conns); zero means the
	// per-role defaults, DefaultPrimaryMaxConns and DefaultReplicaMaxConns.
	MaxConns int32
	// PrimaryMaxConns is the primary's pool size (primary_max_conns),
	// overriding MaxConns; zero means MaxConns or DefaultPrimaryMaxConns.
	PrimaryMaxConns int32
	// ReplicaMaxConns is each replica's pool size (replica_max_conns),
	// overriding MaxConns; zero means MaxConns or DefaultReplicaMaxConns.
	ReplicaMaxConns int32

	// MonitorInterval is how often every node is probed (monitor_interval);
	// zero means DefaultMonitorInterval, and it must be at least 10ms. The
	// monitor probes every half MaxReplicaLag when that is shorter (not
	// under 50ms): the age of a probe counts against the lag bound.
	MonitorInterval time.Duration
	// MaxReplicaLag is how far behind the primary a replica may be and still
	// serve reads (max_replica_lag): a plain read misses nothing the primary
	// committed longer than this before it began, counting the age of what
	// the probes found (docs/guarantees.md). Zero means DefaultMaxReplicaLag,
	// and MaxReplicaLagOff disables the limit.
	MaxReplicaLag time.Duration
	// DisableFallback makes reads fail with ErrNoReplica when no replica is
	// usable (fallback_to_primary=false); by default they go to the primary.
	DisableFallback bool
	// HedgeAfter is how long a plain read waits for its replica's first
	// response before pgreplica sends it to a second node as well (see the
	// docs/tail-latency.md, hedge_after): HedgeAuto (zero, the default)
	// follows each node's recent latency, a positive duration is fixed, and
	// HedgeOff turns hedging off.
	HedgeAfter time.Duration
	// PrimaryWait bounds how long a statement that needs the primary waits
	// for the first probe round and for a writable primary (primary_wait);
	// zero means DefaultPrimaryWait, PrimaryWaitOff fails at once. The
	// caller's context deadline wins when it is sooner.
	PrimaryWait time.Duration

	// FallbackMaxShare bounds the share of plain reads finding no usable
	// replica that the fallback may send to the primary
	// (fallback_max_share), so that replicas all lagging or down do not move
	// their whole load onto it at once; see fallback.go for where the rest
	// go. Zero or 1 means no bound.
	FallbackMaxShare float64

	// Logger receives state changes (a node goes down or comes back, starts
	// or stops lagging, a promotion is followed, no node is writable, two
	// are); nil logs through slog.Default(), as it is when each record is
	// written. slog.New(slog.DiscardHandler) silences it.
	Logger *slog.Logger
	// Tracer, when set, becomes the pgx QueryTracer of every node whose
	// ConnConfig has none (otelpgx and other pgx tracers plug in here). It
	// sees each statement with the *pgx.Conn of the node that runs it, and
	// RouteReason reads pgreplica's reason from its context. The monitor's
	// probes are not traced.
	Tracer pgx.QueryTracer
	// ReadYourWrites is the scope in which a read sees earlier writes
	// without WithSession (the DSN key read_your_writes). The zero value,
	// ReadYourWritesConnector, makes every read see every write this
	// Connector acknowledged before the read began: one session shared by
	// every statement. ReadYourWritesOff leaves it to WithSession and
	// Middleware.
	ReadYourWrites ReadYourWrites

	// Discovery (see Discoverer and docs/operations.md): when any of
	// Discoverer, DNSNames and SRVNames is set, the members are what they
	// report, asked once by NewConnector (which waits for the answer at
	// most the primary's connect timeout, or 5 s) and again every
	// DiscoveryInterval. Until discovery first answers, the members are
	// Primary and Replicas. A discovered node's pool is configured as
	// Primary is, with its own host and port, and sized as a replica's;
	// its role, as every node's, comes from probing it.

	// Discoverer reports members (Consul, etcd, a cloud API, Patroni).
	Discoverer Discoverer
	// DNSNames are host names, each "name" or "name:port" (port 0 or none:
	// Primary's port), that resolve to one address per member, as a
	// Kubernetes headless Service does: every address becomes a node
	// (discovery=dns, with the DSN's hosts as the names).
	DNSNames []string
	// SRVNames are names whose SRV records _postgresql._tcp.<name> give
	// each member's host and port (discovery=srv).
	SRVNames []string
	// DiscoveryInterval is how often the members are discovered again
	// (discovery_interval); zero means DefaultDiscoveryInterval, and it
	// must be at least 10ms.
	DiscoveryInterval time.Duration
	// Resolver looks up DNSNames, SRVNames and the hosts every node
	// connects to; nil means net.DefaultResolver. The DSN key
	// discovery_dns_server=host:port sets one that asks that server.
	Resolver *net.Resolver

	// fixedPool says, by DSN position, whether a node's pool size is its
	// own (its connection string's pool_max_conns): set by resolve. The
	// others follow the role (rolesettings.go).
	fixedPool []bool
}

// ReadYourWrites is the scope in which reads see earlier writes without
// WithSession; see Config.ReadYourWrites.
type ReadYourWrites uint8

const (
	// ReadYourWritesConnector: every read sees every write the Connector
	// (the *sql.DB) acknowledged before the read began: from the primary
	// until a probe of the primary gives the write's position, then from
	// any replica that has replayed it (read_your_writes=connector). The
	// default, and so the zero value: code written for one server keeps
	// its semantics.
	ReadYourWritesConnector ReadYourWrites = iota
	// ReadYourWritesOff: plain reads may be as stale as max_replica_lag;
	// WithSession, Middleware and a sql.Conn that wrote read their own
	// writes (read_your_writes=off).
	ReadYourWritesOff
)

// resolve returns cfg with every default filled in, each node's pool
// configuration copied and sized, and every value checked; NewConnector
// runs on what it returns. Its errors name the Config field and the DSN key
// (ParseConfig reports the same problems); callers wrap them.
//
// In the result MaxReplicaLag and HedgeAfter are either positive or
// negative (off), and HedgeAfter zero is still HedgeAuto.
func (cfg Config) resolve() (Config, error) {
	if cfg.Primary == nil {
		return cfg, errors.New("Config.Primary is nil: a Config needs at least the primary's pool configuration (pgxpool.ParseConfig), or use ParseConfig with a DSN that lists the primary")
	}
	if 1+len(cfg.Replicas) > maxNodes {
		return cfg, fmt.Errorf("%d nodes; pgreplica supports at most %d", 1+len(cfg.Replicas), maxNodes)
	}
	for i, pc := range cfg.Replicas {
		if pc == nil {
			return cfg, fmt.Errorf("Config.Replicas[%d] is nil", i)
		}
	}
	for _, f := range []struct {
		name string
		n    int32
	}{{"MaxConns (pool_max_conns)", cfg.MaxConns}, {"PrimaryMaxConns (primary_max_conns)", cfg.PrimaryMaxConns}, {"ReplicaMaxConns (replica_max_conns)", cfg.ReplicaMaxConns}} {
		if f.n < 0 {
			return cfg, fmt.Errorf("%s must be at least 1, or 0 for the default", f.name)
		}
	}
	switch {
	case cfg.MonitorInterval == 0:
		cfg.MonitorInterval = DefaultMonitorInterval
	case cfg.MonitorInterval < minMonitorInterval:
		return cfg, errors.New("MonitorInterval (monitor_interval) must be at least 10ms, or 0 for the default")
	}
	switch {
	case cfg.MaxReplicaLag == 0:
		cfg.MaxReplicaLag = DefaultMaxReplicaLag
	case cfg.MaxReplicaLag < 0:
		cfg.MaxReplicaLag = MaxReplicaLagOff
	}
	if cfg.HedgeAfter < 0 {
		cfg.HedgeAfter = HedgeOff
	}
	switch {
	case cfg.PrimaryWait == 0:
		cfg.PrimaryWait = DefaultPrimaryWait
	case cfg.PrimaryWait < 0:
		cfg.PrimaryWait = PrimaryWaitOff
	}
	if cfg.ReadYourWrites > ReadYourWritesOff {
		return cfg, errors.New("ReadYourWrites (read_your_writes) must be ReadYourWritesConnector (connector, the zero value) or ReadYourWritesOff (off)")
	}
	if err := cfg.resolveDiscovery(); err != nil {
		return cfg, err
	}

	nodes := make([]*pgxpool.Config, 0, 1+len(cfg.Replicas))
	cfg.fixedPool = make([]bool, 0, 1+len(cfg.Replicas))
	for i, pc := range append([]*pgxpool.Config{cfg.Primary}, cfg.Replicas...) {
		size := cfg.poolSize(i == 0)
		fixed := explicitMaxConns(pc)
		if fixed {
			size = pc.MaxConns
		}
		cfg.fixedPool = append(cfg.fixedPool, fixed)
		if pc.MinConns > size || pc.MinIdleConns > size {
			return cfg, fmt.Errorf("%s: its pool may hold %d connections, fewer than its MinConns (pool_min_conns) %d or MinIdleConns (pool_min_idle_conns) %d: raise its pool size (pool_max_conns, primary_max_conns, replica_max_conns) or lower those",
				nodeLabel(i), size, pc.MinConns, pc.MinIdleConns)
		}
		pc = pc.Copy() // the caller's Config stays as it was
		pc.MaxConns = size
		if cfg.Tracer != nil && pc.ConnConfig.Tracer == nil {
			pc.ConnConfig.Tracer = cfg.Tracer
		}
		if cfg.Resolver != nil {
			pc.ConnConfig.LookupFunc = cfg.Resolver.LookupHost
		}
		nodes = append(nodes, pc)
	}
	cfg.Primary, cfg.Replicas = nodes[0], nodes[1:]
	return cfg, nil
}

// roleSizes are the pool sizes of a node at DSN position i by role, zero
// when its own connection string fixes its size.
func (cfg *Config) roleSizes(i int) roleSizes {
	if i < len(cfg.fixedPool) && cfg.fixedPool[i] {
		return roleSizes{}
	}
	return roleSizes{cfg.poolSize(false), cfg.poolSize(true)}
}

// poolSize is a role's pool size from the Config's own fields: the role's
// field, else MaxConns, else the role's default.
func (cfg *Config) poolSize(primary bool) int32 {
	role, def := cfg.ReplicaMaxConns, int32(DefaultReplicaMaxConns)
	if primary {
		role, def = cfg.PrimaryMaxConns, DefaultPrimaryMaxConns
	}
	switch {
	case role > 0:
		return role
	case cfg.MaxConns > 0:
		return cfg.MaxConns
	}
	return def
}

// explicitMaxConns says whether a node's MaxConns was chosen for it: its
// own connection string names pool_max_conns, or code changed MaxConns
// after pgxpool.ParseConfig. Otherwise it holds pgxpool's default, which
// says nothing about what the node should get. (pgxpool keeps no mark of
// its own, so the connection string is parsed again to tell.)
func explicitMaxConns(pc *pgxpool.Config) bool {
	if pc.MaxConns < 1 {
		return false
	}
	ref, err := pgxpool.ParseConfig(pc.ConnString())
	if err != nil {
		return true // it parsed once; if it no longer does, trust what is set
	}
	if ref.MaxConns != pc.MaxConns {
		return true
	}
	cc, err := pgconn.ParseConfig(pc.ConnString())
	if err != nil {
		return true
	}
	_, named := cc.RuntimeParams["pool_max_conns"]
	return named
}
