package pgreplica_test

import (
	"context"
	"database/sql"
	"log"
	"net/http"
	"time"

	"github.com/pgreplica/pgreplica"
)

// A read-your-writes session: once the order is stored, every read made
// with ctx sees it, from a replica that has replayed it or else from the
// primary. In the default mode every read of the *sql.DB sees it anyway;
// a session is what read_your_writes=off needs, and what SessionToken
// carries to other processes.
func ExampleWithSession() {
	var db *sql.DB // opened with sql.Open("pgreplica", …)
	_ = func(ctx context.Context, customer int64) error {
		ctx = pgreplica.WithSession(ctx)
		if _, err := db.ExecContext(ctx, "INSERT INTO orders (customer_id) VALUES ($1)", customer); err != nil {
			return err
		}
		var n int
		return db.QueryRowContext(ctx, "SELECT count(*) FROM orders WHERE customer_id = $1", customer).Scan(&n)
	}
}

// Carry a session to another request or process, here in a header: the
// reads of the next request see the writes of this one.
func ExampleSessionToken() {
	var db *sql.DB // opened with sql.Open("pgreplica", …)
	_ = func(w http.ResponseWriter, r *http.Request) {
		ctx := pgreplica.WithSessionToken(r.Context(), r.Header.Get("X-Session"))
		if _, err := db.ExecContext(ctx, "UPDATE carts SET updated_at = now() WHERE id = $1", 7); err != nil {
			http.Error(w, "update failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("X-Session", pgreplica.SessionToken(ctx))
	}
}

// Every client of a web service reads its own writes: POST, PUT, PATCH and
// DELETE handlers run on the primary, GET handlers on the replicas, and a
// cookie makes a client's reads wait for the replicas to replay what it
// wrote, from any instance of the service.
func ExampleMiddleware() {
	var db *sql.DB // opened with sql.Open("pgreplica", …)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /products", func(w http.ResponseWriter, r *http.Request) {
		_, err := db.ExecContext(r.Context(), "INSERT INTO products (name) VALUES ($1)", r.FormValue("name"))
		if err != nil {
			http.Error(w, "could not add the product", http.StatusInternalServerError)
			return
		}
		http.Redirect(w, r, "/products", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /products", func(w http.ResponseWriter, r *http.Request) {
		// Served by a replica that has the client's latest product.
		rows, err := db.QueryContext(r.Context(), "SELECT name FROM products ORDER BY id")
		if err != nil {
			http.Error(w, "could not list the products", http.StatusInternalServerError)
			return
		}
		defer rows.Close()
		// … write the names
	})
	handler := pgreplica.Middleware(mux, pgreplica.SessionCookie(func(c *http.Cookie) {
		c.Secure = true // the site is served over HTTPS only
		c.MaxAge = int((10 * time.Minute).Seconds())
	}))
	_ = func() { log.Fatal(http.ListenAndServe(":8080", handler)) }
}
