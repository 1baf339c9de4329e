package pgreplica

import "testing"

// A node that follows its role admits the role's number of leases: fewer
// once it is the primary (those leased already finish; the next releases
// are kept), more again once it is a standby.
func TestPoolLimitFollowsTheRole(t *testing.T) {
	n := &node{sizes: roleSizes{5, 3}, slots: make(chan struct{}, 5)}
	n.standby.Store(true)
	n.followRole()
	admitted := func() int {
		k := 0
		for n.trySlot() {
			k++
		}
		for range k {
			n.freeSlot()
		}
		return k
	}
	if got := admitted(); got != 5 || n.limit.Load() != 5 {
		t.Fatalf("standby: %d leases admitted (limit %d), want 5", got, n.limit.Load())
	}
	n.standby.Store(false)
	n.followRole()
	if got := admitted(); got != 3 {
		t.Fatalf("primary: %d leases admitted, want 3", got)
	}
	// Promoted again while all 5 replica slots are leased.
	n.standby.Store(true)
	n.followRole()
	for range 5 {
		if !n.trySlot() {
			t.Fatal("a standby's slot refused")
		}
	}
	n.standby.Store(false)
	n.followRole()
	if n.owed.Load() != 2 {
		t.Fatalf("owed %d with every slot leased, want 2", n.owed.Load())
	}
	for range 5 {
		n.freeSlot()
	}
	if got := admitted(); got != 3 {
		t.Fatalf("primary after the leases came back: %d admitted, want 3", got)
	}
	// A fixed size never changes.
	f := &node{slots: make(chan struct{}, 4)}
	f.limit.Store(4)
	f.followRole()
	if f.limit.Load() != 4 || len(f.slots) != 0 {
		t.Fatal("a node with its own pool size changed its limit")
	}
}
