module github.com/pgreplica/pgreplica/internal/oracle

go 1.25.0

require (
	github.com/pganalyze/pg_query_go/v6 v6.2.5
	github.com/pgreplica/pgreplica v0.0.0
	google.golang.org/protobuf v1.36.12
)

replace github.com/pgreplica/pgreplica => ../..
