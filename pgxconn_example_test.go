package pgreplica_test

import (
	"context"
	"database/sql"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/pgreplica/pgreplica"
)

// pgx's own API through sql.Conn.Raw: CopyFrom on the primary.
func ExampleRawConn() {
	db, err := sql.Open("pgreplica", "postgres://app:secret@primary,replica-1/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	sc, err := db.Conn(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sc.Close() // the *pgx.Conn is valid until here
	err = sc.Raw(func(dc any) error {
		pc, err := dc.(pgreplica.RawConn).PrimaryConn(ctx)
		if err != nil {
			return err
		}
		rows := [][]any{{1, "lamp"}, {2, "desk"}}
		_, err = pc.CopyFrom(ctx, pgx.Identifier{"products"}, []string{"id", "name"}, pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		log.Print(err)
	}
}

// queryTracer stands for any pgx.QueryTracer, such as otelpgx's.
type queryTracer struct{}

func (queryTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	reason, _ := pgreplica.RouteReason(ctx) // why pgreplica sent it to this node
	log.Printf("%s:%d %s %s", conn.Config().Host, conn.Config().Port, reason, data.SQL)
	return ctx
}

func (queryTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// One pgx tracer for every node.
func ExampleConfig_tracer() {
	cfg, err := pgreplica.ParseConfig("postgres://app:secret@primary,replica-1/shop")
	if err != nil {
		log.Fatal(err)
	}
	cfg.Tracer = queryTracer{}
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}
