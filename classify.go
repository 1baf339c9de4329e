package pgreplica

import "strings"

// classification is what the router needs to know about one SQL text.
type classification struct {
	readOnly bool // provably read-only: may run on a hot standby
	// sessionState: leaves state on the connection after the statement:
	// SET (not SET LOCAL), RESET, LISTEN, UNLISTEN, PREPARE, DEALLOCATE,
	// DECLARE ... WITH HOLD, CREATE TEMP objects, LOAD, DISCARD, DO,
	// session advisory locks, set_config, dblink.
	sessionState bool
	hint         routeHint // from a comment hint
}

// routeHint is a routing request written into the SQL text as a comment.
type routeHint uint8

const (
	hintNone routeHint = iota
	hintPrimary
	hintReplica
)

// classify reads one SQL text (possibly several statements) and reports
// whether a hot standby may run it, whether it leaves session state behind
// and which hint it carries. It never allocates. When in doubt it answers
// readOnly false and sessionState true: a wrongly routed write fails on the
// standby, a needless reset only costs time.
func classify(query string) classification {
	c := classifier{lx: sqlLexer{src: query}, ro: true}
	for {
		t := c.lx.next()
		switch t.kind {
		case tokEOF:
			c.endStatement()
			return classification{
				readOnly:     c.ro && c.statements > 0 && c.depth == 0,
				sessionState: c.session,
				hint:         c.lx.hint,
			}
		case tokError:
			// The server will reject the text, but our view of where its
			// literals end may differ from the server's: claim nothing.
			return classification{sessionState: true, hint: c.lx.hint}
		case tokSemicolon:
			if c.depth != 0 {
				// No read-only statement has a ';' inside parentheses.
				c.ro = false
				c.depth = 0
			}
			c.endStatement()
			c.prev, c.prevKw = sqlToken{}, kwNone
			continue
		}
		c.feed(t)
	}
}

// stmtPhase is how far the classifier has got into one statement.
type stmtPhase uint8

const (
	phHead        stmtPhase = iota // before the first keyword; '(' is skipped
	phExplain                      // after EXPLAIN [ANALYZE] [VERBOSE], before its target
	phExplainOpts                  // inside EXPLAIN ( options )
	phBody                         // after the first keyword
)

// stmtState is what the classifier tracks about the current statement.
type stmtState struct {
	started       bool // has any token
	phase         stmtPhase
	first         sqlKeyword // first keyword, kwNone if the statement starts otherwise
	roHead        bool       // starts like a read-only statement
	explainTarget bool       // the head being read is an EXPLAIN target
	optDepth      int        // paren depth of EXPLAIN's option list
	pendingSet    bool       // after SET: the next token tells whether it is SET LOCAL
	sawFor        bool       // FOR seen: a later SHARE is a locking clause
	sawCreate     bool       // CREATE seen: TEMP makes a session object
	sawInto       bool       // INTO seen: SELECT INTO TEMP makes a session table
}

type classifier struct {
	lx         sqlLexer
	st         stmtState
	prev       sqlToken   // previous token of this statement
	prevKw     sqlKeyword // keyword of prev
	depth      int        // parenthesis depth
	statements int        // non-empty statements seen
	ro         bool       // nothing seen so far rules out a standby
	session    bool
}

func (c *classifier) endStatement() {
	if !c.st.started {
		return // empty statements are ignored
	}
	c.statements++
	if c.st.phase != phBody || !c.st.roHead {
		c.ro = false
	}
	if c.st.pendingSet {
		c.session = true // a bare SET: conservative
	}
	c.st = stmtState{}
}

// feed passes one token of the current statement to the classifier.
func (c *classifier) feed(t sqlToken) {
	st := &c.st
	st.started = true
	kw := kwNone
	switch t.kind {
	case tokIdent:
		kw = lookupSQLKeyword(c.lx.src[t.start:t.end])
		c.applyKeyword(kw, t)
	case tokQuotedIdent:
		if st.sawCreate || st.sawInto {
			c.tempSchema(c.lx.src[t.start:t.end])
		}
	case tokLParen:
		c.depth++
		switch c.prev.kind {
		case tokIdent, tokQuotedIdent:
			c.call(c.lx.src[c.prev.start:c.prev.end])
		case tokUnicodeIdent:
			// A call of a U&"..." name could spell any function.
			c.ro = false
		}
	case tokRParen:
		c.depth--
		if c.depth < 0 {
			c.ro = false
		}
	}

	if st.pendingSet {
		st.pendingSet = false
		switch kw {
		case kwLocal, kwTransaction, kwConstraints:
			// Scoped to the current transaction.
		default:
			c.session = true
		}
	}

	switch st.phase {
	case phHead:
		c.head(t, kw)
	case phExplain:
		switch {
		case kw == kwAnalyze || kw == kwAnalyse || kw == kwVerbose:
			// Old-style options.
		case t.kind == tokLParen:
			if c.peekQueryStart() {
				st.phase, st.explainTarget = phHead, true
			} else {
				st.phase, st.optDepth = phExplainOpts, c.depth
			}
		default:
			st.phase, st.explainTarget = phHead, true
			c.head(t, kw)
		}
	case phExplainOpts:
		if t.kind == tokRParen && c.depth < st.optDepth {
			st.phase = phExplain
		}
	}
	c.prev, c.prevKw = t, kw
}

// head handles a token where a statement (or an EXPLAIN target) begins.
func (c *classifier) head(t sqlToken, kw sqlKeyword) {
	st := &c.st
	if t.kind == tokLParen {
		return // (SELECT ...) and ((VALUES ...))
	}
	st.phase = phBody
	if st.explainTarget {
		// Only a query: EXPLAIN EXECUTE could run anything.
		switch kw {
		case kwSelect, kwValues, kwTable, kwWith:
			st.roHead = true
		}
		return
	}
	st.first = kw
	switch kw {
	case kwSelect, kwValues, kwTable, kwWith, kwShow:
		st.roHead = true
	case kwExplain:
		st.phase = phExplain
	case kwSet:
		st.pendingSet = true
	case kwReset, kwListen, kwUnlisten, kwPrepare, kwDeallocate, kwLoad, kwDiscard:
		c.session = true
	case kwDo:
		// An anonymous block may SET, LISTEN or create temp tables.
		c.session = true
	}
}

// applyKeyword applies the rules that hold for a keyword anywhere in the text.
func (c *classifier) applyKeyword(kw sqlKeyword, t sqlToken) {
	st := &c.st
	switch kw {
	case kwNone:
		if st.sawCreate || st.sawInto {
			c.tempSchema(c.lx.src[t.start:t.end])
		}
	case kwInsert, kwUpdate, kwDelete, kwMerge, kwCopy, kwNotify, kwListen,
		kwLock, kwTruncate, kwCall, kwAlter, kwDrop, kwGrant, kwSet, kwReset:
		c.ro = false
	case kwInto:
		c.ro = false // SELECT INTO creates a table
		st.sawInto = true
	case kwCreate:
		c.ro = false
		st.sawCreate = true
	case kwFor:
		st.sawFor = true
	case kwShare:
		if st.sawFor {
			c.ro = false // FOR SHARE, FOR KEY SHARE
		}
	case kwTemp, kwTemporary:
		if st.sawCreate || st.sawInto {
			c.session = true
		}
	case kwHold:
		if st.first == kwDeclare && c.prevKw == kwWith {
			c.session = true // a WITH HOLD cursor outlives its transaction
		}
	}
}

// tempSchema marks an object created in pg_temp as session state.
func (c *classifier) tempSchema(name string) {
	if sqlHasPrefixFold(name, "pg_temp") && (len(name) == 7 || name[7] == '_') {
		c.session = true
	}
}

// call applies sideEffectFuncs to a call of the named function.
func (c *classifier) call(name string) {
	if len(name) < 6 {
		return // shorter than every entry
	}
	first := name[0] | 0x20 // ASCII lower case; non-letters find no bucket
	if first < 'a' || first > 'z' {
		return
	}
	for _, f := range funcIndex[first-'a'] {
		if len(name) >= len(f.prefix)+len(f.suffix) && (f.wildcard || len(name) == len(f.prefix)) &&
			sqlHasPrefixFold(name, f.prefix) && sqlHasPrefixFold(name[len(name)-len(f.suffix):], f.suffix) {
			c.ro = false
			if f.session {
				c.session = true
			}
		}
	}
}

// peekQueryStart reports whether the token after EXPLAIN's '(' begins a
// query rather than an option list.
func (c *classifier) peekQueryStart() bool {
	lx := c.lx // a copy: peeking must not advance the real lexer
	t := lx.next()
	if t.kind == tokLParen {
		return true
	}
	if t.kind != tokIdent {
		return false
	}
	switch lookupSQLKeyword(lx.src[t.start:t.end]) {
	case kwSelect, kwValues, kwTable, kwWith:
		return true
	}
	return false
}

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
	// WAL, replication slots and origins: writes, or not allowed during
	// recovery.
	{"pg_switch_wal", false},
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
	// would act on the wrong server.
	{"pg_terminate_backend", false},
	{"pg_cancel_backend", false},
	{"pg_log_backend_memory_contexts", false},
	{"pg_reload_conf", false},
	{"pg_rotate_logfile", false},
	{"pg_stat_reset*", false},
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

type sqlKeyword uint8

const (
	kwNone sqlKeyword = iota
	kwAlter
	kwAnalyse
	kwAnalyze
	kwCall
	kwConstraints
	kwCopy
	kwCreate
	kwDeallocate
	kwDeclare
	kwDelete
	kwDiscard
	kwDo
	kwDrop
	kwExplain
	kwFor
	kwGrant
	kwHold
	kwInsert
	kwInto
	kwListen
	kwLoad
	kwLocal
	kwLock
	kwMerge
	kwNotify
	kwPrepare
	kwReset
	kwSelect
	kwSet
	kwShare
	kwShow
	kwTable
	kwTemp
	kwTemporary
	kwTransaction
	kwTruncate
	kwUnlisten
	kwUpdate
	kwValues
	kwVerbose
	kwWith
)

type sqlKeywordEntry struct {
	name string
	kw   sqlKeyword
}

// sqlKeywords are the words the classifier acts on, in lower case.
var sqlKeywords = [...]sqlKeywordEntry{
	{"alter", kwAlter},
	{"analyse", kwAnalyse},
	{"analyze", kwAnalyze},
	{"call", kwCall},
	{"constraints", kwConstraints},
	{"copy", kwCopy},
	{"create", kwCreate},
	{"deallocate", kwDeallocate},
	{"declare", kwDeclare},
	{"delete", kwDelete},
	{"discard", kwDiscard},
	{"do", kwDo},
	{"drop", kwDrop},
	{"explain", kwExplain},
	{"for", kwFor},
	{"grant", kwGrant},
	{"hold", kwHold},
	{"insert", kwInsert},
	{"into", kwInto},
	{"listen", kwListen},
	{"load", kwLoad},
	{"local", kwLocal},
	{"lock", kwLock},
	{"merge", kwMerge},
	{"notify", kwNotify},
	{"prepare", kwPrepare},
	{"reset", kwReset},
	{"select", kwSelect},
	{"set", kwSet},
	{"share", kwShare},
	{"show", kwShow},
	{"table", kwTable},
	{"temp", kwTemp},
	{"temporary", kwTemporary},
	{"transaction", kwTransaction},
	{"truncate", kwTruncate},
	{"unlisten", kwUnlisten},
	{"update", kwUpdate},
	{"values", kwValues},
	{"verbose", kwVerbose},
	{"with", kwWith},
}

// maxSQLKeywordLen is the length of the longest keyword.
const maxSQLKeywordLen = 11

// sqlKeywordIndex holds the keywords by length and first letter: most identifiers
// land in an empty bucket, the rest are compared with one or two entries.
var sqlKeywordIndex = func() (idx [maxSQLKeywordLen + 1][26][]sqlKeywordEntry) {
	for _, k := range sqlKeywords {
		b := &idx[len(k.name)][k.name[0]-'a']
		*b = append(*b, k)
	}
	return idx
}()

// lookupSQLKeyword returns the keyword an unquoted identifier spells,
// ignoring ASCII case only, like PostgreSQL.
func lookupSQLKeyword(s string) sqlKeyword {
	if len(s) < 2 || len(s) > maxSQLKeywordLen {
		return kwNone
	}
	first := s[0] | 0x20
	if first < 'a' || first > 'z' {
		return kwNone
	}
	for _, k := range sqlKeywordIndex[len(s)][first-'a'] {
		if sqlHasPrefixFold(s, k.name) {
			return k.kw
		}
	}
	return kwNone
}

type sqlTokKind uint8

const (
	tokEOF          sqlTokKind = iota
	tokError                   // unterminated literal or comment, or junk after a number
	tokIdent                   // unquoted identifier or keyword
	tokQuotedIdent             // "identifier"; the token spans the text between the quotes
	tokUnicodeIdent            // U&"identifier", whose escapes are not decoded
	tokString                  // any string constant, dollar-quoted included
	tokNumber
	tokParam // $1
	tokLParen
	tokRParen
	tokSemicolon
	tokOther // operators and other punctuation, one byte each
)

type sqlToken struct {
	kind       sqlTokKind
	start, end int // byte offsets into the source
}

// sqlLexer splits SQL into tokens the way PostgreSQL's scanner does (with
// standard_conforming_strings on), as far as where tokens, literals and
// comments begin and end. It notes comment hints as it skips them.
type sqlLexer struct {
	src  string
	pos  int
	hint routeHint
	// lineCommentAtEOF is set when the text ends inside a -- comment, so
	// that text appended to it without a newline would be commented out.
	lineCommentAtEOF bool
}

// Character classes, after PostgreSQL's scan.l.
const (
	cSpace      = 1 << iota // [ \t\n\r\f\v]
	cIdentStart             // [A-Za-z\200-\377_]
	cDigit                  // [0-9]
)

var sqlCharClass = func() (t [256]uint8) {
	for _, c := range " \t\n\r\f\v" {
		t[c] = cSpace
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = cIdentStart
		t[c-'a'+'A'] = cIdentStart
	}
	t['_'] = cIdentStart
	for c := 0x80; c <= 0xff; c++ {
		t[c] = cIdentStart
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = cDigit
	}
	return t
}()

func isSQLSpace(c byte) bool      { return sqlCharClass[c]&cSpace != 0 }
func isSQLIdentStart(c byte) bool { return sqlCharClass[c]&cIdentStart != 0 }
func isSQLDigit(c byte) bool      { return sqlCharClass[c]&cDigit != 0 }

// isSQLIdentCont also covers '$', which PostgreSQL allows inside identifiers.
func isSQLIdentCont(c byte) bool { return sqlCharClass[c]&(cIdentStart|cDigit) != 0 || c == '$' }

// next returns the next token, skipping whitespace and comments.
func (lx *sqlLexer) next() sqlToken {
	if !lx.skip() {
		return sqlToken{kind: tokError, start: lx.pos, end: lx.pos}
	}
	s := lx.src
	start := lx.pos
	if start >= len(s) {
		return sqlToken{kind: tokEOF, start: start, end: start}
	}
	c := s[start]
	switch {
	case c == '\'':
		return lx.str(start, start, false)
	case c == '"':
		return lx.quotedIdent(start + 1)
	case (c == 'e' || c == 'E') && start+1 < len(s) && s[start+1] == '\'':
		// Only at the start of a token: in "somee'x'" the e is part of
		// the identifier.
		return lx.str(start, start+1, true)
	case (c == 'u' || c == 'U') && start+2 < len(s) && s[start+1] == '&' &&
		(s[start+2] == '\'' || s[start+2] == '"'):
		if s[start+2] == '\'' {
			return lx.str(start, start+2, false) // escapes do not affect where it ends
		}
		t := lx.quotedIdent(start + 3)
		if t.kind == tokQuotedIdent {
			t.kind = tokUnicodeIdent
		}
		return t
	case isSQLIdentStart(c):
		i := start + 1
		for i < len(s) && isSQLIdentCont(s[i]) {
			i++
		}
		lx.pos = i
		return sqlToken{kind: tokIdent, start: start, end: i}
	case isSQLDigit(c) || c == '.' && start+1 < len(s) && isSQLDigit(s[start+1]):
		return lx.number(start)
	case c == '$':
		return lx.dollar(start)
	}
	lx.pos = start + 1
	kind := tokOther
	switch c {
	case '(':
		kind = tokLParen
	case ')':
		kind = tokRParen
	case ';':
		kind = tokSemicolon
	}
	return sqlToken{kind: kind, start: start, end: start + 1}
}

// skip advances past whitespace and comments. It reports false for an
// unterminated block comment.
func (lx *sqlLexer) skip() bool {
	s := lx.src
	for lx.pos < len(s) {
		c := s[lx.pos]
		switch {
		case isSQLSpace(c):
			lx.pos++
		case c == '-' && lx.pos+1 < len(s) && s[lx.pos+1] == '-':
			start := lx.pos + 2
			end := start
			for end < len(s) && s[end] != '\n' && s[end] != '\r' {
				end++
			}
			lx.noteHint(s[start:end])
			if end == len(s) {
				lx.lineCommentAtEOF = true
			}
			lx.pos = end
		case c == '/' && lx.pos+1 < len(s) && s[lx.pos+1] == '*':
			// Block comments nest; only the outermost one's text can be
			// a hint, so a commented-out hint stays inert.
			start := lx.pos + 2
			i, depth := start, 1
			for depth > 0 {
				if i+1 >= len(s) {
					lx.pos = len(s)
					return false
				}
				switch {
				case s[i] == '/' && s[i+1] == '*':
					depth++
					i += 2
				case s[i] == '*' && s[i+1] == '/':
					depth--
					i += 2
				default:
					i++
				}
			}
			lx.noteHint(s[start : i-2])
			lx.pos = i
		default:
			return true
		}
	}
	return true
}

// noteHint records a routing hint if a comment's text is one. A primary
// hint wins over a replica hint.
func (lx *sqlLexer) noteHint(text string) {
	for len(text) > 0 && isSQLSpace(text[0]) {
		text = text[1:]
	}
	for len(text) > 0 && isSQLSpace(text[len(text)-1]) {
		text = text[:len(text)-1]
	}
	const primary, replica = "pgreplica:primary", "pgreplica:replica"
	switch {
	case len(text) != len(primary):
	case sqlHasPrefixFold(text, primary):
		lx.hint = hintPrimary
	case sqlHasPrefixFold(text, replica) && lx.hint == hintNone:
		lx.hint = hintReplica
	}
}

// str scans a string constant whose opening quote is at s[quote]. In an
// E-string a backslash escapes the next byte; in every string a doubled
// quote stands for one.
func (lx *sqlLexer) str(start, quote int, backslash bool) sqlToken {
	s := lx.src
	i := quote + 1
	for i < len(s) {
		if !backslash {
			k := strings.IndexByte(s[i:], '\'')
			if k < 0 {
				break
			}
			i += k
		}
		switch s[i] {
		case '\\':
			if backslash {
				i += 2
				continue
			}
		case '\'':
			if i+1 < len(s) && s[i+1] == '\'' {
				i += 2
				continue
			}
			lx.pos = i + 1
			return sqlToken{kind: tokString, start: start, end: i + 1}
		}
		i++
	}
	lx.pos = len(s)
	return sqlToken{kind: tokError, start: start, end: len(s)}
}

// quotedIdent scans a double-quoted identifier whose text starts at s[i].
func (lx *sqlLexer) quotedIdent(i int) sqlToken {
	s := lx.src
	start := i
	for {
		k := strings.IndexByte(s[i:], '"')
		if k < 0 {
			lx.pos = len(s)
			return sqlToken{kind: tokError, start: start, end: len(s)}
		}
		i += k
		if i+1 < len(s) && s[i+1] == '"' {
			i += 2
			continue
		}
		lx.pos = i + 1
		if i == start {
			// PostgreSQL rejects a zero-length delimited identifier.
			return sqlToken{kind: tokError, start: start, end: i}
		}
		return sqlToken{kind: tokQuotedIdent, start: start, end: i}
	}
}

// number scans a numeric constant: 42, 1_000, 1.5e-3, .5, 0x1F, 0o17, 0b1.
func (lx *sqlLexer) number(start int) sqlToken {
	s := lx.src
	i := start
	if s[i] == '0' && i+1 < len(s) && strings.IndexByte("xXoObB", s[i+1]) >= 0 {
		i += 2
		for i < len(s) && (isSQLDigit(s[i]) || isSQLIdentStart(s[i]) && s[i] < 0x80) {
			i++
		}
	} else {
		i = skipSQLDigits(s, i)
		if i < len(s) && s[i] == '.' && !(i+1 < len(s) && s[i+1] == '.') {
			i = skipSQLDigits(s, i+1)
		}
		if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
			j := i + 1
			if j < len(s) && (s[j] == '+' || s[j] == '-') {
				j++
			}
			if j < len(s) && isSQLDigit(s[j]) {
				i = skipSQLDigits(s, j)
			}
		}
	}
	lx.pos = i
	if i < len(s) && isSQLIdentStart(s[i]) {
		// Trailing junk such as 1e'..': servers before 15 read it as 1
		// followed by an E-string. Refuse rather than guess.
		return sqlToken{kind: tokError, start: start, end: i}
	}
	return sqlToken{kind: tokNumber, start: start, end: i}
}

func skipSQLDigits(s string, i int) int {
	for i < len(s) && (isSQLDigit(s[i]) || s[i] == '_') {
		i++
	}
	return i
}

// dollar scans what starts with '$': a parameter ($1), a dollar-quoted
// string ($$...$$, $tag$...$tag$) or a lone '$'.
func (lx *sqlLexer) dollar(start int) sqlToken {
	s := lx.src
	i := start + 1
	if i < len(s) && isSQLDigit(s[i]) {
		for i < len(s) && isSQLDigit(s[i]) {
			i++
		}
		lx.pos = i
		if i < len(s) && isSQLIdentStart(s[i]) {
			// $1e'..' is junk to the server: refuse like for numbers.
			return sqlToken{kind: tokError, start: start, end: i}
		}
		return sqlToken{kind: tokParam, start: start, end: i}
	}
	if i < len(s) && isSQLIdentStart(s[i]) {
		for i < len(s) && (isSQLIdentStart(s[i]) || isSQLDigit(s[i])) {
			i++
		}
	}
	if i < len(s) && s[i] == '$' {
		delim := s[start : i+1]
		body := i + 1
		k := strings.Index(s[body:], delim)
		if k < 0 {
			lx.pos = len(s)
			return sqlToken{kind: tokError, start: start, end: len(s)}
		}
		lx.pos = body + k + len(delim)
		return sqlToken{kind: tokString, start: start, end: lx.pos}
	}
	// Not a dollar quote: the server too takes '$' alone and rescans.
	lx.pos = start + 1
	return sqlToken{kind: tokOther, start: start, end: start + 1}
}
