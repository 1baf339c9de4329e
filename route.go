package pgreplica

import (
	"context"
	"sync"
)

// Reason says why a statement went to the node that served it.
type Reason uint8

// The reasons a statement is routed where it is.
const (
	ReasonNone            Reason = iota
	ReasonRead                   // a plain read, served by a replica
	ReasonWrite                  // Exec: always the primary
	ReasonClassifier             // the text may write or lock: primary
	ReasonHint                   // a /* pgreplica:… */ comment chose the node
	ReasonUsePrimary             // the ctx carried UsePrimary
	ReasonPinned                 // this checkout used the primary earlier
	ReasonTransaction            // inside a transaction, on its node
	ReasonSession                // the session's writes are not on any usable replica yet
	ReasonFallback               // no usable replica: the primary served the read
	ReasonRetry                  // a replica failed before the first row; served by another node
	ReasonReadOnly               // a replica refused it as a write (SQLSTATE 25006): re-run on the primary
	ReasonRecoveryError          // a replica cannot serve it during recovery (0A000, 55000, XX000): re-run on the primary
	ReasonUndefinedObject        // a replica did not know an object (not replayed yet?): re-run on the primary
	ReasonHedge                  // the first node was slow to answer a read: a second one, sent after the hedge delay, answered first
	ReasonPrimaryOnly            // the DSN names no replica: the primary serves every read, by design
	ReasonStale                  // no replica within the lag bound and the primary's fallback share (fallback_max_share) used up: the least-lagged replica served it
)

var reasonNames = [...]string{"none", "read", "write", "classifier", "hint", "use_primary", "pinned", "transaction", "session", "fallback", "retry", "read_only_error", "recovery_error", "undefined_object", "hedge", "primary_only", "stale"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// rerouteReason counts, per node, why reads left it.
type rerouteReason uint8

const (
	rerouteDown         rerouteReason = iota // it failed or was known down
	rerouteLag                               // behind max_replica_lag or the session
	rerouteReadOnly                          // it answered 25006
	rerouteRetry                             // a read on it failed and was retried elsewhere
	rerouteStandbyError                      // it refused a read only the primary can serve
	rerouteFull                              // it refused a new connection: no free slot
	numRerouteReasons
)

var rerouteNames = [numRerouteReasons]string{"down", "lag", "read_only_error", "retry", "standby_error", "full"}

func (r rerouteReason) String() string { return rerouteNames[r] }

// Route records which node served the latest statement run with a context
// from WithRoute, and why. It is safe for concurrent use.
type Route struct {
	mu     sync.Mutex
	node   string
	reason Reason
}

// WithRoute returns a context that records, in the returned Route, the node
// and reason of each statement run with it (the latest one wins).
func WithRoute(ctx context.Context) (context.Context, *Route) {
	r := &Route{}
	return with(ctx, func(o *routeOptions) { o.report = r }), r
}

// Node is the host:port of the node that served the latest statement, or
// "" when none ran yet.
func (r *Route) Node() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.node
}

// Reason is why the latest statement went to Node.
func (r *Route) Reason() Reason {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reason
}

func (r *Route) set(n *node, why Reason) {
	r.mu.Lock()
	r.node, r.reason = n.addr, why
	r.mu.Unlock()
}
