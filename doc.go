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
//   - A replica that refuses a read the primary can serve (SQLSTATE 25006,
//     an unlogged table, pg_current_wal_lsn(), an object it has not replayed
//     yet) makes it run again on the primary. A read that fails before its
//     first row because its replica or its connection died is re-run on
//     another node. One connection's failure never takes a node out of
//     routing; a failed probe or a refused new connection does.
//   - Once a checkout (a sql.Conn, or one db call) has used the primary, its
//     later reads use the primary too, so a sql.Conn reads its own writes.
//   - By default (read_your_writes=connector) every read sees every write
//     the *sql.DB acknowledged before the read began, by WAL position: from
//     a replica that has replayed it, else the primary. With
//     read_your_writes=off, plain reads may be as stale as max_replica_lag.
//   - UsePrimary(ctx) forces the primary; WithSession(ctx) gives exact
//     read-your-writes across calls, and SessionToken across processes;
//     WithMaxLag(ctx, d) bounds staleness per call. The comments
//     /* pgreplica:primary */ and /* pgreplica:replica */ in a statement's
//     text override the classifier.
//
// A plain read that its replica has not answered after hedge_after (by
// default a delay that follows the node's recent latency) is sent to a
// second usable node too; the first answer wins and the other is
// cancelled, so a replica that stalls without dying costs a read the hedge
// delay, not the stall. A budget keeps hedges under 5% of reads.
//
// A monitor probes every node each monitor_interval: replicas that are down,
// frozen or behind max_replica_lag get no reads, and when none is usable,
// reads fall back to the primary (or fail with ErrNoReplica). A promoted
// replica becomes the write target when the old primary is gone.
//
// Each node has its own pgxpool; a physical connection is pinned to a
// database/sql connection only for one checkout, so the node pool sizes
// (primary_max_conns, replica_max_conns) are the real caps. Session state
// (SET, LISTEN, temporary tables, session advisory locks, PREPARE) behaves
// as with pgx: it stays with the database/sql connection that made it,
// which keeps its primary connection and sends its statements there until
// database/sql closes it; no other connection ever sees it, and nothing is
// reset, so what a pool's AfterConnect set up is never lost.
//
// The driver's connections forward the optional database/sql interfaces
// that pgx's stdlib implements (context-aware Exec, Query, Prepare, BeginTx,
// Ping, session reset, validity, named-value checking) and return pgx's own
// Rows, so column types, arrays, pgtype values and cancellation behave as with
// pgx. sql.Conn.Raw hands out pgreplica's connection: a RawConn, whose
// PrimaryConn and ReplicaConn give pgx's own *pgx.Conn (CopyFrom,
// SendBatch, WaitForNotification), and which has a Connector() method;
// ConnectorOf does that for you and gives the cluster's Status.
package pgreplica
