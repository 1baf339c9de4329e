package pgreplica

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
)

// Compile-time checks of the interfaces database/sql looks for.
var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// DriverName is the name pgreplica registers with database/sql.
const DriverName = "pgreplica"

func init() {
	sql.Register(DriverName, &Driver{})
}

// Driver is the database/sql driver registered as "pgreplica". Each
// sql.Open gets its own Connector, so its own pools and monitor, closed by
// db.Close.
type Driver struct {
	// c is set in the Driver a Connector reports as its own: db.Driver()
	// returns it, which lets ConnectorOf find the Connector without a
	// connection. The registered Driver has none.
	c *Connector
}

// Open is called by database/sql only for drivers without OpenConnector;
// it exists to satisfy driver.Driver and opens a connector that nothing
// would close, so it refuses.
func (d *Driver) Open(string) (driver.Conn, error) {
	return nil, errors.New("pgreplica: use sql.Open, which calls OpenConnector")
}

// OpenConnector parses the DSN and starts the connector's pools and
// monitor. A malformed DSN makes sql.Open fail with ErrInvalidDSN.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return newConnector(*cfg)
}

// ConnectorOf returns the Connector behind a *sql.DB opened with
// sql.Open("pgreplica", …) or sql.OpenDB(connector), to reach its status.
// It needs no connection: db.Driver() leads to the Connector, so it
// answers at once even while every connection the pool allows is in use
// (a health check under load). It fails with ErrClosed once db is closed.
// Only when db.Driver() is not pgreplica's, as with a wrapping driver, does
// it borrow a connection (bounded by ctx) to look behind the wrapper.
func ConnectorOf(ctx context.Context, db *sql.DB) (*Connector, error) {
	if d, ok := db.Driver().(*Driver); ok && d.c != nil {
		if d.c.closed.Load() {
			return nil, ErrClosed
		}
		return d.c, nil
	}
	sc, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	var found *Connector
	err = sc.Raw(func(dc any) error {
		c, ok := dc.(*conn)
		if !ok {
			return errors.New("pgreplica: the *sql.DB does not use the pgreplica driver")
		}
		found = c.c
		return nil
	})
	return found, err
}
