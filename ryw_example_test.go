package pgreplica_test

import (
	"database/sql"
	"log"
	"net/http"

	"github.com/pgreplica/pgreplica"
)

// An application written for a single PostgreSQL (an ORM that creates a
// row and reads it back at once) keeps its semantics unchanged: in the
// default mode (read_your_writes=connector) every read sees every write the
// *sql.DB acknowledged before it. read_your_writes=off in the DSN (or
// Config.ReadYourWrites = ReadYourWritesOff) lets plain reads be as stale
// as max_replica_lag, leaving read-your-writes to WithSession.
func ExampleReadYourWrites() {
	db, err := sql.Open("pgreplica", "postgres://app@primary,replica-1,replica-2/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("INSERT INTO orders (id) VALUES (42)"); err != nil {
		log.Fatal(err)
	}
	var n int
	// Sees order 42: from the primary until a replica has replayed it.
	if err := db.QueryRow("SELECT count(*) FROM orders WHERE id = 42").Scan(&n); err != nil {
		log.Fatal(err)
	}
}

// A service whose POST /search only reads runs it on the replicas; a
// client without cookies (another service) passes the session token back
// in the Pgreplica-Session header it got on its previous response.
func ExamplePrimaryFor() {
	mux := http.NewServeMux() // the application's handlers
	h := pgreplica.Middleware(mux,
		pgreplica.PrimaryFor(func(r *http.Request) bool {
			return r.Method != http.MethodGet && r.URL.Path != "/search"
		}),
		pgreplica.SessionHeader(pgreplica.DefaultSessionHeader), // the default, shown
	)
	log.Fatal(http.ListenAndServe(":8080", h))
}
