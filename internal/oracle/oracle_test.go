package oracle

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pgreplica/pgreplica/internal/sqlclass"
	"github.com/pgreplica/pgreplica/internal/sqlclass/classifytest"
)

// check compares the classifier's verdict on q with the parser's, under
// both settings of standard_conforming_strings, and reports what it saw.
// It fails when the classifier calls a text read-only that the parser
// reads as something else, or misses session state the parser sees. A read
// the classifier calls a write is only counted: that costs a trip to the
// primary, not correctness.
//
// A text the parser rejects is never a failure, even when the classifier
// calls it read-only: a server that cannot parse a text runs none of it.
// (pg_query parses as PostgreSQL 17 does; the classifier refuses texts
// where servers of different versions split strings differently.) Texts
// holding a NUL byte are skipped: the C parser would read only up to it,
// and the server rejects such a message.
//
// With full false (while fuzzing) it parses only what could fail: texts the
// classifier calls read-only or free of session state, and the reading with
// standard_conforming_strings off only for texts holding a backslash,
// which alone it can change.
func check(t *testing.T, q string, st *stats, full bool) {
	if strings.IndexByte(q, 0) >= 0 {
		return
	}
	cl := sqlclass.Classify(q)
	if !full && !cl.ReadOnly && cl.SessionState {
		return
	}
	for _, scs := range []bool{true, false} {
		if !scs && !full && strings.IndexByte(q, '\\') < 0 {
			break
		}
		tree, err := Parse(q, scs)
		if err != nil {
			if cl.ReadOnly {
				st.roUnparsed.Add(1)
				if full {
					t.Logf("read-only, the parser rejects it (scs %s): %q: %v", onOff(scs), q, err)
				}
			}
			continue
		}
		v := Judge(tree)
		switch {
		case cl.ReadOnly && !v.ReadOnly:
			t.Fatalf("Classify(%q) is read-only, but with standard_conforming_strings=%v the parser sees %s", q, onOff(scs), v.Why)
		case v.SessionState && !cl.SessionState:
			t.Fatalf("Classify(%q) = %+v misses session state the parser sees with standard_conforming_strings=%v", q, cl, onOff(scs))
		case !cl.ReadOnly && v.ReadOnly:
			st.readCalledWrite.Add(1)
			if full {
				t.Logf("a read the classifier sends to the primary (scs %s): %q", onOff(scs), q)
			}
		default:
			st.agree.Add(1)
		}
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

type stats struct {
	agree, readCalledWrite, roUnparsed atomic.Int64
}

// seeds are the classifier's table and the texts the fuzzer found.
func seeds(t testing.TB) []string {
	var qs []string
	for _, c := range classifytest.Cases {
		qs = append(qs, c.Query)
	}
	files, _ := filepath.Glob("testdata/fuzz/FuzzOracle/*")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) < 2 || !strings.HasPrefix(lines[1], "string(") {
			t.Fatalf("%s: not a go test fuzz v1 string corpus entry", f)
		}
		q, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "string("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		qs = append(qs, q)
	}
	return qs
}

// TestOracleSeeds runs the checks on every seed and reports the counts.
func TestOracleSeeds(t *testing.T) {
	var st stats
	for _, q := range seeds(t) {
		check(t, q, &st, true)
	}
	t.Logf("parses agreeing: %d; reads the classifier sends to the primary: %d; read-only texts the parser rejects: %d",
		st.agree.Load(), st.readCalledWrite.Load(), st.roUnparsed.Load())
}

func FuzzOracle(f *testing.F) {
	for _, c := range classifytest.Cases {
		f.Add(c.Query)
	}
	var st stats
	f.Fuzz(func(t *testing.T, q string) {
		check(t, q, &st, false)
	})
}

// TestJudge pins the parse-tree rule itself, so that a broken rule cannot
// make the fuzzer pass.
func TestJudge(t *testing.T) {
	for q, want := range map[string]Verdict{
		"SELECT 1; SHOW x; VALUES (1); TABLE t; EXPLAIN ANALYZE SELECT 1": {ReadOnly: true},
		"SELECT * FROM t FOR UPDATE":                                      {},
		"SELECT * FROM (SELECT * FROM t FOR SHARE) s":                     {},
		"WITH d AS (DELETE FROM t RETURNING *) SELECT 1":                  {},
		"SELECT * INTO x FROM t":                                          {},
		"SELECT pg_catalog.nextval('s')":                                  {},
		"SELECT U&\"pg_advisory_lock\" UESCAPE '!' (2)":                   {SessionState: true},
		"SELECT lower(set_config('a', 'b', false))":                       {SessionState: true},
		"SET search_path TO x":                                            {SessionState: true},
		"SET LOCAL search_path TO x":                                      {},
		"SET TRANSACTION READ ONLY":                                       {},
		"EXPLAIN EXECUTE p":                                               {},
		"INSERT INTO t VALUES (1)":                                        {},
		"SELECT count(*) FROM t WHERE x IN (SELECT y FROM u)":             {ReadOnly: true},
	} {
		tree, err := Parse(q, true)
		if err != nil {
			t.Fatalf("%q: %v", q, err)
		}
		got := Judge(tree)
		got.Why = ""
		if got != want {
			t.Errorf("Judge(%q) = %+v, want %+v", q, got, want)
		}
	}
}
