// Package oracle checks the statement classifier (internal/sqlclass)
// against PostgreSQL's own parser, pg_query_go's libpg_query (PostgreSQL
// 17's grammar), by differential fuzzing. It is a module of its own so
// that no user of pgreplica ever compiles its cgo: only its tests use it.
//
//	cd internal/oracle && go test -run='^$' -fuzz=FuzzOracle -fuzztime=10m
package oracle
