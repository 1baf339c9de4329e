package pgreplica

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

const patroniClusterJSON = `{"members": [
 {"name": "n0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5432, "timeline": 3},
 {"name": "n1", "role": "sync_standby", "state": "streaming", "host": "10.0.0.2", "port": 5433, "timeline": 3, "lag": 0},
 {"name": "n2", "role": "replica", "state": "stopped", "host": "10.0.0.3", "port": 5432, "lag": "unknown"},
 {"name": "n3", "role": "replica", "state": "starting"}
], "scope": "demo"}`

func TestPatroniDiscoverer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cluster" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(patroniClusterJSON))
	}))
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close() // refuses connections

	// The first endpoint refuses; the second answers. Every member with
	// a host and port is reported, whatever Patroni says of its role.
	d, err := NewPatroniDiscoverer([]string{"http://user:s3cret@" + strings.TrimPrefix(down.URL, "http://"), srv.URL + "/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Member{
		{Host: "10.0.0.1", Port: 5432, Source: SourcePatroni},
		{Host: "10.0.0.2", Port: 5433, Source: SourcePatroni},
		{Host: "10.0.0.3", Port: 5432, Source: SourcePatroni},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Discover = %+v, want %+v", got, want)
	}

	// No endpoint answers: the error names them without credentials.
	d, _ = NewPatroniDiscoverer([]string{"http://user:s3cret@" + strings.TrimPrefix(down.URL, "http://")}, nil)
	_, err = d.Discover(context.Background())
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "xxxxx") {
		t.Fatalf("Discover with no endpoint up: %v, want an error with the password redacted", err)
	}
}

// patroniURLDSNs also seed FuzzParseConfig.
var patroniURLDSNs = []struct {
	dsn string
	ok  bool
}{
	{"postgres://u:p@h1,h2/db?patroni_url=http://10.0.0.1:8008,https://10.0.0.2:8008", true},
	{"host=h1 patroni_url='http://a:8008'", true},
	{"postgres://u:p@h1/db?patroni_url=ftp://s3cret@x", false},
	{"postgres://u:p@h1/db?patroni_url=", false},
	{"postgres://u:p@h1/db?patroni_urls=http://x:8008", false}, // misspelt: refused, not sent to the server
}

func TestPatroniURLKey(t *testing.T) {
	for _, tc := range patroniURLDSNs {
		cfg, err := ParseConfig(tc.dsn)
		if (err == nil) != tc.ok {
			t.Errorf("ParseConfig(%q): err = %v, want ok=%t", tc.dsn, err, tc.ok)
			continue
		}
		if err != nil {
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("ParseConfig(%q) error echoes the value: %v", tc.dsn, err)
			}
			continue
		}
		if _, ok := cfg.Discoverer.(*patroniDiscoverer); !ok {
			t.Errorf("ParseConfig(%q): Discoverer = %T, want the Patroni discoverer", tc.dsn, cfg.Discoverer)
		}
	}
}
