// Package sessions holds the end-to-end tests of pgreplica's
// read-your-writes sessions against a real primary and two streaming
// replicas (internal/testcluster): sessions through database/sql and sqlx,
// their return to the replicas once these replay the session's writes,
// many concurrent sessions next to a lagging replica, session tokens
// carried by the net/http middleware from one process to another, and
// per-call lag limits. The package has no non-test code besides this file.
package sessions
