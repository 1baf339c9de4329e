package sqlclass

import "unsafe"

// maxIdentLen is the longest identifier PostgreSQL keeps (NAMEDATALEN-1);
// it truncates longer ones, so a call names the function its first 63
// bytes name.
const maxIdentLen = 63

// uescape tracks a U&"..." name followed by a UESCAPE clause, which
// PostgreSQL's grammar places between the name and its '(':
// U&"x!0041" UESCAPE '!' (1) calls xA.
type uescape struct {
	name sqlToken // the U&"..." token
	kw   int      // start of the UESCAPE keyword after it
	str  int      // end of the string after that, 0 if none yet
	esc  byte     // the escape character, 0 if the string is not one plain byte
}

// trackUescape notes the parts of a UESCAPE clause; prev is the token
// before t. It costs one comparison for tokens that cannot be part of one.
func (c *classifier) trackUescape(t sqlToken) {
	switch {
	case t.kind == tokIdent && c.prev.kind == tokUnicodeIdent && isUescape(c.lx.src[t.start:t.end]):
		c.uesc = uescape{name: c.prev, kw: t.start}
	case t.kind == tokString && c.prev.kind == tokIdent && c.uesc.name.kind == tokUnicodeIdent && c.prev.start == c.uesc.kw:
		c.uesc.str = t.end
		if lit := c.lx.src[t.start:t.end]; len(lit) == 3 && lit[0] == '\'' {
			c.uesc.esc = lit[1]
		}
	}
}

func isUescape(s string) bool { return len(s) == 7 && sqlHasPrefixFold(s, "uescape") }

// callPrev applies sideEffectFuncs to a call of the name before a '(',
// that is, the token before it (c.prev) if it is a name or ends a UESCAPE
// clause.
func (c *classifier) callPrev() {
	switch c.prev.kind {
	case tokIdent, tokQuotedIdent:
		name := c.lx.src[c.prev.start:c.prev.end]
		if c.pure && !(PureFunc(name, c.prev.kind == tokQuotedIdent) && c.catalogQualified()) {
			c.pure = false // perhaps the user's function
		}
		c.call(name)
	case tokUnicodeIdent:
		c.pure = false
		c.callUnicode(c.prev, '\\')
	case tokString:
		if c.uesc.name.kind == tokUnicodeIdent && c.uesc.str == c.prev.end {
			c.pure = false
			if c.uesc.esc == 0 {
				// An escape string we do not read: the server rejects
				// it or we cannot tell the name. Claim nothing.
				c.ro = false
				c.session = true
				return
			}
			c.callUnicode(c.uesc.name, c.uesc.esc)
		}
	}
}

// catalogQualified reports whether the name before a '(' (c.prev) is
// unqualified or qualified with pg_catalog: only then does it name the
// built-in of that name (pg_catalog comes first on a search_path that does
// not place it).
func (c *classifier) catalogQualified() bool {
	if c.prev2.kind != tokOther || c.lx.src[c.prev2.start] != '.' {
		return true
	}
	schema := c.lx.src[c.prev3.start:c.prev3.end]
	switch c.prev3.kind {
	case tokIdent:
		return len(schema) == 10 && sqlHasPrefixFold(schema, "pg_catalog")
	case tokQuotedIdent:
		return schema == "pg_catalog"
	}
	return false
}

// callUnicode applies sideEffectFuncs to a call of the U&"..." name t,
// decoded with escape character esc.
func (c *classifier) callUnicode(t sqlToken, esc byte) {
	var buf [maxIdentLen]byte
	k, ok := decodeUnicodeIdent(&buf, c.lx.src[t.start:t.end], esc)
	if !ok {
		c.ro = false
		c.session = true
		return
	}
	// The string does not outlive call, which only compares it.
	c.call(unsafe.String(&buf[0], k))
}

// decodeUnicodeIdent decodes the body of a U&"..." identifier with escape
// character esc into buf as PostgreSQL does (\XXXX, \+XXXXXX, a doubled
// escape, a doubled quote), truncated to maxIdentLen bytes. Characters
// beyond ASCII become 0x80: no listed function name contains one. It
// reports false for an escape the server would reject.
func decodeUnicodeIdent(buf *[maxIdentLen]byte, s string, esc byte) (int, bool) {
	n := 0
	put := func(b byte) {
		if n < len(buf) {
			buf[n] = b
			n++
		}
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"': // a doubled quote inside the identifier
			put('"')
			i += 2
		case c != esc:
			put(c)
			i++
		case i+1 < len(s) && s[i+1] == esc:
			put(esc)
			i += 2
		default:
			digits, j := 4, i+1
			if j < len(s) && s[j] == '+' {
				digits, j = 6, j+1
			}
			if j+digits > len(s) {
				return 0, false
			}
			cp := rune(0)
			for _, h := range []byte(s[j : j+digits]) {
				d, ok := hexDigit(h)
				if !ok {
					return 0, false
				}
				cp = cp<<4 | d
			}
			if cp == 0 || cp > 0x10FFFF {
				return 0, false
			}
			if cp < 0x80 {
				put(byte(cp))
			} else {
				put(0x80)
			}
			i = j + digits
		}
	}
	return n, true
}

func hexDigit(c byte) (rune, bool) {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0'), true
	case 'a' <= c && c <= 'f':
		return rune(c-'a') + 10, true
	case 'A' <= c && c <= 'F':
		return rune(c-'A') + 10, true
	}
	return 0, false
}
