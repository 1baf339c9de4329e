package faults

import (
	"context"
	"database/sql"
	"time"

	"github.com/pgreplica/pgreplica"
)

// maxLagQuerier runs every read with a context that accepts an hour of lag.
type maxLagQuerier struct{ db *sql.DB }

func pgreplicaMaxLag(db *sql.DB) maxLagQuerier { return maxLagQuerier{db} }

func (q maxLagQuerier) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return q.db.QueryRowContext(pgreplica.WithMaxLag(ctx, time.Hour), query, args...)
}
