package pgreplica

import (
	"bufio"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/pgreplica/pgreplica/internal/testca"
)

// Every DSN README.md and docs/*.md show parses with ParseConfig as
// written: a user who copies one gets a Config, not ErrInvalidDSN. A DSN is
// a line of a fenced block (not Go) that starts with postgres://,
// postgresql:// or host=, an inline code span that is one, or a Go string
// literal in a ```go block that is one. The only change made before
// parsing: an sslrootcert path (read at parse time) points at a real CA
// file.
func TestDocsDSNsParse(t *testing.T) {
	docs := []string{"README.md"}
	m, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	docs = append(docs, m...)

	root := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(root, testca.New(t).PEM, 0o600); err != nil {
		t.Fatal(err)
	}

	perFile := map[string]int{}
	for _, f := range docs {
		dsns, err := docDSNs(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dsns {
			perFile[f]++
			if _, err := ParseConfig(withRootCert(d.dsn, root)); err != nil {
				t.Errorf("%s:%d: %s: %v", f, d.line, d.dsn, err)
			}
		}
	}
	// The extraction itself must keep finding them: README shows its DSN
	// essentials (2), its first program (1), and the Patroni/Kubernetes/DNS
	// section's examples (3).
	if perFile["README.md"] < 6 {
		t.Errorf("found %d DSNs in README.md, want at least 6: did the extraction break?", perFile["README.md"])
	}
	if perFile["docs/operations.md"] < 10 {
		t.Errorf("found %d DSNs in docs/operations.md, want at least 10", perFile["docs/operations.md"])
	}
	t.Logf("DSNs parsed per file: %v", perFile)
}

// README's "Running with Patroni, Kubernetes and DNS" shows one DSN per
// kind of discovery, and each turns that discovery on.
func TestReadmeDiscoveryDSNs(t *testing.T) {
	dsns, err := docDSNs("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]func(*Config) bool{
		"discovery=dns": func(c *Config) bool { return len(c.DNSNames) > 0 && c.Discoverer == nil },
		"discovery=srv": func(c *Config) bool { return len(c.SRVNames) > 0 && c.Discoverer == nil },
		"patroni_url=":  func(c *Config) bool { return c.Discoverer != nil },
	}
	for key, check := range want {
		found := false
		for _, d := range dsns {
			if !strings.Contains(d.dsn, key) {
				continue
			}
			found = true
			cfg, err := ParseConfig(d.dsn)
			if err != nil {
				t.Errorf("README.md:%d: %v", d.line, err)
			} else if !check(cfg) {
				t.Errorf("README.md:%d: %s does not turn on what %s says (DNSNames %q, SRVNames %q, Discoverer %v)",
					d.line, d.dsn, key, cfg.DNSNames, cfg.SRVNames, cfg.Discoverer != nil)
			}
		}
		if !found {
			t.Errorf("README.md shows no DSN with %s", key)
		}
	}
}

type docDSN struct {
	line int
	dsn  string
}

var (
	dsnStart  = regexp.MustCompile(`^(postgres(ql)?://|host=)`)
	goDSNLit  = regexp.MustCompile(`"((?:postgres(?:ql)?://|host=)[^"]*)"`)
	rootCertU = regexp.MustCompile(`sslrootcert=[^&\s]+`)
)

// isDSN tells a DSN from a mention of a key ("`host=`").
func isDSN(s string) bool {
	if !dsnStart.MatchString(s) {
		return false
	}
	if strings.HasPrefix(s, "host=") {
		return strings.Contains(s, " ") // keyword form: more than one key
	}
	return len(s) > len("postgres://")
}

func docDSNs(path string) ([]docDSN, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out      []docDSN
		in, isGo bool
		n        int
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		n++
		line := sc.Text()
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "```") {
			if !in {
				in, isGo = true, strings.TrimSpace(strings.TrimPrefix(t, "```")) == "go"
			} else {
				in = false
			}
			continue
		}
		switch {
		case in && isGo:
			for _, m := range goDSNLit.FindAllStringSubmatch(line, -1) {
				if isDSN(m[1]) {
					out = append(out, docDSN{n, m[1]})
				}
			}
		case in:
			if isDSN(t) {
				out = append(out, docDSN{n, t})
			}
		default:
			for _, m := range inlineSpan.FindAllStringSubmatch(line, -1) {
				if isDSN(m[1]) {
					out = append(out, docDSN{n, m[1]})
				}
			}
		}
	}
	return out, sc.Err()
}

// withRootCert points a DSN's sslrootcert (other than "system") at root.
func withRootCert(dsn, root string) string {
	return rootCertU.ReplaceAllStringFunc(dsn, func(kv string) string {
		if kv == "sslrootcert=system" {
			return kv
		}
		if strings.Contains(dsn, "://") {
			return "sslrootcert=" + url.QueryEscape(root)
		}
		return "sslrootcert='" + root + "'"
	})
}

// The `pgreplica status` tables the docs show have the command's columns:
// its header line, as cmd/pgreplica/status.go prints it.
func TestDocsStatusHeader(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("cmd", "pgreplica", "status.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"(NODE\\t[^"]*)"`).FindSubmatch(src)
	if m == nil {
		t.Fatal(`no "NODE\t…" header in cmd/pgreplica/status.go`)
	}
	want := strings.Fields(strings.ReplaceAll(string(m[1]), `\t`, " "))
	seen := 0
	for _, f := range []string{"README.md", "docs/operations.md"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "NODE ") {
				continue
			}
			seen++
			if got := strings.Fields(line); !slices.Equal(got, want) {
				t.Errorf("%s:%d: status header %q, the command prints %q", f, i+1, got, want)
			}
		}
	}
	if seen < 2 {
		t.Errorf("found %d status tables in README.md and docs/operations.md, want 2", seen)
	}
}
