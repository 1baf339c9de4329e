// Package sqlclass reads SQL texts the way PostgreSQL's scanner does and
// tells the router whether a hot standby may run them.
package sqlclass

import "unicode/utf8"

// Classification is what the router needs to know about one SQL text.
type Classification struct {
	// ReadOnly: provably read-only, so a hot standby may run it.
	ReadOnly bool
	// SessionState: leaves state on the connection after the statement:
	// SET (not SET LOCAL), RESET, LISTEN, UNLISTEN, PREPARE, DEALLOCATE,
	// DECLARE ... WITH HOLD, CREATE TEMP objects, LOAD, DISCARD, DO,
	// session advisory locks, set_config, dblink.
	SessionState bool
	// Pure: read-only, and without effect wherever it runs: every name it
	// calls is a built-in that only computes, reads or waits (PureFunc),
	// so a primary may run it as well as a standby. A read-only text may
	// still call a user function (SELECT my_write_fn()), which a standby
	// refuses if it writes, but a primary runs. The text cannot show what
	// a view, a rule, a user-defined operator or cast, or a function called
	// in attribute notation (t.f) runs: those count as what they look like.
	Pure bool
	// Catalog: the text may read the schema: it names information_schema
	// or pg_catalog, an identifier that starts with pg_ (pg_class,
	// pg_tables, pg_get_indexdef, …), a reg* type (regclass, …) or a
	// catalog function (to_regclass and the other to_reg*, format_type,
	// has_*_privilege, obj_description, col_description). A read that
	// follows DDL must see it.
	Catalog bool
	// DDL: a statement may change the schema: it starts with CREATE,
	// ALTER, DROP, COMMENT, GRANT, REVOKE, TRUNCATE, SECURITY LABEL,
	// IMPORT, REFRESH, REINDEX, CLUSTER, DO or CALL. A function called by
	// SELECT may run DDL too; the text cannot show it.
	DDL  bool
	Hint Hint // from a comment hint
}

// Hint is a routing request written into the SQL text as a comment.
type Hint uint8

const (
	HintNone Hint = iota
	HintPrimary
	HintReplica
)

// Classify reads one SQL text (possibly several statements) and reports
// whether a hot standby may run it, whether it leaves session state behind
// and which hint it carries. It never allocates. When in doubt it answers
// ReadOnly false and SessionState true: a wrongly routed write fails on the
// standby, a needless reset only costs time.
//
// The verdict must not depend on the connection: it is cached by text, and
// standard_conforming_strings can be off through the DSN, a SET, a role or
// database default or the server's configuration. With it off, a backslash
// escapes a quote in a plain '...' string, so the same text can hide a call
// in a string under one reading and expose it under the other. The text is
// therefore read under both, and is read-only only if both readings say so;
// session state and a primary hint from either reading count. The second
// reading is needed only when a plain string holds a backslash: otherwise
// both readings split the text identically.
func Classify(query string) Classification {
	on, ambiguous := classifyReading(query, false)
	if ambiguous {
		off, _ := classifyReading(query, true)
		on = Classification{
			ReadOnly:     on.ReadOnly && off.ReadOnly,
			SessionState: on.SessionState || off.SessionState,
			Pure:         on.Pure && off.Pure,
			Catalog:      on.Catalog || off.Catalog,
			DDL:          on.DDL || off.DDL,
			Hint:         bothHints(on.Hint, off.Hint),
		}
	}
	if !utf8.ValidString(query) {
		// The server rejects invalid UTF-8 under client_encoding UTF8;
		// under a client-only encoding such as SJIS, a multibyte character
		// can end in the byte of a backslash, which this byte-wise reading
		// would take for an escape. Either way, claim nothing.
		return Classification{SessionState: true, Catalog: true, DDL: true, Hint: on.Hint}
	}
	return on
}

// bothHints combines the hints of two readings of one text: a primary hint
// in either wins, a replica hint holds only if both carry it.
func bothHints(a, b Hint) Hint {
	switch {
	case a == HintPrimary || b == HintPrimary:
		return HintPrimary
	case a == b:
		return a
	}
	return HintNone
}

// classifyReading classifies query with plain strings read as with
// standard_conforming_strings off (backslashStrings) or on. It also reports
// whether a plain string held a backslash, that is, whether the other
// reading could split the text differently.
func classifyReading(query string, backslashStrings bool) (Classification, bool) {
	c := classifier{lx: sqlLexer{src: query, backslashStrings: backslashStrings}, ro: true, pure: true}
	for {
		t := c.lx.next()
		switch t.kind {
		case tokEOF:
			c.endStatement()
			ro := c.ro && c.statements > 0 && c.depth == 0
			return Classification{
				ReadOnly:     ro,
				SessionState: c.session,
				Pure:         ro && c.pure && !c.session,
				Catalog:      c.catalog,
				DDL:          c.ddl,
				Hint:         c.lx.hint,
			}, c.lx.plainBackslash
		case tokError:
			// The server will reject the text, but our view of where its
			// literals end may differ from the server's: claim nothing.
			return Classification{SessionState: true, Catalog: true, DDL: true, Hint: c.lx.hint}, c.lx.plainBackslash
		case tokSemicolon:
			if c.depth != 0 {
				// No read-only statement has a ';' inside parentheses.
				c.ro = false
				c.depth = 0
			}
			c.endStatement()
			c.prev, c.prev2, c.prev3, c.prevKw = sqlToken{}, sqlToken{}, sqlToken{}, kwNone
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
	uesc       uescape // the last UESCAPE clause after a U&"..." name
	st         stmtState
	prev       sqlToken   // previous token of this statement
	prev2      sqlToken   // the token before prev
	prev3      sqlToken   // the token before prev2
	prevKw     sqlKeyword // keyword of prev
	depth      int        // parenthesis depth
	statements int        // non-empty statements seen
	ro         bool       // nothing seen so far rules out a standby
	pure       bool       // every call so far is of a PureFunc
	session    bool
	catalog    bool // see Classification.Catalog
	ddl        bool // see Classification.DDL
	setLocal   setConfigCall
}

// setConfigCall follows the arguments of a set_config call: with a third
// argument of literally true (is_local) it lasts only for the current
// transaction, as SET LOCAL does, and outside one only for the statement;
// any other third argument (false, a parameter, an expression) may change
// the session.
type setConfigCall struct {
	active bool
	depth  int // paren depth inside the call's parentheses
	commas int // top-level commas seen in its arguments
	third  uint8
}

// States of setConfigCall.third.
const (
	thirdNone  = iota // no token of the third argument yet
	thirdTrue         // the single token true
	thirdOther        // anything else
)

func (c *classifier) endStatement() {
	if c.setLocal.active {
		c.setLocal.active = false
		c.session = true // unclosed: conservative
	}
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
	if c.setLocal.active {
		c.followSetConfig(t)
	}
	kw := kwNone
	switch t.kind {
	case tokIdent:
		kw = lookupSQLKeyword(c.lx.src[t.start:t.end])
		c.applyKeyword(kw, t)
		if !c.catalog && kw == kwNone {
			c.catalog = CatalogName(c.lx.src[t.start:t.end])
		}
	case tokQuotedIdent:
		if !c.catalog {
			c.catalog = CatalogName(c.lx.src[t.start:t.end])
		}
		if st.sawCreate || st.sawInto {
			c.tempSchema(c.lx.src[t.start:t.end])
		}
	case tokUnicodeIdent:
		c.catalog = true // could spell one
		if st.sawCreate || st.sawInto {
			c.session = true // could spell pg_temp
		}
	case tokLParen:
		c.depth++
		c.callPrev()
	case tokRParen:
		c.depth--
		if c.depth < 0 {
			c.ro = false
		}
	}

	if c.prev.kind == tokUnicodeIdent || c.uesc.kw != 0 && t.kind == tokString {
		c.trackUescape(t)
	}

	if st.pendingSet {
		st.pendingSet = false
		switch kw {
		case kwLocal, kwTransaction, kwConstraints:
			// Scoped to the current transaction, unless the word is the
			// name of the setting: SET local TO 0, SET local.x = 1.
			if c.peekSettingValue() {
				c.session = true
			}
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
	c.prev3, c.prev2 = c.prev2, c.prev
	c.prev, c.prevKw = t, kw
}

// followSetConfig reads token t inside the parentheses of a set_config
// call (c.depth is still the depth before t).
func (c *classifier) followSetConfig(t sqlToken) {
	s := &c.setLocal
	if c.depth < s.depth {
		s.active = false
		c.session = true // cannot happen: the call's ')' ends it
		return
	}
	if c.depth > s.depth {
		if s.commas == 2 {
			s.third = thirdOther // inside a parenthesis of the third argument
		}
		return
	}
	switch {
	case t.kind == tokRParen:
		s.active = false
		if s.commas != 2 || s.third != thirdTrue {
			c.session = true
		}
	case t.kind == tokOther && c.lx.src[t.start] == ',':
		s.commas++
	case s.commas == 2 && s.third == thirdNone && t.kind == tokIdent &&
		t.end-t.start == 4 && sqlHasPrefixFold(c.lx.src[t.start:t.end], "true"):
		s.third = thirdTrue
	case s.commas == 2:
		s.third = thirdOther
	}
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
	case kwCreate, kwAlter, kwDrop, kwGrant, kwTruncate, kwCall:
		c.ddl = true
	case kwNone:
		if t.kind == tokIdent && ddlWord(c.lx.src[t.start:t.end]) {
			c.ddl = true
		}
	}
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
		// An anonymous block may SET, LISTEN or create temp tables, and
		// run DDL.
		c.session = true
		c.ddl = true
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

// call applies sideEffectFuncs to a call of the named function. A call of
// set_config leaves session state unless its arguments say is_local (see
// followSetConfig).
func (c *classifier) call(name string) {
	if listed, session := SideEffectFunc(name); listed {
		c.ro = false
		c.pure = false
		switch {
		case !session:
		case len(name) == 10 && sqlHasPrefixFold(name, "set_config") && !c.setLocal.active:
			c.setLocal = setConfigCall{active: true, depth: c.depth}
		default:
			c.session = true
		}
	}
}

// peekSettingValue reports whether the next token is one that follows the
// name of a setting in SET name TO|=|FROM CURRENT, or a '.' inside the
// name.
func (c *classifier) peekSettingValue() bool {
	lx := c.lx // a copy: peeking must not advance the real lexer
	t := lx.next()
	switch t.kind {
	case tokOther:
		return lx.src[t.start] == '=' || lx.src[t.start] == '.'
	case tokIdent:
		w := lx.src[t.start:t.end]
		return len(w) == 2 && sqlHasPrefixFold(w, "to") || len(w) == 4 && sqlHasPrefixFold(w, "from")
	}
	return false
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
