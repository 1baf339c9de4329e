package pgreplica_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"time"

	"github.com/pgreplica/pgreplica"
)

// The one-line change: open "pgreplica" with the primary listed first.
func Example() {
	db, err := sql.Open("pgreplica",
		"postgres://app:secret@primary:5432,replica-1:5432,replica-2:5432/shop?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := context.Background()
	// A write: the primary.
	if _, err := db.ExecContext(ctx, "UPDATE products SET stock = stock - 1 WHERE id = $1", 42); err != nil {
		log.Print(err)
	}
	// A read: a healthy, caught-up replica that has replayed the UPDATE
	// (the default, read_your_writes=connector), else the primary.
	var name string
	if err := db.QueryRowContext(ctx, "SELECT name FROM products WHERE id = $1", 42).Scan(&name); err != nil {
		log.Print(err)
	}
}

func ExampleParseConfig() {
	cfg, err := pgreplica.ParseConfig("postgres://app:secret@db1:5432,db2:5432,db3:5432/shop" +
		"?replica_policy=weighted&replica_weights=3,1&max_replica_lag=500ms")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(cfg.Replicas), "replicas; max lag", cfg.MaxReplicaLag)
	// Output: 2 replicas; max lag 500ms
}

// Build the configuration in code, with a policy of your own.
func ExampleNewConnector() {
	cfg, err := pgreplica.ParseConfig("postgres://app:secret@db1,db2,db3/shop")
	if err != nil {
		log.Fatal(err)
	}
	cfg.Policy = firstReplica{}
	cfg.MonitorInterval = 500 * time.Millisecond
	connector, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector) // db.Close closes the connector too
	defer db.Close()
}

// firstReplica prefers the replica listed first among those usable now.
type firstReplica struct{}

func (firstReplica) Choose(c []pgreplica.Candidate) int {
	best := 0
	for i := range c {
		if c[i].Index < c[best].Index {
			best = i
		}
	}
	return best
}

// A read that must see the latest committed data.
func ExampleUsePrimary() {
	var db *sql.DB // opened with sql.Open("pgreplica", …)
	ctx := pgreplica.UsePrimary(context.Background())
	_ = func() error {
		var balance int64
		return db.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = $1", 7).Scan(&balance)
	}
}

// Find out which node served a statement, and why.
func ExampleWithRoute() {
	var db *sql.DB // opened with sql.Open("pgreplica", …)
	ctx, route := pgreplica.WithRoute(context.Background())
	_ = func() {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&n); err == nil {
			log.Printf("served by %s (%s)", route.Node(), route.Reason())
		}
	}
}

// The status of every node behind a *sql.DB.
func ExampleConnectorOf() {
	var db *sql.DB // opened with sql.Open("pgreplica", …)
	_ = func(ctx context.Context) {
		c, err := pgreplica.ConnectorOf(ctx, db)
		if err != nil {
			log.Fatal(err)
		}
		for _, n := range c.Status().Nodes {
			fmt.Println(n.Addr, n.Role, n.State, n.Lag)
		}
	}
}

// A Discoverer of your own: here a function asking a service registry
// (Consul, etcd, a cloud API; a map stands in for it) which servers run
// the cluster. pgreplica calls it at DiscoveryInterval; members that
// appear get reads after their first healthy probe, members that vanish
// are drained. Roles are never taken from it: each server is probed.
func ExampleDiscoverer() {
	registry := map[string][]string{"shop": {"10.0.0.11", "10.0.0.12"}}
	cfg, err := pgreplica.ParseConfig("postgres://app:secret@10.0.0.11:5432/shop?discovery_interval=5s")
	if err != nil {
		log.Fatal(err)
	}
	cfg.Discoverer = pgreplica.DiscoverFunc(func(ctx context.Context) ([]pgreplica.Member, error) {
		var ms []pgreplica.Member
		for _, host := range registry["shop"] {
			ms = append(ms, pgreplica.Member{Host: host, Port: 5432}) // Source: custom
		}
		return ms, nil
	})
	members, _ := cfg.Discoverer.Discover(context.Background())
	// sql.OpenDB(connector) of pgreplica.NewConnector(*cfg) follows them.
	fmt.Println(members, cfg.DiscoveryInterval)
	// Output: [{10.0.0.11 5432  } {10.0.0.12 5432  }] 5s
}
