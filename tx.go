package pgreplica

import "database/sql/driver"

var _ driver.Tx = (*tx)(nil)

// tx is a transaction on one node: every statement database/sql runs while
// it is open goes to the conn's txLease.
type tx struct {
	c        *conn
	inner    driver.Tx
	readOnly bool
	session  *session
	opts     driver.TxOptions

	// onStandby is set for a read-only transaction running on a standby:
	// a standby refuses every write and runs no SERIALIZABLE, so losing
	// its connection at COMMIT or ROLLBACK loses nothing.
	onStandby bool
	// movable is set while a read-only transaction begun on a replica has
	// had no statement succeed: it may begin again on another node.
	movable bool
	// failed is set once a statement in it returned an error: COMMIT then
	// reports what the server says, as it would have rolled back.
	failed bool
	// ddl is set once a statement in it may have changed the schema: its
	// commit bounds the connector's catalog reads.
	ddl bool
	// tried holds the nodes it has been begun on.
	tried uint64
}

// Commit ends the transaction. A read-only transaction on a standby whose
// connection is lost commits successfully: nothing it did can be lost or
// refused. A SERIALIZABLE read-only transaction runs on the primary, where
// serializable snapshot isolation may refuse it at commit, and keeps
// reporting a lost commit.
func (t *tx) Commit() error {
	err := t.inner.Commit()
	if err != nil && !t.failed && t.lostOnStandby(err) {
		return nil
	}
	t.c.txLease = nil
	if err == nil && !t.readOnly {
		// A lost COMMIT is reported, not counted: the caller knows it may
		// not have happened.
		for _, s := range [...]*session{t.session, t.c.c.ryw} {
			if s != nil {
				s.noteWrite(t.c.c)
			}
		}
		if t.ddl {
			t.c.c.ddl.noteWrite(t.c.c)
		}
	}
	return err
}

// Rollback ends the transaction; for a read-only one on a standby a lost
// connection is a successful rollback.
func (t *tx) Rollback() error {
	err := t.inner.Rollback()
	if err != nil && t.lostOnStandby(err) {
		return nil
	}
	t.c.txLease = nil
	return err
}

// lostOnStandby reports, and handles, a read-only transaction on a standby
// that failed because its replica did: the lease is dropped as a failed
// read's would be.
func (t *tx) lostOnStandby(err error) bool {
	l := t.c.txLease
	if !t.onStandby || l == nil || !isRetryableRead(err) || isReadOnlyViolation(err) {
		return false
	}
	t.c.txLease = nil
	t.c.dropReplica(l, err)
	return true
}
