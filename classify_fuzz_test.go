package pgreplica

import (
	"strings"
	"testing"
)

// lexesCleanly reports whether q has no lexical error and does not end
// inside a -- comment, that is, whether text appended to q is read as SQL.
func lexesCleanly(q string) bool {
	lx := sqlLexer{src: q}
	for {
		switch lx.next().kind {
		case tokEOF:
			return !lx.lineCommentAtEOF
		case tokError:
			return false
		}
	}
}

func FuzzClassify(f *testing.F) {
	for _, tc := range classifyTests {
		f.Add(tc.query, "note")
	}
	f.Add(longClassifyQuery(), "pgreplica:primary")
	f.Fuzz(func(t *testing.T, q, other string) {
		got := classify(q) // must not panic
		clean := lexesCleanly(q)
		if got.readOnly && !lexesCleanly(q+"\n") {
			t.Fatalf("classify(%q) is read-only but does not lex cleanly", q)
		}

		// Whitespace and comments in front change nothing.
		prefixes := []string{" ", "\n\t\r\f\v "}
		if !strings.Contains(other, "/*") && !strings.Contains(other, "*/") && !isHintText(other) {
			prefixes = append(prefixes, "/* "+other+" */ ")
			if !strings.HasSuffix(other, "/") { // "/" + "*/" would open a nested comment
				prefixes = append(prefixes, "/*"+other+"*/\n")
			}
		}
		for _, p := range prefixes {
			if g := classify(p + q); g != got {
				t.Fatalf("classify(%q) = %+v, but with prefix %q: %+v", q, got, p, g)
			}
		}

		if !clean {
			return
		}
		if g := classify(q + "; DELETE FROM t"); g.readOnly {
			t.Fatalf("classify(%q + DELETE) = %+v", q, g)
		}
		if got.readOnly {
			if g := classify(q + " FOR UPDATE"); g.readOnly {
				t.Fatalf("classify(%q + FOR UPDATE) = %+v", q, g)
			}
		}

		// A read-only text followed by ';' and another: read-only if the
		// other is, session state and hints combine.
		if got.readOnly {
			o := classify(other)
			j := classify(q + ";" + other)
			if o.readOnly && !j.readOnly {
				t.Fatalf("classify(%q ; %q) = %+v, but both are read-only", q, other, j)
			}
			if j.sessionState != o.sessionState || j.hint != combineHints(got.hint, o.hint) {
				t.Fatalf("classify(%q ; %q) = %+v, parts %+v and %+v", q, other, j, got, o)
			}
		}
	})
}

// isHintText reports whether a comment holding s would be a routing hint.
func isHintText(s string) bool {
	lx := sqlLexer{}
	lx.noteHint(s)
	return lx.hint != hintNone
}

// combineHints is the hint of a text holding the hints of both parts.
func combineHints(a, b routeHint) routeHint {
	if a == hintPrimary || b == hintPrimary {
		return hintPrimary
	}
	return max(a, b)
}
