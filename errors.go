package pgreplica

import "errors"

// ErrInvalidDSN is returned by ParseConfig, sql.Open and the first use of a
// *sql.DB when the DSN is malformed or carries a bad pgreplica option. The
// message names the key or the part that is wrong and never the password.
var ErrInvalidDSN = errors.New("pgreplica: invalid DSN")

// ErrInvalidConfig is returned by NewConnector when the Config has no
// Primary, or a field holds a value out of range. The message names the
// field (and the DSN key that sets it).
var ErrInvalidConfig = errors.New("pgreplica: invalid Config")

// ErrNoReplica is returned by reads when no replica is usable and
// fallback_to_primary is off.
var ErrNoReplica = errors.New("pgreplica: no usable replica")

// ErrClosed is returned by every call made after the connector (and so the
// *sql.DB) was closed.
var ErrClosed = errors.New("pgreplica: connector closed")

// ErrNoPrimary is returned by writes when no node is known to be the
// writable primary (it is down, or the cluster reports two writable nodes
// and pgreplica refuses to guess).
var ErrNoPrimary = errors.New("pgreplica: no usable primary")

// ErrPolicy is returned by reads when the replica Policy panicked while
// choosing a replica; the message names the policy's type and the panic.
var ErrPolicy = errors.New("pgreplica: replica policy failed")

// ErrRawReplicaTx is returned by RawConn.PrimaryConn when the sql.Conn has a
// read-only transaction open on a replica: the primary cannot join it.
var ErrRawReplicaTx = errors.New("pgreplica: PrimaryConn inside a read-only transaction on a replica")
