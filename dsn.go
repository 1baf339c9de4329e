package pgreplica

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ownKeys are the DSN keys pgreplica consumes. pgx would turn any of them
// into a server runtime parameter, which the server refuses.
var ownKeys = map[string]bool{
	"replica_policy":      true,
	"replica_weights":     true,
	"latency_window":      true,
	"pool_max_conns":      true, // pgxpool's, but pgreplica sizes the pools
	"primary_max_conns":   true,
	"replica_max_conns":   true,
	"monitor_interval":    true,
	"max_replica_lag":     true,
	"fallback_to_primary": true,
	"fallback_max_share":  true,
	"hedge_after":         true,
	"read_your_writes":    true,
	"primary_wait":        true,
	// discover.go
	"discovery":            true,
	"discovery_interval":   true,
	"discovery_dns_server": true,
	// patroni.go
	"patroni_url": true,
}

// ownPrefixes catch misspelt pgreplica keys (replica_polcy) so they fail
// loudly instead of reaching the server. No libpq key starts with these.
var ownPrefixes = []string{"pgreplica_", "replica_", "primary_", "monitor_", "max_replica_", "fallback_to_", "hedge_", "latency_", "read_your_", "discovery_", "patroni_"}

func isOwnLooking(key string) bool {
	for _, p := range ownPrefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func dsnError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidDSN}, args...)...)
}

// ParseConfig parses a DSN in URL or keyword/value form that lists the
// primary first and its replicas after it, e.g.
//
//	postgres://app:secret@primary:5432,replica-1:5432,replica-2:5432/shop?replica_policy=round_robin
//	host=primary,replica-1 port=5432,5433 dbname=shop replica_max_conns=40
//
// Any key pgx accepts is accepted and applies to every node; pgreplica's own
// keys are removed before the rest reaches pgx. Errors wrap ErrInvalidDSN and
// name the offending key or part, never its value.
func ParseConfig(dsn string) (*Config, error) {
	var (
		d   parsedDSN
		err error
	)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		d, err = parseURLDSN(dsn)
	} else {
		d, err = parseKeywordDSN(dsn)
	}
	if err != nil {
		return nil, err
	}

	// A key left out leaves its field zero, which means its default: the
	// result is what the same settings written as a Config literal give.
	cfg := &Config{}
	policyName, weightsText, windowText, discovery := "", "", "", ""
	for _, kv := range d.own {
		key, val := kv[0], kv[1]
		switch key {
		case "replica_policy":
			policyName = val
		case "replica_weights":
			weightsText = val
		case "latency_window":
			windowText = val
		case "pool_max_conns", "primary_max_conns", "replica_max_conns":
			n, err := strconv.ParseInt(val, 10, 32)
			if err != nil || n < 1 {
				return nil, dsnError("%s must be a whole number of at least 1", key)
			}
			switch key {
			case "pool_max_conns":
				cfg.MaxConns = int32(n)
			case "primary_max_conns":
				cfg.PrimaryMaxConns = int32(n)
			default:
				cfg.ReplicaMaxConns = int32(n)
			}
		case "monitor_interval":
			dur, err := time.ParseDuration(val)
			if err != nil || dur < 10*time.Millisecond {
				return nil, dsnError("monitor_interval must be a duration of at least 10ms, such as 1s or 500ms")
			}
			cfg.MonitorInterval = dur
		case "max_replica_lag":
			if val == "off" {
				cfg.MaxReplicaLag = MaxReplicaLagOff
				break
			}
			dur, err := time.ParseDuration(val)
			if err != nil || dur <= 0 {
				return nil, dsnError("max_replica_lag must be a positive duration, such as 1s or 250ms, or off")
			}
			cfg.MaxReplicaLag = dur
		case "hedge_after":
			switch val {
			case "auto":
				cfg.HedgeAfter = HedgeAuto
			case "off":
				cfg.HedgeAfter = HedgeOff
			default:
				dur, err := time.ParseDuration(val)
				if err != nil || dur <= 0 {
					return nil, dsnError("hedge_after must be auto, off or a positive duration, such as 5ms")
				}
				cfg.HedgeAfter = dur
			}
		case "primary_wait":
			if val == "off" {
				cfg.PrimaryWait = PrimaryWaitOff
				break
			}
			dur, err := time.ParseDuration(val)
			if err != nil || dur <= 0 {
				return nil, dsnError("primary_wait must be a positive duration, such as 30s, or off")
			}
			cfg.PrimaryWait = dur
		case "read_your_writes":
			switch val {
			case "off":
				cfg.ReadYourWrites = ReadYourWritesOff
			case "connector":
				cfg.ReadYourWrites = ReadYourWritesConnector
			default:
				return nil, dsnError("read_your_writes must be off or connector")
			}
		case "fallback_to_primary":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return nil, dsnError("fallback_to_primary must be true or false")
			}
			cfg.DisableFallback = !b
		case "discovery":
			if val != "dns" && val != "srv" {
				return nil, dsnError("discovery must be dns or srv")
			}
			discovery = val
		case "discovery_interval":
			dur, err := time.ParseDuration(val)
			if err != nil || dur < minDiscoveryInterval {
				return nil, dsnError("discovery_interval must be a duration of at least 10ms, such as 10s")
			}
			cfg.DiscoveryInterval = dur
		case "patroni_url":
			d, err := NewPatroniDiscoverer(strings.Split(val, ","), nil)
			if err != nil {
				return nil, dsnError("patroni_url must be one or more http:// or https:// URLs, comma-separated")
			}
			cfg.Discoverer = d
		case "discovery_dns_server":
			if _, port, err := net.SplitHostPort(val); err != nil || port == "" {
				return nil, dsnError("discovery_dns_server must be host:port, such as 10.0.0.10:53")
			}
			cfg.Resolver = dnsServerResolver(val)
		case "fallback_max_share":
			f, err := strconv.ParseFloat(val, 64)
			if err != nil || !(f > 0 && f <= 1) {
				return nil, dsnError("fallback_max_share must be a number above 0 and at most 1, such as 0.2")
			}
			cfg.FallbackMaxShare = f
		}
	}

	for i, nodeDSN := range d.nodes {
		pc, err := pgxpool.ParseConfig(nodeDSN)
		if err != nil {
			return nil, dsnError("%s: %s", nodeLabel(i), pgxParseMessage(err, d.password))
		}
		if i == 0 {
			cfg.Primary = pc
		} else {
			cfg.Replicas = append(cfg.Replicas, pc)
		}
	}

	if discovery != "" {
		if err := cfg.discoveryFromHosts(discovery); err != nil {
			return nil, err
		}
	}

	cfg.Policy, err = policyFromDSN(policyName, weightsText, windowText, len(cfg.Replicas))
	if err != nil {
		return nil, err
	}
	// What only the whole Config can tell (pool_min_conns above a pool's
	// size): NewConnector would refuse it.
	if _, err := cfg.resolve(); err != nil {
		return nil, dsnError("%v", err)
	}
	return cfg, nil
}

// nodeLabel names a node by position: in a malformed DSN even the host
// text may be a piece of an unescaped password.
func nodeLabel(i int) string {
	if i == 0 {
		return "node 1 (the primary)"
	}
	return fmt.Sprintf("node %d (replica %d)", i+1, i)
}

// pgxParseMessage keeps what pgx says was wrong and drops the connection
// string and values it quotes: pgx's own redaction is best effort, and in a
// malformed DSN a password may sit where no parser knows it is one.
func pgxParseMessage(err error, password string) string {
	msg := err.Error()
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			msg = msg[i+3:]
		}
	}
	return redact(quoted.ReplaceAllString(msg, `"…"`), password)
}

var quoted = regexp.MustCompile(`"[^"]*"|` + "`[^`]*`")

// redact removes the password, and every run of four or more of its
// letters and digits, from a message that may have echoed it.
func redact(msg, password string) string {
	if len(password) < 4 {
		return msg // shorter runs occur in any message by chance
	}
	msg = strings.ReplaceAll(msg, password, "xxxxx")
	msg = strings.ReplaceAll(msg, url.QueryEscape(password), "xxxxx")
	for _, frag := range strings.FieldsFunc(password, func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	}) {
		if len(frag) >= 4 {
			msg = strings.ReplaceAll(msg, frag, "xxxxx")
		}
	}
	return msg
}

func policyFromDSN(name, weightsText, windowText string, replicas int) (Policy, error) {
	var weights []float64
	if weightsText != "" {
		for _, w := range strings.Split(weightsText, ",") {
			f, err := strconv.ParseFloat(strings.TrimSpace(w), 64)
			if err != nil || f < 0 || f != f {
				return nil, dsnError("replica_weights must be non-negative numbers separated by commas")
			}
			weights = append(weights, f)
		}
		if len(weights) != replicas {
			return nil, dsnError("replica_weights has %d numbers for %d replicas", len(weights), replicas)
		}
		if name == "" {
			name = "weighted"
		}
		if name != "weighted" {
			return nil, dsnError("replica_weights needs replica_policy=weighted")
		}
	}
	window := defaultLatencyWindow
	if windowText != "" {
		if name == "" {
			name = "nearest"
		}
		if name != "nearest" {
			return nil, dsnError("latency_window needs replica_policy=nearest")
		}
		dur, err := time.ParseDuration(windowText)
		if err != nil || dur < 0 {
			return nil, dsnError("latency_window must be a duration of at least 0, such as 15ms or 5ms")
		}
		window = dur
	}
	switch name {
	case "":
		return nil, nil // Config's default, Random()
	case "random":
		return Random(), nil
	case "round_robin":
		return RoundRobin(), nil
	case "least_busy":
		return LeastBusy(), nil
	case "weighted":
		if weights == nil {
			return nil, dsnError("replica_policy=weighted needs replica_weights, one number per replica")
		}
		return Weighted(weights...), nil
	case "nearest":
		return Nearest(window), nil
	}
	return nil, dsnError("replica_policy must be random, round_robin, weighted, least_busy or nearest")
}

// parsedDSN is a DSN split into one pgx connection string per node plus the
// pgreplica keys, in the order they appeared.
type parsedDSN struct {
	nodes    []string
	own      [][2]string
	password string
}

func parseURLDSN(dsn string) (parsedDSN, error) {
	var d parsedDSN
	if strings.Contains(dsn, "#") {
		// url.Parse (and so pgx) would drop everything after it as a
		// fragment: with "#" in a password, the rest of the password and
		// the host list silently vanish.
		return d, dsnError("the URL contains '#', which starts a fragment: percent-encode it as %%23 (in a password, for example)")
	}
	// net/url validates only the last host's port, so "a:5432,b" fails.
	// Cut the host list out first and give url.Parse one placeholder host.
	afterScheme := strings.Index(dsn, "://") + 3
	authEnd := len(dsn)
	if i := strings.IndexAny(dsn[afterScheme:], "/?#"); i >= 0 {
		authEnd = afterScheme + i
	}
	hostStart := afterScheme
	if at := strings.LastIndex(dsn[afterScheme:authEnd], "@"); at >= 0 {
		hostStart = afterScheme + at + 1
	}
	hostList := dsn[hostStart:authEnd]
	u, err := url.Parse(dsn[:hostStart] + "placeholder" + dsn[authEnd:])
	if err != nil {
		// url.Error repeats the whole input, password included: say what
		// kind of problem it was without it.
		return d, dsnError("malformed URL (check that the password and other parts are percent-encoded)")
	}
	if u.User != nil {
		d.password, _ = u.User.Password()
	}
	q := u.Query()
	for key, vals := range q {
		if ownKeys[key] {
			for _, v := range vals {
				d.own = append(d.own, [2]string{key, v})
			}
			delete(q, key)
			continue
		}
		if err := checkForeignKey(key); err != nil {
			return d, err
		}
	}
	// Hosts and ports may also come as query parameters, as libpq allows
	// (postgres:///db?host=/var/run/postgresql,replica-1&port=5432,5433);
	// they win over the authority, as in pgx.
	hosts, inQuery := strings.Split(hostList, ","), false
	if hs := q["host"]; len(hs) > 0 {
		hosts, inQuery = strings.Split(hs[len(hs)-1], ","), true
		delete(q, "host")
	}
	var ports []string
	if ps := q["port"]; len(ps) > 0 {
		ports = strings.Split(ps[len(ps)-1], ",")
		delete(q, "port")
	}
	if len(ports) > 1 && len(ports) != len(hosts) {
		return d, dsnError("port lists %d ports for %d hosts", len(ports), len(hosts))
	}
	for i, h := range hosts {
		if h == "" && len(hosts) > 1 {
			return d, dsnError("empty host in the host list")
		}
		nq := maps.Clone(q)
		nu := *u
		nu.Host = h
		if inQuery {
			nu.Host = ""
			nq.Set("host", h)
		}
		switch {
		case len(ports) == 1:
			nq.Set("port", ports[0])
		case len(ports) > 1:
			nq.Set("port", ports[i])
		}
		nu.RawQuery = nq.Encode()
		d.nodes = append(d.nodes, nu.String())
	}
	return d, nil
}

func isPlainKeyRune(r rune) bool {
	return r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// isPlainKey says whether key is letters, digits and underscores only, as
// every real key is.
func isPlainKey(key string) bool {
	return strings.IndexFunc(key, func(r rune) bool { return !isPlainKeyRune(r) }) < 0
}

func checkForeignKey(key string) error {
	if isOwnLooking(key) {
		if !isPlainKey(key) {
			// Quoting would escape its odd bytes, and an escape such as
			// \x00 followed by digits can spell out the password.
			return dsnError("unknown pgreplica key starting %q, with characters no key has", key[:strings.IndexFunc(key, func(r rune) bool { return !isPlainKeyRune(r) })])
		}
		return dsnError("unknown pgreplica key %q", key)
	}
	if key == "target_session_attrs" || key == "load_balance_hosts" {
		return dsnError("%s is not supported: pgreplica finds each node's role itself", key)
	}
	return nil
}

func parseKeywordDSN(dsn string) (parsedDSN, error) {
	var d parsedDSN
	pairs, err := splitKeywordPairs(dsn)
	if err != nil {
		return d, err
	}
	var hosts, ports []string
	var rest [][2]string
	for _, kv := range pairs {
		key, val := kv[0], kv[1]
		switch {
		case ownKeys[key]:
			d.own = append(d.own, kv)
		case key == "host":
			hosts = strings.Split(val, ",")
		case key == "port":
			ports = strings.Split(val, ",")
		default:
			if err := checkForeignKey(key); err != nil {
				return d, err
			}
			if key == "password" {
				d.password = val
			}
			rest = append(rest, kv)
		}
	}
	if len(hosts) == 0 {
		hosts = []string{""} // pgx's defaults (PGHOST, the socket) pick the one node
	}
	if len(ports) > 1 && len(ports) != len(hosts) {
		return d, dsnError("port lists %d ports for %d hosts", len(ports), len(hosts))
	}
	for i, h := range hosts {
		port := ""
		if len(ports) == 1 {
			port = ports[0]
		} else if len(ports) > 1 {
			port = ports[i]
		}
		var b strings.Builder
		if h != "" {
			writePair(&b, "host", h)
		}
		if port != "" {
			writePair(&b, "port", port)
		}
		for _, kv := range rest {
			writePair(&b, kv[0], kv[1])
		}
		d.nodes = append(d.nodes, b.String())
	}
	return d, nil
}

func writePair(b *strings.Builder, key, val string) {
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	b.WriteString(key)
	b.WriteString("='")
	for i := 0; i < len(val); i++ {
		if val[i] == '\'' || val[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(val[i])
	}
	b.WriteByte('\'')
}

// splitKeywordPairs reads libpq's keyword/value syntax: key = value pairs
// separated by spaces, values optionally single-quoted with backslash
// escapes.
func splitKeywordPairs(s string) ([][2]string, error) {
	var pairs [][2]string
	i := 0
	for {
		for i < len(s) && isDSNSpace(s[i]) {
			i++
		}
		if i >= len(s) {
			return pairs, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isDSNSpace(s[i]) {
			i++
		}
		key := s[start:i]
		for i < len(s) && isDSNSpace(s[i]) {
			i++
		}
		if i >= len(s) || s[i] != '=' {
			// Not the word itself: it may be the tail of a password with a
			// space in it.
			return nil, dsnError("expected key=value at byte %d", start)
		}
		i++
		for i < len(s) && isDSNSpace(s[i]) {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				if c == '\'' {
					closed = true
					i++
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return nil, dsnError("unterminated quoted value for %q", key)
			}
		} else {
			for i < len(s) && !isDSNSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		if key == "" {
			return nil, dsnError("a value has no key (expected key=value)")
		}
		pairs = append(pairs, [2]string{key, val.String()})
	}
}

func isDSNSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
