package sqlclass

import (
	"github.com/pgreplica/pgreplica/internal/sqlclass/classifytest"
	"strings"
	"testing"
	"unicode/utf8"
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
	for _, tc := range classifytest.Cases {
		f.Add(tc.Query, "note")
	}
	f.Add(longClassifyQuery(), "pgreplica:primary")
	f.Add("SELECT set_config('a', 'b', true)", "SELECT my_write_fn()")
	f.Add("SELECT pg_catalog.lower('x')", "SELECT public.lower('x')")
	f.Add("SELECT count(*) FROM t WHERE id IN (1, 2)", "SELECT inet_server_port(), pg_sleep(0.1)")
	f.Add("SELECT count(*) FROM information_schema.tables WHERE table_name = $1", "CREATE TABLE t (id int)")
	f.Add("SELECT to_regclass('t') IS NOT NULL", "ALTER TABLE t ADD COLUMN c int")
	f.Add(`SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM "pg_catalog".pg_attribute a`, "COMMENT ON TABLE t IS 'x'")
	f.Add("SELECT 'information_schema.tables', \"Tables\" FROM t", "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$")
	f.Fuzz(func(t *testing.T, q, other string) {
		got := Classify(q) // must not panic
		clean := lexesCleanly(q)
		if got.ReadOnly && got.DDL {
			t.Fatalf("Classify(%q) = %+v: DDL cannot be read-only", q, got)
		}
		if !got.Catalog && clean {
			// Naming a catalog relation anywhere makes it a catalog read.
			if g := Classify(q + " information_schema.tables"); !g.Catalog {
				t.Fatalf("Classify(%q + information_schema.tables) = %+v: not a catalog read", q, g)
			}
		}
		if got.Pure && (!got.ReadOnly || got.SessionState) {
			t.Fatalf("Classify(%q) = %+v: pure but not a read without session state", q, got)
		}
		if got.ReadOnly && !lexesCleanly(q+"\n") {
			t.Fatalf("Classify(%q) is read-only but does not lex cleanly", q)
		}

		// Whitespace and comments in front change nothing.
		prefixes := []string{" ", "\n\t\r\f\v "}
		if !strings.Contains(other, "/*") && !strings.Contains(other, "*/") && !isHintText(other) && utf8.ValidString(other) {
			prefixes = append(prefixes, "/* "+other+" */ ")
			if !strings.HasSuffix(other, "/") { // "/" + "*/" would open a nested comment
				prefixes = append(prefixes, "/*"+other+"*/\n")
			}
		}
		for _, p := range prefixes {
			if g := Classify(p + q); g != got {
				t.Fatalf("Classify(%q) = %+v, but with prefix %q: %+v", q, got, p, g)
			}
		}

		if !clean {
			return
		}
		if g := Classify(q + "; DELETE FROM t"); g.ReadOnly {
			t.Fatalf("Classify(%q + DELETE) = %+v", q, g)
		}
		if got.Pure {
			// A call of a name the classifier does not know may be a user
			// function that writes.
			if g := Classify(q + "; SELECT my_write_fn()"); g.Pure {
				t.Fatalf("Classify(%q + my_write_fn()) = %+v", q, g)
			}
		}
		if got.ReadOnly {
			if g := Classify(q + " FOR UPDATE"); g.ReadOnly {
				t.Fatalf("Classify(%q + FOR UPDATE) = %+v", q, g)
			}
		}

		// A read-only text followed by ';' and another: read-only if the
		// other is, session state and hints combine.
		if got.ReadOnly {
			o := Classify(other)
			j := Classify(q + ";" + other)
			if o.ReadOnly && !j.ReadOnly {
				t.Fatalf("Classify(%q ; %q) = %+v, but both are read-only", q, other, j)
			}
			if o.ReadOnly && j.ReadOnly && j.Pure != (got.Pure && o.Pure) {
				t.Fatalf("Classify(%q ; %q) = %+v, parts %+v and %+v: pure only if both are", q, other, j, got, o)
			}
			if j.SessionState != o.SessionState || j.Hint != combineHints(got.Hint, o.Hint) {
				t.Fatalf("Classify(%q ; %q) = %+v, parts %+v and %+v", q, other, j, got, o)
			}
		}
	})
}

// isHintText reports whether a comment holding s would be a routing hint.
func isHintText(s string) bool {
	lx := sqlLexer{}
	lx.noteHint(s)
	return lx.hint != HintNone
}

// combineHints is the hint of a text holding the hints of both parts.
func combineHints(a, b Hint) Hint {
	if a == HintPrimary || b == HintPrimary {
		return HintPrimary
	}
	return max(a, b)
}
