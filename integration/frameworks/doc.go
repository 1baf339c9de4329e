// Package frameworks proves that the frameworks Go teams already use work
// on pgreplica, against a real primary with two streaming replicas: GORM,
// bun, ent, sqlx, goose, golang-migrate, pgbouncer in front of every node,
// pgx's own API through sql.Conn.Raw and pgx query tracers.
//
// It is a module of its own so that pgreplica's go.mod does not grow ORMs.
// Run it from this directory:
//
//	PGREPLICA_INTEGRATION=require go test -race -count=1 ./...
package frameworks
