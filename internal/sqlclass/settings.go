package sqlclass

import (
	"strings"
	"unicode/utf8"
)

// Settings is what ParseSettings reads from a text that only changes plain
// settings: the names it sets, in order, and whether it is RESET ALL.
type Settings struct {
	// Names are the settings the text sets or resets, lower case, joined
	// with NUL bytes; "$n" stands for the name held by the n-th argument.
	Names string
	// ResetAll: the text is RESET ALL, which sets no name but undoes
	// every setting of the session.
	ResetAll bool
}

// ParseSettings reports whether query is one statement that only changes
// plain settings for the rest of the session, in one of the forms a
// replica connection can run again with the same arguments and get the
// same result:
//
//	SET [SESSION] name {TO | =} value [, ...]
//	SET [SESSION] TIME ZONE value | SET [SESSION] SCHEMA 'value'
//	RESET name | RESET TIME ZONE | RESET ALL
//	SELECT [pg_catalog.]set_config(name, value, false) [, ...]
//
// where a set_config name or value is a string constant or a parameter
// ($n), optionally cast (::text), and a value may be a number. Every name
// must be one ReplayableSetting accepts (a name given by a parameter is
// checked by the caller, which has the argument). Anything else (SET ROLE,
// SET SESSION AUTHORIZATION, SET LOCAL, FROM CURRENT, several statements, a
// set_config whose value is an expression, a plain string holding a
// backslash, which standard_conforming_strings reads two ways) is not.
func ParseSettings(query string) (Settings, bool) {
	if !utf8.ValidString(query) {
		return Settings{}, false // see Classify
	}
	p := settingsParser{lx: sqlLexer{src: query}}
	p.advance()
	var ok bool
	switch {
	case p.word("set"):
		p.advance()
		ok = p.set()
	case p.word("reset"):
		p.advance()
		ok = p.reset()
	case p.word("select"):
		p.advance()
		ok = p.setConfigs()
	}
	if ok && p.tok.kind == tokSemicolon {
		p.advance()
	}
	if !ok || p.tok.kind != tokEOF || p.lx.plainBackslash {
		return Settings{}, false
	}
	return Settings{Names: p.names.String(), ResetAll: p.resetAll}, true
}

type settingsParser struct {
	lx       sqlLexer
	tok      sqlToken
	names    strings.Builder
	resetAll bool
}

func (p *settingsParser) advance() { p.tok = p.lx.next() }

func (p *settingsParser) text() string { return p.lx.src[p.tok.start:p.tok.end] }

// word reports whether the current token is the unquoted word w (lower case).
func (p *settingsParser) word(w string) bool {
	return p.tok.kind == tokIdent && p.tok.end-p.tok.start == len(w) && sqlHasPrefixFold(p.text(), w)
}

func (p *settingsParser) punct(c byte) bool {
	return p.tok.kind == tokOther && p.lx.src[p.tok.start] == c
}

func (p *settingsParser) addName(name string) {
	if p.names.Len() > 0 {
		p.names.WriteByte(0)
	}
	p.names.WriteString(strings.ToLower(name))
}

// specialSetWords start the SET and RESET forms that are no plain
// setting (or, as a name alone, no setting at all).
var specialSetWords = []string{"local", "transaction", "constraints", "role", "session", "names", "xml", "characteristics", "authorization", "all", "time", "schema"}

// name reads a setting's name: identifiers joined by dots. It returns
// false for a name that is one of specialSetWords, or not a setting
// ReplayableSetting accepts.
func (p *settingsParser) name() (string, bool) {
	var b strings.Builder
	parts := 0
	for {
		switch p.tok.kind {
		case tokIdent, tokQuotedIdent:
		default:
			return "", false
		}
		if parts == 0 && p.tok.kind == tokIdent {
			for _, w := range specialSetWords {
				if p.word(w) {
					return "", false
				}
			}
		}
		if parts > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p.text())
		parts++
		p.advance()
		if !p.punct('.') {
			break
		}
		p.advance()
	}
	name := b.String()
	return name, ReplayableSetting(name)
}

// set reads what follows SET.
func (p *settingsParser) set() bool {
	if p.word("session") {
		p.advance()
	}
	switch {
	case p.word("time"):
		p.advance()
		if !p.word("zone") {
			return false
		}
		p.advance()
		p.addName("timezone")
	case p.word("schema"):
		p.advance()
		if p.tok.kind != tokString {
			return false
		}
		p.addName("search_path")
	default:
		name, ok := p.name()
		if !ok {
			return false
		}
		if !p.word("to") && !p.punct('=') {
			return false // FROM CURRENT, or no value
		}
		p.advance()
		p.addName(name)
	}
	return p.values()
}

// values reads a SET's values: constants, words and signs separated by
// commas, up to the end of the statement.
func (p *settingsParser) values() bool {
	n := 0
	for {
		switch p.tok.kind {
		case tokEOF, tokSemicolon:
			return n > 0
		case tokIdent, tokQuotedIdent, tokString, tokNumber:
		case tokOther:
			switch p.lx.src[p.tok.start] {
			case ',', '-', '+':
			default:
				return false
			}
		default:
			return false // a parameter, a parenthesis, an error
		}
		if p.tok.kind == tokString && !plainOrDollarString(p.text()) {
			return false
		}
		n++
		p.advance()
	}
}

// reset reads what follows RESET.
func (p *settingsParser) reset() bool {
	switch {
	case p.word("all"):
		p.advance()
		p.resetAll = true
		return true
	case p.word("time"):
		p.advance()
		if !p.word("zone") {
			return false
		}
		p.advance()
		p.addName("timezone")
		return true
	}
	name, ok := p.name()
	if ok {
		p.addName(name)
	}
	return ok
}

// setConfigs reads what follows SELECT: one or more set_config calls.
func (p *settingsParser) setConfigs() bool {
	for {
		if !p.setConfig() {
			return false
		}
		if !p.punct(',') {
			return true
		}
		p.advance()
	}
}

// setConfig reads [pg_catalog.]set_config(name, value, false).
func (p *settingsParser) setConfig() bool {
	if p.word("pg_catalog") || p.tok.kind == tokQuotedIdent && p.text() == "pg_catalog" {
		p.advance()
		if !p.punct('.') {
			return false
		}
		p.advance()
	}
	if !p.word("set_config") && !(p.tok.kind == tokQuotedIdent && p.text() == "set_config") {
		return false
	}
	p.advance()
	if p.tok.kind != tokLParen {
		return false
	}
	p.advance()
	// The name: a constant naming a replayable setting, or a parameter.
	switch {
	case p.tok.kind == tokParam:
		p.addName(p.text())
	case p.tok.kind == tokString:
		name, ok := stringValue(p.text())
		if !ok || !ReplayableSetting(name) {
			return false
		}
		p.addName(name)
	default:
		return false
	}
	p.advance()
	if !p.cast() || !p.punct(',') {
		return false
	}
	p.advance()
	switch p.tok.kind {
	case tokParam, tokNumber:
	case tokString:
		if !plainOrDollarString(p.text()) {
			return false
		}
	default:
		return false
	}
	p.advance()
	if !p.cast() || !p.punct(',') {
		return false
	}
	p.advance()
	if !p.word("false") {
		return false
	}
	p.advance()
	if p.tok.kind != tokRParen {
		return false
	}
	p.advance()
	return true
}

// cast skips an optional ::text (or ::varchar, ::name) after an argument.
func (p *settingsParser) cast() bool {
	if !p.punct(':') {
		return true
	}
	p.advance()
	if !p.punct(':') {
		return false
	}
	p.advance()
	if !p.word("text") && !p.word("varchar") && !p.word("name") {
		return false
	}
	p.advance()
	return true
}

// plainOrDollarString reports whether a string token is a plain '...' or
// a dollar-quoted one: their meaning does not depend on the connection
// (a plain one with a backslash is refused by ParseSettings as a whole).
func plainOrDollarString(lit string) bool {
	_, ok := stringValue(lit)
	return ok
}

// stringValue is the value of a plain '...' (with ” for a quote) or a
// dollar-quoted string constant, continued across lines or not.
func stringValue(lit string) (string, bool) {
	if strings.HasPrefix(lit, "$") {
		i := strings.IndexByte(lit[1:], '$')
		if i < 0 {
			return "", false
		}
		tag := lit[:i+2]
		if len(lit) < 2*len(tag) {
			return "", false
		}
		return lit[len(tag) : len(lit)-len(tag)], true
	}
	if !strings.HasPrefix(lit, "'") {
		return "", false // E'', B'', X'', U&''
	}
	var b strings.Builder
	for i := 1; i < len(lit); i++ {
		c := lit[i]
		if c != '\'' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(lit) && lit[i+1] == '\'' {
			b.WriteByte('\'')
			i++
			continue
		}
		// The end of a segment: a continuation resumes at the next quote.
		j := strings.IndexByte(lit[i+1:], '\'')
		if j < 0 {
			return b.String(), true
		}
		i += j + 1
	}
	return "", false
}

// ReplayableSetting reports whether a setting of this name may be made
// again on a replica connection, for the reads of the conn that made it on
// the primary, and then undone: it only changes how statements of this
// session read (or are planned, or report), never what they may see or
// do by privilege, and a hot standby accepts it. That is every custom
// setting (a name with a dot, such as app.user_id) and the built-in ones
// listed here. role and session_authorization are not (see
// docs/guarantees.md), nor are the defaults of new transactions (a
// standby refuses serializable ones) or client_encoding (pgx needs UTF8).
func ReplayableSetting(name string) bool {
	if strings.IndexByte(name, '.') > 0 && !strings.HasSuffix(name, ".") {
		return true
	}
	n := strings.ToLower(name)
	if strings.HasPrefix(n, "enable_") && len(n) > len("enable_") {
		return true // the planner's method switches
	}
	_, ok := replayableSettings[n]
	return ok
}

var replayableSettings = map[string]struct{}{
	"application_name": {}, "search_path": {}, "timezone": {}, "datestyle": {}, "intervalstyle": {},
	"statement_timeout": {}, "lock_timeout": {}, "idle_in_transaction_session_timeout": {},
	"work_mem": {}, "hash_mem_multiplier": {}, "extra_float_digits": {}, "bytea_output": {},
	"client_min_messages": {}, "row_security": {}, "standard_conforming_strings": {},
	"default_text_search_config": {}, "lc_monetary": {}, "lc_numeric": {}, "lc_time": {},
	"xmlbinary": {}, "xmloption": {}, "array_nulls": {}, "transform_null_equals": {},
	"quote_all_identifiers": {}, "escape_string_warning": {}, "synchronous_commit": {},
	"random_page_cost": {}, "seq_page_cost": {}, "cpu_tuple_cost": {}, "cpu_index_tuple_cost": {},
	"cpu_operator_cost": {}, "effective_cache_size": {}, "effective_io_concurrency": {},
	"jit": {}, "plan_cache_mode": {}, "from_collapse_limit": {}, "join_collapse_limit": {},
	"geqo": {}, "geqo_threshold": {}, "constraint_exclusion": {}, "cursor_tuple_fraction": {},
	"max_parallel_workers_per_gather": {}, "parallel_setup_cost": {}, "parallel_tuple_cost": {},
	"gin_fuzzy_search_limit": {}, "default_statistics_target": {},
}
