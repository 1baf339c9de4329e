package pgreplica

import "time"

// Settings follow the role. A node's pool size and connect timeout are
// those of the role its probes find (primary_max_conns or
// replica_max_conns; no connect timeout of pgreplica's on the primary,
// defaultReplicaConnectTimeout on a replica when the DSN sets none), not
// of its place in the DSN: after a promotion the new primary gets the
// primary's and the old one, back as a standby, the replica's. A node
// whose own connection string sets pool_max_conns keeps that size.
//
// pgxpool cannot resize a pool, so a node that follows its role has a pool
// as large as the larger of the two sizes, and its slots (see takeSlot)
// admit only the role's: the limit holds the others. When the limit
// shrinks while every slot is leased, the leases released next are kept
// (owed), instead of waiting for them.

// roleSizes are a node's pool sizes as a replica and as the primary; zero
// for a node whose size is its own.
type roleSizes [2]int32

func (s roleSizes) of(standby bool) int32 {
	if standby {
		return s[0]
	}
	return s[1]
}

// followRole gives the node the settings of its role now (n.standby); the
// monitor calls it when a probe finds the role changed.
func (n *node) followRole() {
	if n.sizes[0] == 0 || n.slots == nil {
		return
	}
	n.setLimit(n.sizes.of(n.standby.Load()))
}

// setLimit admits at most limit leases at once from now on (leases out
// already are not cut short).
func (n *node) setLimit(limit int32) {
	n.limitMu.Lock()
	defer n.limitMu.Unlock()
	n.limit.Store(limit)
	want := int32(cap(n.slots)) - limit // slots the limit holds
	for have := n.held.Load() + n.owed.Load(); have < want; have++ {
		select {
		case n.slots <- struct{}{}:
			n.held.Add(1)
		default: // every slot is leased: take the next released
			n.owed.Add(1)
		}
	}
	for have := n.held.Load() + n.owed.Load(); have > want; have-- {
		if n.owed.Load() > 0 {
			n.owed.Add(-1)
			continue
		}
		n.held.Add(-1)
		<-n.slots // one the limit held: never blocks
	}
}

// freeSlot gives a lease's slot back, or keeps it for a limit that shrank
// while it was leased.
func (n *node) freeSlot() {
	if n.owed.Load() > 0 && n.keepSlot() {
		return
	}
	<-n.slots
}

func (n *node) keepSlot() bool {
	n.limitMu.Lock()
	defer n.limitMu.Unlock()
	if n.owed.Load() == 0 {
		return false
	}
	n.owed.Add(-1)
	n.held.Add(1)
	return true
}

// connectTimeout bounds a new connection to the node in its role now; 0:
// no bound of pgreplica's (pgxpool's own, 2 minutes, applies).
func (n *node) connectTimeout() time.Duration {
	if n.standby.Load() {
		return n.replicaTimeout
	}
	return n.primaryTimeout
}
