package sqlclass

import "unsafe"

// maxIdentLen is the longest identifier PostgreSQL keeps (NAMEDATALEN-1);
// it truncates longer ones, so a call names the function its first 63
// bytes name.
const maxIdentLen = 63

// calleeName is the name a following '(' would call: an identifier, a
// quoted one, or a U&"..." one with an optional UESCAPE clause, which
// PostgreSQL's grammar places between the name and its '('.
type calleeName struct {
	tok sqlToken // kind tokEOF: none
	// For tokUnicodeIdent: uescape is 1 after UESCAPE, 2 after its string;
	// esc is the escape character, 0 if the string is not one plain byte.
	uescape uint8
	esc     byte
}

// trackName updates c.name for token t (keyword kw) of the current statement.
func (c *classifier) trackName(t sqlToken, kw sqlKeyword) {
	n := &c.name
	if n.tok.kind == tokUnicodeIdent {
		switch {
		case n.uescape == 0 && t.kind == tokIdent && isUescape(c.lx.src[t.start:t.end]):
			n.uescape = 1
			return
		case n.uescape == 1 && t.kind == tokString:
			n.uescape, n.esc = 2, 0
			if lit := c.lx.src[t.start:t.end]; len(lit) == 3 && lit[0] == '\'' {
				n.esc = lit[1]
			}
			return
		}
	}
	switch t.kind {
	case tokIdent, tokQuotedIdent:
		*n = calleeName{tok: t}
	case tokUnicodeIdent:
		*n = calleeName{tok: t, esc: '\\'}
	default:
		*n = calleeName{}
	}
}

func isUescape(s string) bool { return len(s) == 7 && sqlHasPrefixFold(s, "uescape") }

// callName applies sideEffectFuncs to a call of c.name.
func (c *classifier) callName() {
	n := c.name
	name := c.lx.src[n.tok.start:n.tok.end]
	if n.tok.kind == tokUnicodeIdent {
		if n.uescape == 1 || n.esc == 0 {
			// UESCAPE without a one-byte plain string: the server
			// rejects it or we cannot tell the name: claim nothing.
			c.ro = false
			c.session = true
			return
		}
		k, ok := decodeUnicodeIdent(&c.buf, name, n.esc)
		if !ok {
			c.ro = false
			c.session = true
			return
		}
		// c.buf lives as long as c; the string does not outlive call.
		name = unsafe.String(&c.buf[0], k)
	}
	c.call(name)
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
