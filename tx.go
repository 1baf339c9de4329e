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
}

func (t *tx) Commit() error {
	err := t.inner.Commit()
	t.c.txLease = nil
	if err == nil && !t.readOnly && t.session != nil {
		t.session.noteWrite(t.c.c)
	}
	return err
}

func (t *tx) Rollback() error {
	err := t.inner.Rollback()
	t.c.txLease = nil
	return err
}
