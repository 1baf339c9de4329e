package pgreplica

import "github.com/pgreplica/pgreplica/internal/sqlclass"

// classification is what the router needs to know about one SQL text; see
// internal/sqlclass, which reads the text.
type classification struct {
	readOnly     bool // provably read-only: may run on a hot standby
	pure         bool // read-only and without effect wherever it runs: it calls only known built-ins
	sessionState bool // leaves state on the connection after the statement
	catalog      bool // may read the schema: after DDL it must see it
	ddl          bool // may change the schema
	hint         routeHint
	// settings: the text only changes plain settings of the session
	// (sqlclass.ParseSettings): a conn records it, and the replica
	// connections that serve its reads run it too (settings.go).
	settings     bool
	resetAll     bool   // it is RESET ALL
	settingNames string // the names it sets: sqlclass.Settings.Names
}

// routeHint is a routing request written into the SQL text as a comment.
type routeHint = sqlclass.Hint

const (
	hintNone    = sqlclass.HintNone
	hintPrimary = sqlclass.HintPrimary
	hintReplica = sqlclass.HintReplica
)

// classify reads one SQL text; it allocates only for a text that changes
// settings.
func classify(query string) classification {
	c := sqlclass.Classify(query)
	cl := classification{readOnly: c.ReadOnly, pure: c.Pure, sessionState: c.SessionState, catalog: c.Catalog, ddl: c.DDL, hint: c.Hint}
	if c.SessionState && !c.ReadOnly {
		if s, ok := sqlclass.ParseSettings(query); ok {
			cl.settings, cl.resetAll, cl.settingNames = true, s.ResetAll, s.Names
		}
	}
	return cl
}
