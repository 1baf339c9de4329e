package sqlclass

import "strings"

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

// sqlLexer splits SQL into tokens the way PostgreSQL's scanner
// (src/backend/parser/scan.l) does, as far as where tokens, literals and
// comments begin and end. It notes comment hints as it skips them.
type sqlLexer struct {
	src  string
	pos  int
	hint Hint
	// backslashStrings reads plain '...' strings as with
	// standard_conforming_strings off: a backslash escapes the next byte.
	backslashStrings bool
	// plainBackslash is set when a plain string held a backslash, so that
	// the other setting of standard_conforming_strings could end it
	// elsewhere.
	plainBackslash bool
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
		// N'...' too: the server reads the N as a keyword and then this.
		return lx.str(start, start, strPlain)
	case c == '"':
		return lx.quotedIdent(start + 1)
	case isSQLIdentStart(c):
		if start+1 < len(s) && (s[start+1] == '\'' || s[start+1] == '&') {
			if t, ok := lx.prefixed(start); ok {
				return t
			}
		}
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

// prefixed scans a string or identifier with a prefix (E”, B”, X”,
// U&”, U&"") starting at s[start], which is followed by a quote or '&'.
// The prefixes only count at the start of a token: in "somee'x'" the e is
// part of the identifier. N” needs nothing here: the server reads the N
// as a keyword and then a plain string.
func (lx *sqlLexer) prefixed(start int) (sqlToken, bool) {
	s := lx.src
	switch c := s[start] | 0x20; {
	case s[start+1] == '\'':
		switch c {
		case 'e':
			return lx.str(start, start+1, strEscape), true
		case 'b', 'x':
			return lx.str(start, start+1, strBits), true
		}
	case c == 'u' && start+2 < len(s):
		switch s[start+2] {
		case '\'':
			return lx.str(start, start+2, strUnicode), true
		case '"':
			t := lx.quotedIdent(start + 3)
			if t.kind == tokQuotedIdent {
				t.kind = tokUnicodeIdent
			}
			return t, true
		}
	}
	return sqlToken{}, false
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
		lx.hint = HintPrimary
	case sqlHasPrefixFold(text, replica) && lx.hint == HintNone:
		lx.hint = HintReplica
	}
}

// strKind is the kind of a quoted string constant, which decides where it
// ends.
type strKind uint8

const (
	// strPlain: '...'. A doubled quote stands for one; a backslash
	// escapes only with standard_conforming_strings off.
	strPlain   strKind = iota
	strEscape          // E'...': a backslash escapes the next byte, whatever the setting
	strBits            // B'...', X'...': a quote always ends it ('' is two strings)
	strUnicode         // U&'...': like strPlain with the setting on, whatever it is
)

// str scans a string constant of the given kind whose opening quote is at
// s[quote]. Like the server, it continues the string after a closing quote
// followed by whitespace holding a newline and another quote ('a'\n'b' is
// 'ab'), in the same kind: E'a'\n'\” keeps backslash escapes.
func (lx *sqlLexer) str(start, quote int, kind strKind) sqlToken {
	s := lx.src
	backslash := kind == strEscape || kind == strPlain && lx.backslashStrings
	i := quote + 1
	for {
		// Find the quote that ends this segment.
		for i < len(s) {
			if backslash {
				for i < len(s) && s[i] != '\'' && s[i] != '\\' {
					i++
				}
			} else if k := strings.IndexByte(s[i:], '\''); k >= 0 {
				i += k
			} else {
				i = len(s)
			}
			if i >= len(s) {
				break
			}
			if s[i] == '\\' {
				i += 2
				continue
			}
			if kind != strBits && i+1 < len(s) && s[i+1] == '\'' {
				i += 2 // a doubled quote
				continue
			}
			break
		}
		if i >= len(s) {
			lx.pos = len(s)
			return sqlToken{kind: tokError, start: start, end: len(s)}
		}
		end := i + 1
		next, ok := lx.continuation(end)
		if !ok {
			lx.pos = len(s)
			return sqlToken{kind: tokError, start: start, end: len(s)}
		}
		if next < 0 {
			if kind == strPlain && !lx.backslashStrings && strings.IndexByte(s[quote+1:i], '\\') >= 0 {
				lx.plainBackslash = true
			}
			lx.pos = end
			return sqlToken{kind: tokString, start: start, end: end}
		}
		i = next + 1
	}
}

// continuation reports where the quote continuing a string that ended just
// before s[i] is, or -1 if the string ends there. PostgreSQL 15 accepts --
// comments in the whitespace between the parts, PostgreSQL 17 does not
// (both accept a vertical tab, which PostgreSQL 15 rejects everywhere): ok
// is false when a comment makes the server version decide.
func (lx *sqlLexer) continuation(i int) (next int, ok bool) {
	s := lx.src
	newline, comment := false, false
	for i < len(s) {
		switch c := s[i]; {
		case c == '\n' || c == '\r':
			newline = true
			i++
		case c == ' ' || c == '\t' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			comment = true
			for i < len(s) && s[i] != '\n' && s[i] != '\r' {
				i++
			}
		default:
			if c != '\'' || !newline {
				return -1, true
			}
			return i, !comment
		}
	}
	return -1, true
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
		if i == start+2 {
			// 0x with no digits is junk to PostgreSQL 15 and 17; before
			// 15, 0x'..' was 0 followed by a hex string.
			lx.pos = i
			return sqlToken{kind: tokError, start: start, end: i}
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
