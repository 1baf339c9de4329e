// Command shop is a small product service on pgreplica: the Go version of
// the FastAPI example in the usual read-replica guides, without a second
// engine, a router class or per-route dependencies.
//
//	GET  /products          lists the products (a replica)
//	POST /products          adds one: {"name": "…", "price_cents": 1250}
//	GET  /health/replicas   the state of every node: 200 while writes can
//	                        succeed, 503 when the primary is down or there
//	                        is none (pgreplica.HealthHandler)
//
// Run it against a primary and its replicas:
//
//	PGREPLICA_DSN='postgres://app:secret@primary:5432,replica-1:5432,replica-2:5432/shop' go run ./examples/shop
//	curl -c jar -b jar -d '{"name":"kettle","price_cents":2999}' localhost:8080/products
//	curl -c jar -b jar localhost:8080/products
//
// The list right after the POST has the kettle, although a replica may not
// have replayed it yet: in the default mode (read_your_writes=connector) a
// read sees every write this process acknowledged before it, from the
// primary until a replica has it. pgreplica.Middleware's session cookie
// carries that to the other instances of the service: with several behind
// a load balancer, the client's next request may reach another one.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgreplica/pgreplica"
)

type product struct {
	ID         int64     `json:"id"`
	Name       string    `json:"name"`
	PriceCents int64     `json:"price_cents"`
	CreatedAt  time.Time `json:"created_at"`
}

const schema = `CREATE TABLE IF NOT EXISTS products (
	id          bigserial PRIMARY KEY,
	name        text NOT NULL,
	price_cents bigint NOT NULL CHECK (price_cents >= 0),
	created_at  timestamptz NOT NULL DEFAULT now()
)`

type shop struct{ db *sql.DB }

func main() {
	dsn := flag.String("dsn", os.Getenv("PGREPLICA_DSN"), "pgreplica DSN, primary first (default $PGREPLICA_DSN)")
	addr := flag.String("addr", "localhost:8080", "listen address")
	flag.Parse()
	if *dsn == "" {
		log.Fatal("shop: set -dsn or PGREPLICA_DSN, e.g. postgres://app:secret@primary,replica-1,replica-2/shop")
	}

	db, err := sql.Open("pgreplica", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := db.ExecContext(ctx, schema); err != nil {
		log.Fatal(err)
	}

	s := &shop{db: db}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /products", s.listProducts)
	mux.HandleFunc("POST /products", s.createProduct)
	// The handler reads the monitor's snapshot: it needs no connection, so
	// it answers at once even when the pool is exhausted.
	health, err := pgreplica.HealthHandlerOf(ctx, db)
	if err != nil {
		log.Fatal(err)
	}
	mux.Handle("GET /health/replicas", health)
	srv := &http.Server{
		Addr:              *addr,
		Handler:           pgreplica.Middleware(mux),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Printf("shop: listening on http://%s", *addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// listProducts is a plain read: a replica serves it, one that has the
// client's own writes.
func (s *shop) listProducts(w http.ResponseWriter, r *http.Request) {
	rows, err := s.db.QueryContext(r.Context(),
		"SELECT id, name, price_cents, created_at FROM products ORDER BY id")
	if err != nil {
		serverError(w, err)
		return
	}
	defer rows.Close()
	products := []product{}
	for rows.Next() {
		var p product
		if err := rows.Scan(&p.ID, &p.Name, &p.PriceCents, &p.CreatedAt); err != nil {
			serverError(w, err)
			return
		}
		products = append(products, p)
	}
	if err := rows.Err(); err != nil {
		serverError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, products)
}

// createProduct writes: INSERT … RETURNING goes to the primary, and the
// response's cookie lets the client's next reads see the new product.
func (s *shop) createProduct(w http.ResponseWriter, r *http.Request) {
	var p product
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&p); err != nil {
		http.Error(w, "body must be JSON: {\"name\": …, \"price_cents\": …}", http.StatusBadRequest)
		return
	}
	p.Name = strings.TrimSpace(p.Name)
	if p.Name == "" || p.PriceCents < 0 {
		http.Error(w, "name must not be empty and price_cents not negative", http.StatusBadRequest)
		return
	}
	err := s.db.QueryRowContext(r.Context(),
		"INSERT INTO products (name, price_cents) VALUES ($1, $2) RETURNING id, created_at",
		p.Name, p.PriceCents).Scan(&p.ID, &p.CreatedAt)
	if err != nil {
		serverError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, p)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Printf("shop: writing the response: %v", err)
	}
}

func serverError(w http.ResponseWriter, err error) {
	log.Printf("shop: %v", err)
	http.Error(w, "internal error", http.StatusInternalServerError)
}
