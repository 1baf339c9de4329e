package pgreplica

import (
	"database/sql/driver"

	"github.com/jackc/pgx/v5/stdlib"
)

// Compile-time checks: replicaRows keeps every interface of pgx's Rows.
var (
	_ driver.Rows                           = (*replicaRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*replicaRows)(nil)
	_ driver.RowsColumnTypeLength           = (*replicaRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*replicaRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*replicaRows)(nil)
)

// replicaRows is pgx's Rows for a read a replica served. A replica that
// dies after sending the rows the caller read, before the end of the
// result, would make Close fail with a lost connection: for QueryRow,
// database/sql's Row.Scan returns that error after scanning a complete
// row. A standby writes nothing, so nothing the caller did not read can be
// lost; Close reports success. Errors while reading rows still reach
// Rows.Next and Rows.Err as they are.
type replicaRows struct {
	*stdlib.Rows
}

func (r *replicaRows) Close() error {
	err := r.Rows.Close()
	if err != nil && isConnectionError(err) {
		return nil
	}
	return err
}

// result wraps rows a standby returned; the conn reuses one wrapper, as it
// has at most one replica connection and so at most one open result from
// it. Rows the primary answered (a hedge, a fallback) are returned as they
// are: there a lost connection may have lost a write, and the caller must
// hear of it.
func (c *conn) result(n *node, rows driver.Rows) driver.Rows {
	sr, ok := rows.(*stdlib.Rows)
	if !ok || !n.standby.Load() {
		return rows // the primary's, or a fake in the routing unit tests
	}
	c.rrows.Rows = sr
	return &c.rrows
}
