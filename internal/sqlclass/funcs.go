package sqlclass

import "strings"

// sideEffectFuncs are functions whose call keeps a text off the standbys,
// matched case-insensitively on the last part of the name (the schema is
// ignored). A '*' matches any run of characters. session marks calls that
// leave state on the connection.
var sideEffectFuncs = [...]struct {
	name    string
	session bool
}{
	// Sequences: writes, or session-local values only the caller's
	// connection has (currval, lastval).
	{"nextval", false},
	{"setval", false},
	{"currval", false},
	{"lastval", false},
	// Advisory locks: the lock must be held on the primary where the
	// writes it guards run. Session-level ones outlive the statement.
	{"pg_advisory_lock", true},
	{"pg_advisory_lock_shared", true},
	{"pg_try_advisory_lock", true},
	{"pg_try_advisory_lock_shared", true},
	{"pg_advisory_*", false},
	{"pg_try_advisory_*", false},
	// Session settings.
	{"set_config", true},
	{"setseed", true},
	// Notifications go to listeners of the primary; a standby refuses.
	{"pg_notify", false},
	// Transaction IDs are assigned only on the primary.
	{"txid_current", false},
	{"txid_current_if_assigned", false},
	{"pg_current_xact_id", false},
	{"pg_current_xact_id_if_assigned", false},
	// Large-object writes, and lo_open, which may open for writing.
	{"lo_create", false},
	{"lo_creat", false},
	{"lo_import", false},
	{"lo_export", false},
	{"lo_unlink", false},
	{"lo_from_bytea", false},
	{"lo_put", false},
	{"lo_open", false},
	{"lowrite", false},
	{"lo_truncate", false},
	{"lo_truncate64", false},
	// Descriptors exist only where lo_open ran, inside its transaction.
	{"lo_close", false},
	{"lo_lseek*", false},
	{"lo_tell*", false},
	{"loread", false},
	// WAL, replication slots and origins: writes, or not allowed during
	// recovery.
	{"pg_switch_wal", false},
	// Primary-only: a standby answers 55000 "recovery is in progress";
	// listing them saves the failed round trip.
	{"pg_current_wal_*", false},
	{"pg_walfile_name*", false},
	{"pg_log_standby_snapshot", false},
	{"pg_create_restore_point", false},
	{"pg_create_*_replication_slot", false},
	{"pg_copy_*_replication_slot", false},
	{"pg_drop_replication_slot", false},
	{"pg_replication_slot_advance", false},
	{"pg_logical_slot_*", false},
	{"pg_logical_emit_message", false},
	{"pg_replication_origin_session_setup", true},
	{"pg_replication_origin_*", false},
	// Server administration: meant for the primary, and on a standby
	// would act on the wrong server. pg_cancel_backend and
	// pg_terminate_backend take a pid that only means something on the
	// server it was read from; applications read it on the primary
	// (pg_stat_activity there), so the call goes there too. A caller who
	// means a standby's backend says so with a replica hint.
	{"pg_terminate_backend", false},
	{"pg_cancel_backend", false},
	{"pg_log_backend_memory_contexts", false},
	{"pg_reload_conf", false},
	{"pg_rotate_logfile", false},
	// Statistics resets succeed on a standby but reset the wrong server's.
	{"pg_stat_reset*", false},
	{"pg_stat_statements_reset", false},
	{"pg_backup_start", false},
	{"pg_backup_stop", false},
	{"pg_start_backup", false},
	{"pg_stop_backup", false},
	{"pg_import_system_collations", false},
	{"pg_file_write", false},
	{"pg_file_rename", false},
	{"pg_file_unlink", false},
	{"pg_file_sync", false},
	// Would act on the standby itself: promote it or stop its replay.
	{"pg_promote", false},
	{"pg_wal_replay_pause", false},
	{"pg_wal_replay_resume", false},
	// dblink runs arbitrary SQL elsewhere and keeps named connections.
	{"dblink*", true},
}

// SideEffectFunc reports whether a call of the named function (the last
// part of a qualified name, as written between quotes or without them)
// keeps a text off the standbys, and whether the call leaves state on the
// connection. Names are truncated to 63 bytes as PostgreSQL does.
func SideEffectFunc(name string) (listed, session bool) {
	if len(name) > maxIdentLen {
		name = name[:maxIdentLen]
	}
	if len(name) < 6 {
		return false, false // shorter than every entry
	}
	first := name[0] | 0x20 // ASCII lower case; non-letters find no bucket
	if first < 'a' || first > 'z' {
		return false, false
	}
	for _, f := range funcIndex[first-'a'] {
		if len(name) >= len(f.prefix)+len(f.suffix) && (f.wildcard || len(name) == len(f.prefix)) &&
			sqlHasPrefixFold(name, f.prefix) && sqlHasPrefixFold(name[len(name)-len(f.suffix):], f.suffix) {
			listed = true
			session = session || f.session
		}
	}
	return listed, session
}

// funcPattern is an entry of sideEffectFuncs split at its '*'.
type funcPattern struct {
	prefix, suffix string
	wildcard       bool
	session        bool
}

// funcIndex holds sideEffectFuncs by first letter, so that the common
// calls (count, coalesce, now) are rejected after a few comparisons.
var funcIndex = func() (idx [26][]funcPattern) {
	for _, f := range sideEffectFuncs {
		p := funcPattern{prefix: f.name, session: f.session}
		if star := strings.IndexByte(f.name, '*'); star >= 0 {
			p = funcPattern{prefix: f.name[:star], suffix: f.name[star+1:], wildcard: true, session: f.session}
		}
		i := f.name[0] - 'a'
		idx[i] = append(idx[i], p)
	}
	return idx
}()

// sqlHasPrefixFold reports whether s starts with the lower-case ASCII prefix,
// folding only ASCII letters like PostgreSQL does for identifiers.
func sqlHasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}
