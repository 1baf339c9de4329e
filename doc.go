// Package pgreplica is a database/sql driver that makes PostgreSQL read
// replicas a drop-in: change the driver name and list the replicas after the
// primary in the DSN.
//
//	import _ "github.com/pgreplica/pgreplica"
//
//	db, err := sql.Open("pgreplica",
//		"postgres://app:secret@primary:5432,replica-1:5432,replica-2:5432/shop?sslmode=disable")
//
// The *sql.DB works as before, directly or under sqlx and sqlc-generated
// code; underneath, every statement goes where it is safe:
//
//   - Exec, transactions, and queries that may write or lock (INSERT …
//     RETURNING, data-modifying WITH, SELECT … FOR UPDATE, nextval, advisory
//     locks, anything the statement classifier cannot prove read-only) run on
//     the primary.
//   - Plain reads run on a healthy, caught-up replica chosen by a Policy;
//     read-only transactions run on one replica from BEGIN to COMMIT (one
//     whose replica fails before any statement succeeded begins again on
//     another node; one on a standby whose connection is lost at COMMIT
//     has committed: a standby has nothing to lose).
//   - A replica that refuses a statement as a write (SQLSTATE 25006) makes
//     it run again on the primary. A read that fails before its first row
//     because a replica died is re-run on another node.
//   - Once a checkout (a sql.Conn, or one db call) has used the primary, its
//     later reads use the primary too, so a sql.Conn reads its own writes.
//   - UsePrimary(ctx) forces the primary; WithSession(ctx) gives exact
//     read-your-writes across calls by WAL position; WithMaxLag(ctx, d)
//     bounds staleness per call. The comments /* pgreplica:primary */ and
//     /* pgreplica:replica */ in a statement's text override the classifier.
//
// A monitor probes every node each monitor_interval: replicas that are down,
// frozen or behind max_replica_lag get no reads, and when none is usable,
// reads fall back to the primary (or fail with ErrNoReplica). A promoted
// replica becomes the write target when the old primary is gone.
//
// Each node has its own pgxpool; a physical connection is pinned to a
// database/sql connection only for one checkout, so the node pool sizes
// (primary_max_conns, replica_max_conns) are the real caps. A checkout that
// changed session state (SET, LISTEN, temporary tables, session advisory
// locks) has its connection reset before anyone else gets it.
//
// The driver's connections forward the optional database/sql interfaces
// that pgx's stdlib implements (context-aware Exec, Query, Prepare, BeginTx,
// Ping, session reset, validity, named-value checking) and return pgx's own
// Rows, so column types, arrays, pgtype values and cancellation behave as with
// pgx. sql.Conn.Raw hands out pgreplica's connection, which has a
// Connector() method; ConnectorOf does that for you and gives the cluster's
// Status.
package pgreplica
