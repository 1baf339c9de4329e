package pgreplica

import (
	"context"
	"database/sql/driver"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgreplica/pgreplica/internal/sqlclass"
)

// Plain settings (SET name = value, RESET name, SELECT set_config(name,
// value, false): see sqlclass.ParseSettings) are session state that a
// replica connection can hold as well as the primary's. A conn that makes
// them keeps its primary connection, as for any session state, but its
// reads are not pinned to the primary: the conn records each such
// statement, with its arguments, and the replica connection that serves
// its next read runs them first, in one round trip per change (not per
// read). When that connection goes back to the pool, it gets the values it
// had before (also one round trip), or is closed when that fails, so no
// other conn's statement ever runs with them. Everything else (temporary
// tables, locks, LISTEN, PREPARE, SET ROLE, settings made inside a
// transaction, which a rollback would undo) keeps the conn on the primary
// as before.

// settingsLog is what a conn's settings statements did on its primary
// connection, to be done again on a replica connection. It is never
// changed once made: a new statement makes a new log, with a new gen.
type settingsLog struct {
	gen      uint64
	resetAll bool // a RESET ALL came first: the replica connection is closed afterwards
	entries  []settingEntry
	names    []string // the names the entries set, each once: saved and restored
}

// settingEntry is one statement to run again, with its arguments.
type settingEntry struct {
	names []string
	query string
	args  []any
}

// settingRestore is a setting's value on a replica connection before a
// conn's settings were replayed on it; nil: it was not defined.
type settingRestore struct {
	name string
	old  *string
}

// maxSettingEntries bounds the statements a log replays: a conn that sets
// more distinct names than that stays on the primary instead.
const maxSettingEntries = 64

// settingsUndoTimeout bounds restoring a replica connection's settings
// when it goes back to the pool; past it the connection is closed.
const settingsUndoTimeout = time.Second

// settingsGen numbers logs process-wide, so that a replica connection's
// gen never matches a log it was not given.
var settingsGen atomic.Uint64

// errSettingsRefused is what a read gets from replicaReady when a replica
// refused to replay the conn's settings: the conn stays on the primary.
var errSettingsRefused = errors.New("pgreplica: a replica refused the conn's settings")

// noteSettings records a settings statement that succeeded on the conn's
// primary connection. It reports false when the statement cannot be
// replayed after all (a name given by an argument that is not a
// replayable setting, an argument of a type it cannot copy, too many
// names): the conn then keeps to the primary.
func (c *conn) noteSettings(cl classification, query string, args []driver.NamedValue) bool {
	names, ok := resolveSettingNames(cl.settingNames, args)
	if !ok {
		return false
	}
	vals, ok := copySettingArgs(args)
	if !ok {
		return false
	}
	old := c.settings
	next := &settingsLog{gen: settingsGen.Add(1), resetAll: cl.resetAll}
	if old != nil && !cl.resetAll {
		next.resetAll = old.resetAll
		for _, e := range old.entries {
			if !coveredBy(e.names, names) {
				next.entries = append(next.entries, e)
			}
		}
	}
	if !cl.resetAll {
		next.entries = append(next.entries, settingEntry{names: names, query: query, args: vals})
	}
	if len(next.entries) > maxSettingEntries {
		return false
	}
	for _, e := range next.entries {
		for _, n := range e.names {
			if !contains(next.names, n) {
				next.names = append(next.names, n)
			}
		}
	}
	c.settings = next
	return true
}

// resolveSettingNames reads a classification's setting names, taking a
// "$n" from the n-th argument, which must name a replayable setting.
func resolveSettingNames(joined string, args []driver.NamedValue) ([]string, bool) {
	var names []string
	for rest := joined; rest != ""; {
		var name string
		name, rest, _ = strings.Cut(rest, "\x00")
		if strings.HasPrefix(name, "$") {
			i, err := strconv.Atoi(name[1:])
			if err != nil || i < 1 || i > len(args) {
				return nil, false
			}
			var s string
			switch v := args[i-1].Value.(type) {
			case string:
				s = v
			case []byte:
				s = string(v)
			default:
				return nil, false
			}
			if !sqlclass.ReplayableSetting(s) {
				return nil, false
			}
			name = strings.ToLower(s)
		}
		names = append(names, name)
	}
	return names, true
}

// copySettingArgs copies a statement's arguments for a later replay: the
// caller may reuse a []byte once the call returned. Only plain values are
// kept; any other type may change under us.
func copySettingArgs(args []driver.NamedValue) ([]any, bool) {
	if len(args) == 0 {
		return nil, true
	}
	vals := make([]any, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, false
		}
		switch v := a.Value.(type) {
		case nil, string, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
			vals[i] = v
		case []byte:
			vals[i] = string(v) // a text argument either way
		default:
			return nil, false
		}
	}
	return vals, true
}

func coveredBy(names, newer []string) bool {
	for _, n := range names {
		if !contains(newer, n) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// replicaReady makes the replica connection l hold the conn's settings
// before it serves a read of the conn. A connection that has this log
// already costs nothing; otherwise one round trip saves the values of the
// names it has not saved yet and runs the log's statements, in one
// implicit transaction (a failure leaves nothing applied, but the
// connection is closed at its release anyway). A replica's refusal is
// errSettingsRefused: the conn's reads then stay on the primary.
func (c *conn) replicaReady(ctx context.Context, l *lease) error {
	s := c.settings
	if s == nil || l.settingsGen == s.gen {
		return nil
	}
	var save []string
	if s.resetAll {
		l.dirty = true // what RESET ALL undid cannot be put back
	} else {
		for _, name := range s.names {
			if !l.saved(name) {
				save = append(save, name)
			}
		}
	}
	l.node.statements.Add(1)
	olds, err := replaySettings(ctx, l.sc, save, s)
	if err != nil {
		l.node.errors.Add(1)
		l.dirty = true
		if !isRetryableRead(err) && ctx.Err() == nil {
			c.stickyPin, c.pinned = true, true
			return errSettingsRefused
		}
		return err
	}
	for i, name := range save {
		l.restore = append(l.restore, settingRestore{name: name, old: olds[i]})
	}
	l.settingsGen = s.gen
	return nil
}

func (l *lease) saved(name string) bool {
	for _, r := range l.restore {
		if r.name == name {
			return true
		}
	}
	return false
}

// saveSettingsSQL reads n settings' values, NULL for one not defined.
func saveSettingsSQL(n int) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("current_setting($" + strconv.Itoa(i+1) + ", true)")
	}
	return b.String()
}

// restoreSettingsSQL sets n settings back; a NULL value resets one.
func restoreSettingsSQL(n int) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("set_config($" + strconv.Itoa(2*i+1) + ", $" + strconv.Itoa(2*i+2) + ", false)")
	}
	return b.String()
}

// replaySettings saves the values of save and runs s's statements on sc,
// in one round trip on a pgx connection.
func replaySettings(ctx context.Context, sc nodeConn, save []string, s *settingsLog) ([]*string, error) {
	olds := make([]*string, len(save))
	if pc, ok := sc.(*stdlib.Conn); ok {
		b := &pgx.Batch{}
		if len(save) > 0 {
			args := make([]any, len(save))
			for i, n := range save {
				args[i] = n
			}
			b.Queue(saveSettingsSQL(len(save)), args...)
		}
		if s.resetAll {
			b.Queue("RESET ALL")
		}
		for _, e := range s.entries {
			b.Queue(e.query, e.args...)
		}
		br := pc.Conn().SendBatch(ctx, b)
		if len(save) > 0 {
			dest := make([]any, len(save))
			for i := range dest {
				dest[i] = &olds[i]
			}
			if err := br.QueryRow().Scan(dest...); err != nil {
				br.Close()
				return nil, err
			}
		}
		for range b.Len() - min(len(save), 1) {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return nil, err
			}
		}
		return olds, br.Close()
	}
	// A routing test's fake: statement by statement.
	if len(save) > 0 {
		vals := make([]driver.Value, len(save))
		for i, n := range save {
			vals[i] = n
		}
		rows, err := sc.QueryContext(ctx, saveSettingsSQL(len(save)), named(vals))
		if err != nil {
			return nil, err
		}
		row := make([]driver.Value, len(save))
		err = rows.Next(row)
		rows.Close()
		if err != nil {
			return nil, err
		}
		for i, v := range row {
			if v != nil {
				s := toString(v)
				olds[i] = &s
			}
		}
	}
	if s.resetAll {
		if _, err := sc.ExecContext(ctx, "RESET ALL", nil); err != nil {
			return nil, err
		}
	}
	for _, e := range s.entries {
		vals := make([]driver.Value, len(e.args))
		for i, a := range e.args {
			vals[i] = a
		}
		if _, err := sc.ExecContext(ctx, e.query, named(vals)); err != nil {
			return nil, err
		}
	}
	return olds, nil
}

func toString(v driver.Value) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// undoSettings gives a replica connection back the values its settings
// had before a conn's were replayed on it, before it goes back to the
// pool; when that fails it is marked to be closed instead.
func (l *lease) undoSettings() {
	if len(l.restore) == 0 || l.dirty {
		return
	}
	if !l.node.up.Load() {
		// Marked down (frozen, unreachable): closing costs no wait for
		// an answer that may never come.
		l.dirty = true
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), settingsUndoTimeout)
	defer cancel()
	args := make([]any, 0, 2*len(l.restore))
	for _, r := range l.restore {
		var old any
		if r.old != nil {
			old = *r.old
		}
		args = append(args, r.name, old)
	}
	query := restoreSettingsSQL(len(l.restore))
	var err error
	if pc, ok := l.sc.(*stdlib.Conn); ok {
		_, err = pc.Conn().Exec(ctx, query, args...)
	} else {
		vals := make([]driver.Value, len(args))
		for i, a := range args {
			vals[i] = a
		}
		_, err = l.sc.ExecContext(ctx, query, named(vals))
	}
	if err != nil {
		l.dirty = true
	}
}
