// Package integration holds pgreplica's end-to-end tests against a real
// primary and two streaming replicas (internal/testcluster): routing of
// reads and writes, transactions, read-your-writes, session-state hygiene,
// pgx type fidelity, connection lifetime, DSN handling and the sqlx and
// sqlc integrations. The package has no non-test code besides this file.
package integration
