package pgreplica

import (
	"errors"
	"fmt"
)

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

// ErrNoPrimary is returned by writes (and by reads that would fall back to
// the primary) when no node is known to be the writable primary: the node
// writes went to answers as a standby and no other node is writable, as
// with a one-host DSN naming a standby, or a primary demoted before another
// is promoted. Status then has Primary "" and the health report
// HealthNoPrimary. A primary that is merely unreachable stays the primary:
// writes to it fail with its connection error. Before failing, a statement
// that needs the primary waits up to primary_wait (Config.PrimaryWait) for
// the first probe round and for a writable primary.
var ErrNoPrimary = errors.New("pgreplica: no usable primary")

// ErrPolicy is returned by reads when the replica Policy panicked while
// choosing a replica; the message names the policy's type and the panic.
var ErrPolicy = errors.New("pgreplica: replica policy failed")

// ErrRawReplicaTx is returned by RawConn.PrimaryConn when the sql.Conn has a
// read-only transaction open on a replica: the primary cannot join it.
var ErrRawReplicaTx = errors.New("pgreplica: PrimaryConn inside a read-only transaction on a replica")

// ErrFallbackShare is returned by plain reads when no replica is usable, the
// primary already took its share of such reads (fallback_max_share), and no
// replica may serve it instead: every replica is down, or the call set its
// own lag bound with WithMaxLag. errors.Is(err, ErrNoReplica) holds too.
var ErrFallbackShare = fmt.Errorf("%w: the primary's share of fallback reads (fallback_max_share) is used up", ErrNoReplica)
