package pgreplica

import (
	"strings"
	"testing"
)

// Shorthands for the table: read-only, session state.
const (
	rw = false
	ro = true
	ss = true // sessionState
	ns = false
)

type classifyCase struct {
	query   string
	ro, ss  bool
	hint    routeHint
	comment string
}

var classifyTests = []classifyCase{
	// Plain reads.
	{query: "SELECT id, name, email FROM users WHERE id = $1", ro: ro},
	{query: "select 1", ro: ro},
	{query: "SELECT 1", ro: ro},
	{query: "SeLeCt 1", ro: ro},
	{query: "SELECT now(), count(*) FROM t GROUP BY 1", ro: ro},
	{query: "SELECT * FROM t WHERE a = 'x' AND b IN (SELECT c FROM u)", ro: ro},
	{query: "SHOW search_path", ro: ro},
	{query: "show ALL", ro: ro},
	{query: "VALUES (1)", ro: ro},
	{query: "values (1), (2)", ro: ro},
	{query: "TABLE t", ro: ro},
	{query: "WITH x AS (SELECT 1) SELECT * FROM x", ro: ro, comment: "plain CTE"},
	{query: "WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM r WHERE n < 10) SELECT * FROM r", ro: ro},
	{query: "with x as materialized (select 1) select * from x", ro: ro},
	{query: "((select 1))", ro: ro},
	{query: "(values (1))", ro: ro},
	{query: "(select 1) union (select 2)", ro: ro},
	{query: "\n\t  \r\n select 1\n", ro: ro, comment: "leading whitespace"},
	{query: "select $1::int", ro: ro},
	{query: "select $1, $2, $10", ro: ro},
	{query: "select 0x1F, 0o17, 0b101, 1_000, 1.5e10, 2.5E-3, .5, 1., 1..2", ro: ro},
	{query: "SELECT x$$ FROM t", ro: ro, comment: "$ inside an identifier is no dollar quote"},
	{query: "SELECT share FROM stats", ro: ro, comment: "SHARE without FOR"},
	{query: "SELECT nextval FROM t", ro: ro, comment: "a column, not a call"},
	{query: "SELECT lo_get(1)", ro: ro},
	{query: "SELECT jsonb_set(j, '{a}', '1') FROM t", ro: ro},

	// Multiple statements.
	{query: "SELECT 1; SELECT 2", ro: ro},
	{query: "SELECT 1;", ro: ro},
	{query: ";;SELECT 1;; ;", ro: ro, comment: "empty statements are ignored"},
	{query: "SELECT 1; DELETE FROM t", ro: rw},
	{query: "SELECT 1; VACUUM t", ro: rw},
	{query: "SELECT 1 /* ; DELETE FROM t */", ro: ro},
	{query: "select 'a' -- '\n; delete from t", ro: rw},

	// Empty texts.
	{query: "", ro: rw},
	{query: "   \n", ro: rw},
	{query: ";", ro: rw},
	{query: "/* c */", ro: rw},
	{query: "-- only a comment", ro: rw},
	{query: "()", ro: rw},

	// Writes.
	{query: "INSERT INTO t (a) VALUES (1) RETURNING id", ro: rw},
	{query: "UPDATE t SET a = 1 RETURNING *", ro: rw},
	{query: "DELETE FROM t WHERE id = 1 RETURNING *", ro: rw},
	{query: "dElEtE from t", ro: rw},
	{query: "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", ro: rw},
	{query: "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", ro: rw},
	{query: "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ro: rw, comment: "data-modifying CTE"},
	{query: "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i", ro: rw},
	{query: "with u as (update t set a = 1 returning *) select * from u", ro: rw},
	{query: "(WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE) SELECT 1)", ro: rw},
	{query: "SELECT * INTO t2 FROM t", ro: rw},
	{query: "COPY t TO STDOUT", ro: rw},
	{query: "LOCK TABLE t", ro: rw},
	{query: "TRUNCATE t", ro: rw},
	{query: "CALL p()", ro: rw},
	{query: "ALTER TABLE t ADD COLUMN c int", ro: rw},
	{query: "DROP TABLE t", ro: rw},
	{query: "GRANT SELECT ON t TO u", ro: rw},
	{query: "REVOKE SELECT ON t FROM u", ro: rw},
	{query: "VACUUM t", ro: rw},
	{query: "ANALYZE t", ro: rw},
	{query: "BEGIN", ro: rw},
	{query: "EXECUTE p(1)", ro: rw},
	{query: "NOTIFY c, 'x'", ro: rw},
	{query: "CREATE TABLE t(x int)", ro: rw, ss: ns},
	{query: "CREATE INDEX ON t (x)", ro: rw, ss: ns},
	{query: "SELECT a FROM t WHERE b = (SELECT 1) AND c IN (SELECT d FROM u) UNION ALL SELECT x FROM v; INSERT INTO w VALUES (1)", ro: rw},

	// Locking clauses.
	{query: "SELECT * FROM t FOR UPDATE", ro: rw},
	{query: "SELECT * FROM t FOR NO KEY UPDATE", ro: rw},
	{query: "SELECT * FROM t FOR SHARE", ro: rw},
	{query: "SELECT * FROM t FOR KEY SHARE", ro: rw},
	{query: "SELECT * FROM t FOR UPDATE SKIP LOCKED", ro: rw},
	{query: "select * from t for share of t nowait", ro: rw},
	{query: "SELECT * FROM t /* pgreplica:replica */ FOR UPDATE", ro: rw, hint: hintReplica},

	// Calls of functions that write, lock or keep session state.
	{query: "SELECT nextval('s')", ro: rw},
	{query: "SELECT pg_catalog.setval('s', 42)", ro: rw},
	{query: "SELECT pg_catalog.setval('s', 42, true)", ro: rw},
	{query: `SELECT "nextval"('s')`, ro: rw},
	{query: `SELECT pg_catalog."NextVal"('s')`, ro: rw},
	{query: "SELECT NEXTVAL('s')", ro: rw},
	{query: "SELECT nextval /* why */ ('s')", ro: rw},
	{query: "SELECT currval('s')", ro: rw},
	{query: "SELECT lastval()", ro: rw},
	{query: "VALUES (nextval('s'))", ro: rw},
	{query: "SELECT pg_advisory_lock(1)", ro: rw, ss: ss},
	{query: "SELECT pg_advisory_lock_shared(1)", ro: rw, ss: ss},
	{query: "SELECT pg_try_advisory_lock(1)", ro: rw, ss: ss},
	{query: "SELECT pg_try_advisory_lock_shared(1, 2)", ro: rw, ss: ss},
	{query: "SELECT PG_ADVISORY_LOCK(1)", ro: rw, ss: ss},
	{query: "SELECT pg_advisory_xact_lock(1)", ro: rw, ss: ns},
	{query: "SELECT pg_advisory_xact_lock_shared(1)", ro: rw, ss: ns},
	{query: "SELECT pg_try_advisory_xact_lock(1)", ro: rw, ss: ns},
	{query: "SELECT pg_try_advisory_xact_lock_shared(1)", ro: rw, ss: ns},
	{query: "SELECT pg_advisory_unlock(1)", ro: rw, ss: ns},
	{query: "SELECT pg_advisory_unlock_all()", ro: rw, ss: ns},
	{query: "select set_config('a','b',false)", ro: rw, ss: ss},
	{query: `SELECT "set_config"('a', 'b', true)`, ro: rw, ss: ss},
	{query: "SELECT setseed(0.5)", ro: rw, ss: ss},
	{query: "SELECT pg_notify('c', 'x')", ro: rw},
	{query: "SELECT txid_current()", ro: rw},
	{query: "SELECT pg_current_xact_id()", ro: rw},
	{query: "SELECT pg_current_xact_id_if_assigned()", ro: rw},
	{query: "SELECT lo_create(0)", ro: rw},
	{query: "SELECT lo_import('/tmp/x')", ro: rw},
	{query: "SELECT lo_unlink(1)", ro: rw},
	{query: "SELECT lo_from_bytea(0, 'x')", ro: rw},
	{query: "SELECT lo_put(1, 0, 'x')", ro: rw},
	{query: "SELECT lo_open(1, 131072)", ro: rw},
	{query: "SELECT lowrite(0, 'x')", ro: rw},
	{query: "SELECT pg_switch_wal()", ro: rw},
	{query: "SELECT pg_create_restore_point('x')", ro: rw},
	{query: "SELECT pg_create_physical_replication_slot('s')", ro: rw},
	{query: "SELECT * FROM pg_create_logical_replication_slot('s', 'pgoutput')", ro: rw},
	{query: "SELECT pg_drop_replication_slot('s')", ro: rw},
	{query: "SELECT pg_terminate_backend(1)", ro: rw},
	{query: "SELECT pg_cancel_backend(pid) FROM pg_stat_activity", ro: rw},
	{query: "SELECT pg_reload_conf()", ro: rw},
	{query: "SELECT pg_rotate_logfile()", ro: rw},
	{query: "SELECT pg_promote()", ro: rw},
	{query: "SELECT pg_wal_replay_pause()", ro: rw},
	{query: "SELECT pg_stat_reset()", ro: rw},
	{query: "SELECT dblink_exec('c', 'delete from t')", ro: rw, ss: ss},
	{query: "SELECT * FROM dblink('c', 'select 1') AS t(a int)", ro: rw, ss: ss},
	{query: "SELECT * FROM t, LATERAL pg_advisory_lock(t.id) l", ro: rw, ss: ss},
	{query: `select U&"\006Eextval"('s')`, ro: rw, comment: "escaped name could be any function"},

	// Literals, quoted identifiers and comments hide keywords.
	{query: "select 'insert into x'", ro: ro},
	{query: "select 'it''s an update'", ro: ro},
	{query: `select 'a\' , ' ; delete from t; --'`, ro: ro, comment: "no backslash escapes in standard strings"},
	{query: `select '\' ; delete from t; --'`, ro: rw},
	{query: `select "update" from t`, ro: ro},
	{query: `select "for" "share" from t`, ro: ro},
	{query: `select 1 as "a""b"`, ro: ro},
	{query: `select "a"" ; delete from t; --"`, ro: ro},
	{query: "select $$ delete $$", ro: ro},
	{query: "select $tag$ it's $$ nested $tag$", ro: ro},
	{query: "select $a$ x $ab$ delete $A$ $a$", ro: ro, comment: "other tags do not close"},
	{query: "select $_1$ delete $_1$", ro: ro},
	{query: "select $a$$a$", ro: ro},
	{query: "select $$ $$ || $$ delete $$", ro: ro},
	{query: "select $$ x $$; delete from t", ro: rw},
	{query: `select E'it\'s delete'`, ro: ro},
	{query: `select e'\\', 'x'`, ro: ro},
	{query: `select E'\' ; delete from t; --'`, ro: ro, comment: "the escaped quote keeps the string open"},
	{query: `select E'it''s' || e'\x41'`, ro: ro},
	{query: `select xe'\' ; delete from t; --'`, ro: rw, comment: "E only prefixes a string at the start of a token"},
	{query: `select U&'d\0061t\+000061'`, ro: ro},
	{query: `select U&'\0064elete'`, ro: ro},
	{query: `select U&'d!0061t!+000061' UESCAPE '!'`, ro: ro},
	{query: `select u&'\' ; delete from t; --'`, ro: rw, comment: "U& strings end like standard strings"},
	{query: `select U&"d\0061t\+000061" from t`, ro: ro},
	{query: `select b'101', x'1F', n'delete'`, ro: ro},
	{query: "/* a /* delete */ b */ select 1", ro: ro, comment: "nested comment"},
	{query: "/* a /* b */ delete */ select 1", ro: ro},
	{query: "/*/ delete */ select 1", ro: ro},
	{query: "/***/ select 1", ro: ro},
	{query: "select 1 /* a */*/**/ 2", ro: ro},
	{query: "-- delete\nselect 1", ro: ro},
	{query: "-- delete\rselect 1", ro: ro},
	{query: "select 1 --\n", ro: ro},
	{query: "select 1+--x\n2", ro: ro},
	{query: "select 1 -- ; delete from t", ro: ro},

	// EXPLAIN.
	{query: "EXPLAIN SELECT 1", ro: ro},
	{query: "explain analyze select 1", ro: ro},
	{query: "EXPLAIN ANALYSE VERBOSE SELECT 1", ro: ro},
	{query: "EXPLAIN VERBOSE TABLE t", ro: ro},
	{query: "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1", ro: ro},
	{query: "EXPLAIN (ANALYZE true, SETTINGS) VALUES (1)", ro: ro},
	{query: "EXPLAIN (ANALYZE) (SELECT 1)", ro: ro},
	{query: "EXPLAIN (SELECT 1)", ro: ro},
	{query: "EXPLAIN ((SELECT 1))", ro: ro},
	{query: "EXPLAIN ANALYZE VERBOSE WITH x AS (SELECT 1) SELECT * FROM x", ro: ro},
	{query: "EXPLAIN ANALYZE DELETE FROM t", ro: rw},
	{query: "EXPLAIN DELETE FROM t", ro: rw},
	{query: "EXPLAIN (ANALYZE) INSERT INTO t VALUES (1)", ro: rw},
	{query: "EXPLAIN EXECUTE p", ro: rw, comment: "the prepared statement may write"},
	{query: "EXPLAIN ANALYZE EXECUTE p(1)", ro: rw},
	{query: "EXPLAIN SHOW x", ro: rw},
	{query: "EXPLAIN EXPLAIN SELECT 1", ro: rw},
	{query: "EXPLAIN", ro: rw},
	{query: "EXPLAIN (ANALYZE)", ro: rw},
	{query: "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", ro: rw},
	{query: "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", ro: rw, ss: ss},
	{query: "EXPLAIN ANALYZE SELECT nextval('s')", ro: rw},
	{query: "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", ro: rw},

	// Session state.
	{query: "SET search_path TO x", ro: rw, ss: ss},
	{query: "set search_path = x", ro: rw, ss: ss},
	{query: "SET SESSION search_path TO x", ro: rw, ss: ss},
	{query: "SET LOCAL x = 1", ro: rw, ss: ns},
	{query: "set local search_path to x", ro: rw, ss: ns},
	{query: "SET ROLE r", ro: rw, ss: ss},
	{query: "SET SESSION AUTHORIZATION u", ro: rw, ss: ss},
	{query: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", ro: rw, ss: ss},
	{query: "SET TIME ZONE 'UTC'", ro: rw, ss: ss},
	{query: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", ro: rw, ss: ns},
	{query: "SET CONSTRAINTS ALL DEFERRED", ro: rw, ss: ns},
	{query: "SET", ro: rw, ss: ss},
	{query: "UPDATE t SET a = 1", ro: rw, ss: ns},
	{query: "ALTER ROLE r SET search_path = x", ro: rw, ss: ns},
	{query: "RESET ALL", ro: rw, ss: ss},
	{query: "reset search_path", ro: rw, ss: ss},
	{query: "LISTEN c", ro: rw, ss: ss},
	{query: "UNLISTEN *", ro: rw, ss: ss},
	{query: "PREPARE p AS SELECT 1", ro: rw, ss: ss},
	{query: "DEALLOCATE p", ro: rw, ss: ss},
	{query: "DEALLOCATE ALL", ro: rw, ss: ss},
	{query: "DECLARE c CURSOR WITH HOLD FOR SELECT 1", ro: rw, ss: ss},
	{query: "declare c no scroll cursor with hold for select 1", ro: rw, ss: ss},
	{query: "DECLARE c CURSOR FOR SELECT 1", ro: rw, ss: ns},
	{query: "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", ro: rw, ss: ns},
	{query: "CREATE TEMP TABLE t(x int)", ro: rw, ss: ss},
	{query: "CREATE TEMPORARY TABLE t(x int)", ro: rw, ss: ss},
	{query: "CREATE LOCAL TEMP TABLE t(x int)", ro: rw, ss: ss},
	{query: "CREATE GLOBAL TEMPORARY TABLE t(x int)", ro: rw, ss: ss},
	{query: "create temp sequence s", ro: rw, ss: ss},
	{query: "CREATE OR REPLACE TEMP VIEW v AS SELECT 1", ro: rw, ss: ss},
	{query: "CREATE TABLE pg_temp.t(x int)", ro: rw, ss: ss},
	{query: `CREATE TABLE "pg_temp".t(x int)`, ro: rw, ss: ss},
	{query: "SELECT * INTO TEMP t2 FROM t", ro: rw, ss: ss},
	{query: "SELECT * INTO TEMPORARY TABLE t2 FROM t", ro: rw, ss: ss},
	{query: "SELECT temp FROM weather", ro: ro, ss: ns},
	{query: "LOAD 'auto_explain'", ro: rw, ss: ss},
	{query: "DISCARD ALL", ro: rw, ss: ss},
	{query: "DO $$ BEGIN PERFORM set_config('a', 'b', false); END $$", ro: rw, ss: ss},
	{query: "SELECT 1; SET search_path TO x; SELECT 2", ro: rw, ss: ss},

	// Hints.
	{query: "  /* pgreplica:primary */ select 1", ro: ro, hint: hintPrimary},
	{query: "select 1 -- pgreplica:replica", ro: ro, hint: hintReplica},
	{query: "/*PGREPLICA:Replica*/ select 1", ro: ro, hint: hintReplica},
	{query: "--pgreplica:primary\nselect 1", ro: ro, hint: hintPrimary},
	{query: "select /*\tpgreplica:primary\n*/ 1", ro: ro, hint: hintPrimary},
	{query: "/* pgreplica:replica */ select 1 /* pgreplica:primary */", ro: ro, hint: hintPrimary},
	{query: "/* pgreplica:primary */ select 1 -- pgreplica:replica", ro: ro, hint: hintPrimary},
	{query: "/* pgreplica:replica */ DELETE FROM t", ro: rw, hint: hintReplica},
	{query: "/* pgreplica:primary x */ select 1", ro: ro, hint: hintNone},
	{query: "/* pgreplica: primary */ select 1", ro: ro, hint: hintNone},
	{query: "/* /* pgreplica:primary */ */ select 1", ro: ro, hint: hintNone, comment: "a commented-out hint"},
	{query: "select '/* pgreplica:primary */'", ro: ro, hint: hintNone},
	{query: "select $$-- pgreplica:primary$$", ro: ro, hint: hintNone},

	// Texts the server cannot parse.
	{query: "select 'abc", ro: rw, ss: ss},
	{query: `select "abc`, ro: rw, ss: ss},
	{query: `select ""`, ro: rw, ss: ss},
	{query: "select $$abc", ro: rw, ss: ss},
	{query: "select $a$abc$b$", ro: rw, ss: ss},
	{query: `select E'abc\'`, ro: rw, ss: ss},
	{query: "/* abc", ro: rw, ss: ss},
	{query: "/* a /* b */ select 1", ro: rw, ss: ss},
	{query: "/* pgreplica:primary */ select 'x", ro: rw, ss: ss, hint: hintPrimary},
	{query: "select 1from t", ro: rw, ss: ss, comment: "trailing junk after a number"},
	{query: "select 1e'x'", ro: rw, ss: ss},
	{query: "select $1e'x'", ro: rw, ss: ss},
	{query: "select (1", ro: rw},
	{query: "select 1)", ro: rw},
	{query: "select (1; select 2)", ro: rw},
	{query: "select 1); select (2", ro: rw},
	{query: `"select" 1`, ro: rw},
}

func TestClassify(t *testing.T) {
	for _, tc := range classifyTests {
		got := classify(tc.query)
		want := classification{readOnly: tc.ro, sessionState: tc.ss, hint: tc.hint}
		if got != want {
			t.Errorf("classify(%q) = %+v, want %+v %s", tc.query, got, want, tc.comment)
		}
	}
}

func TestClassifyLongQuery(t *testing.T) {
	q := longQuery()
	if len(q) < 2000 {
		t.Fatalf("long query is only %d bytes", len(q))
	}
	if got := classify(q); got != (classification{readOnly: true}) {
		t.Errorf("long query: %+v", got)
	}
	if got := classify(q + "; DELETE FROM t"); got.readOnly {
		t.Errorf("long query with DELETE: %+v", got)
	}
}

func TestClassifyAllocs(t *testing.T) {
	queries := []string{longQuery()}
	for _, tc := range classifyTests {
		queries = append(queries, tc.query)
	}
	var sink classification
	allocs := testing.AllocsPerRun(10, func() {
		for _, q := range queries {
			sink = classify(q)
		}
	})
	_ = sink
	if allocs != 0 {
		t.Errorf("classify allocates: %v allocs per run", allocs)
	}
}

func TestSideEffectFuncsLowerCase(t *testing.T) {
	for _, f := range sideEffectFuncs {
		if f.name != strings.ToLower(f.name) || strings.Count(f.name, "*") > 1 ||
			len(strings.ReplaceAll(f.name, "*", "")) < 6 || f.name[0] < 'a' || f.name[0] > 'z' {
			t.Errorf("bad pattern %q: must be lower case, start with a letter, hold at most one '*' and match names of 6 bytes or more", f.name)
		}
	}
}

func TestCallMatching(t *testing.T) {
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

// longQuery is a realistic report query of a little over 2 KB.
func longQuery() string {
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

var benchSink classification

func BenchmarkClassify(b *testing.B) {
	for _, bc := range []struct{ name, query string }{
		{"short", "SELECT id, name, email FROM users WHERE id = $1"},
		{"2KB", longQuery()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.query)))
			for b.Loop() {
				benchSink = classify(bc.query)
			}
		})
	}
}

func TestLookupKeyword(t *testing.T) {
	for _, k := range keywords {
		if k.name != strings.ToLower(k.name) || len(k.name) > maxKeywordLen {
			t.Errorf("bad keyword entry %q", k.name)
		}
		for _, s := range []string{k.name, strings.ToUpper(k.name), strings.ToUpper(k.name[:1]) + k.name[1:]} {
			if got := lookupKeyword(s); got != k.kw {
				t.Errorf("lookupKeyword(%q) = %d, want %d", s, got, k.kw)
			}
		}
		if got := lookupKeyword(k.name + "x"); got != kwNone {
			t.Errorf("lookupKeyword(%q) = %d", k.name+"x", got)
		}
	}
	for _, s := range []string{"", "s", "ſelect", "selecT_", "_select", "9select", "transactions"} {
		if got := lookupKeyword(s); got != kwNone {
			t.Errorf("lookupKeyword(%q) = %d", s, got)
		}
	}
}
