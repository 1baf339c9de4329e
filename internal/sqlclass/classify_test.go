package sqlclass

import (
	"github.com/pgreplica/pgreplica/internal/sqlclass/classifytest"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tc := range classifytest.Cases {
		got := Classify(tc.Query)
		got.Catalog, got.DDL = false, false // TestClassifyCatalog
		want := Classification{ReadOnly: tc.RO, SessionState: tc.SS, Pure: tc.RO && !tc.Impure && !tc.SS, Hint: Hint(tc.Hint)}
		if got != want {
			t.Errorf("Classify(%q) = %+v, want %+v %s", tc.Query, got, want, tc.Comment)
		}
	}
}

func TestClassifyLongQuery(t *testing.T) {
	q := longClassifyQuery()
	if len(q) < 2000 {
		t.Fatalf("long query is only %d bytes", len(q))
	}
	if got := Classify(q); got != (Classification{ReadOnly: true, Pure: true, Catalog: got.Catalog}) {
		t.Errorf("long query: %+v", got)
	}
	if got := Classify(q + "; DELETE FROM t"); got.ReadOnly {
		t.Errorf("long query with DELETE: %+v", got)
	}
}

func TestClassifyAllocs(t *testing.T) {
	queries := []string{longClassifyQuery()}
	for _, tc := range classifytest.Cases {
		queries = append(queries, tc.Query)
	}
	var sink Classification
	allocs := testing.AllocsPerRun(10, func() {
		for _, q := range queries {
			sink = Classify(q)
		}
	})
	_ = sink
	if allocs != 0 {
		t.Errorf("classify allocates: %v allocs per run", allocs)
	}
}

func TestClassifySideEffectFuncs(t *testing.T) {
	for _, f := range sideEffectFuncs {
		if f.name != strings.ToLower(f.name) || strings.Count(f.name, "*") > 1 ||
			len(strings.ReplaceAll(f.name, "*", "")) < 6 || f.name[0] < 'a' || f.name[0] > 'z' {
			t.Errorf("bad pattern %q: must be lower case, start with a letter, hold at most one '*' and match names of 6 bytes or more", f.name)
		}
	}
}

func TestClassifyCallMatching(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ro, session bool
	}{
		{"nextval", false, false},
		{"NextVal", false, false},
		{"nextvals", true, false},
		{"xnextval", true, false},
		{"pg_create_logical_replication_slot", false, false},
		{"pg_create_replication_slot", true, false},
		{"pg_advisory_", false, false},
		{"pg_advisory_lock", false, true},
		{"pg_advisory_locks", false, false},
		{"dblink", false, true},
		{"dblink_connect_u", false, true},
		{"nextvaſ", true, false}, // only ASCII folds, like PostgreSQL
		{"ſetval", true, false},
		{"_nextval", true, false},
		{"count", true, false},
	} {
		c := classifier{ro: true}
		c.call(tc.name)
		if c.ro != tc.ro || c.session != tc.session {
			t.Errorf("call(%q): ro %v session %v, want %v %v", tc.name, c.ro, c.session, tc.ro, tc.session)
		}
	}
}

// longClassifyQuery is a realistic report query of a little over 2 KB.
func longClassifyQuery() string {
	var b strings.Builder
	b.WriteString(`/* report: monthly revenue per customer segment */
WITH recent_orders AS (
    SELECT o.id, o.customer_id, o.created_at, o.total_cents, o.currency
    FROM orders o
    WHERE o.created_at >= date_trunc('month', now()) - interval '12 months'
      AND o.status IN ('paid', 'shipped', 'delivered') -- only settled orders
), segments AS (
    SELECT c.id AS customer_id,
           CASE WHEN c.lifetime_value_cents > 1000000 THEN 'vip'
                WHEN c.lifetime_value_cents > 100000 THEN 'regular'
                ELSE 'occasional' END AS segment,
           c.country, c."Region Code" AS region
    FROM customers c
    WHERE c.deleted_at IS NULL
)
SELECT s.segment, s.country, s.region,
       date_trunc('month', r.created_at) AS month,
       count(DISTINCT r.customer_id) AS customers,
       sum(r.total_cents) FILTER (WHERE r.currency = 'EUR') / 100.0 AS revenue_eur,
       sum(r.total_cents) FILTER (WHERE r.currency = 'USD') / 100.0 AS revenue_usd,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.total_cents) AS median_cents,
       $$free text: it's fine$$ AS note, E'tab\there' AS esc
FROM recent_orders r
JOIN segments s ON s.customer_id = r.customer_id
LEFT JOIN LATERAL (
    SELECT count(*) AS returns
    FROM returns rt
    WHERE rt.order_id = r.id AND rt.created_at > r.created_at
) rt ON true
WHERE s.country = ANY($1::text[])
  AND r.total_cents BETWEEN $2 AND $3
`)
	for i := 0; b.Len() < 2000; i++ {
		b.WriteString("  AND coalesce(rt.returns, 0) < 10 /* guard */ AND r.id <> 0\n")
	}
	b.WriteString("GROUP BY 1, 2, 3, 4\nORDER BY month DESC, revenue_eur DESC NULLS LAST\nLIMIT 500")
	return b.String()
}

var classifySink Classification

func BenchmarkClassify(b *testing.B) {
	for _, bc := range []struct{ name, query string }{
		{"short", "SELECT id, name, email FROM users WHERE id = $1"},
		{"2KB", longClassifyQuery()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.query)))
			for b.Loop() {
				classifySink = Classify(bc.query)
			}
		})
	}
}

func TestLookupSQLKeyword(t *testing.T) {
	for _, k := range sqlKeywords {
		if k.name != strings.ToLower(k.name) || len(k.name) > maxSQLKeywordLen {
			t.Errorf("bad sqlKeyword entry %q", k.name)
		}
		for _, s := range []string{k.name, strings.ToUpper(k.name), strings.ToUpper(k.name[:1]) + k.name[1:]} {
			if got := lookupSQLKeyword(s); got != k.kw {
				t.Errorf("lookupSQLKeyword(%q) = %d, want %d", s, got, k.kw)
			}
		}
		if got := lookupSQLKeyword(k.name + "x"); got != kwNone {
			t.Errorf("lookupSQLKeyword(%q) = %d", k.name+"x", got)
		}
	}
	for _, s := range []string{"", "s", "ſelect", "selecT_", "_select", "9select", "transactions"} {
		if got := lookupSQLKeyword(s); got != kwNone {
			t.Errorf("lookupSQLKeyword(%q) = %d", s, got)
		}
	}
}
