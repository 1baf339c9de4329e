package pgreplica

import (
	"strings"
	"testing"
)

// Shorthands for the table: read-only, session state.
const (
	wantRW = false
	wantRO = true
	wantSS = true // sessionState
	wantNS = false
)

type classifyCase struct {
	query   string
	ro, ss  bool
	hint    routeHint
	comment string
}

var classifyTests = []classifyCase{
	// Plain reads.
	{query: "SELECT id, name, email FROM users WHERE id = $1", ro: wantRO},
	{query: "select 1", ro: wantRO},
	{query: "SELECT 1", ro: wantRO},
	{query: "SeLeCt 1", ro: wantRO},
	{query: "SELECT now(), count(*) FROM t GROUP BY 1", ro: wantRO},
	{query: "SELECT * FROM t WHERE a = 'x' AND b IN (SELECT c FROM u)", ro: wantRO},
	{query: "SHOW search_path", ro: wantRO},
	{query: "show ALL", ro: wantRO},
	{query: "VALUES (1)", ro: wantRO},
	{query: "values (1), (2)", ro: wantRO},
	{query: "TABLE t", ro: wantRO},
	{query: "WITH x AS (SELECT 1) SELECT * FROM x", ro: wantRO, comment: "plain CTE"},
	{query: "WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM r WHERE n < 10) SELECT * FROM r", ro: wantRO},
	{query: "with x as materialized (select 1) select * from x", ro: wantRO},
	{query: "((select 1))", ro: wantRO},
	{query: "(values (1))", ro: wantRO},
	{query: "(select 1) union (select 2)", ro: wantRO},
	{query: "\n\t  \r\n select 1\n", ro: wantRO, comment: "leading whitespace"},
	{query: "select $1::int", ro: wantRO},
	{query: "select $1, $2, $10", ro: wantRO},
	{query: "select 0x1F, 0o17, 0b101, 1_000, 1.5e10, 2.5E-3, .5, 1., 1..2", ro: wantRO},
	{query: "SELECT x$$ FROM t", ro: wantRO, comment: "$ inside an identifier is no dollar quote"},
	{query: "SELECT share FROM stats", ro: wantRO, comment: "SHARE without FOR"},
	{query: "SELECT nextval FROM t", ro: wantRO, comment: "a column, not a call"},
	{query: "SELECT lo_get(1)", ro: wantRO},
	{query: "SELECT jsonb_set(j, '{a}', '1') FROM t", ro: wantRO},

	// Multiple statements.
	{query: "SELECT 1; SELECT 2", ro: wantRO},
	{query: "SELECT 1;", ro: wantRO},
	{query: ";;SELECT 1;; ;", ro: wantRO, comment: "empty statements are ignored"},
	{query: "SELECT 1; DELETE FROM t", ro: wantRW},
	{query: "SELECT 1; VACUUM t", ro: wantRW},
	{query: "SELECT 1 /* ; DELETE FROM t */", ro: wantRO},
	{query: "select 'a' -- '\n; delete from t", ro: wantRW},

	// Empty texts.
	{query: "", ro: wantRW},
	{query: "   \n", ro: wantRW},
	{query: ";", ro: wantRW},
	{query: "/* c */", ro: wantRW},
	{query: "-- only a comment", ro: wantRW},
	{query: "()", ro: wantRW},

	// Writes.
	{query: "INSERT INTO t (a) VALUES (1) RETURNING id", ro: wantRW},
	{query: "UPDATE t SET a = 1 RETURNING *", ro: wantRW},
	{query: "DELETE FROM t WHERE id = 1 RETURNING *", ro: wantRW},
	{query: "dElEtE from t", ro: wantRW},
	{query: "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", ro: wantRW},
	{query: "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", ro: wantRW},
	{query: "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ro: wantRW, comment: "data-modifying CTE"},
	{query: "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i", ro: wantRW},
	{query: "with u as (update t set a = 1 returning *) select * from u", ro: wantRW},
	{query: "(WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE) SELECT 1)", ro: wantRW},
	{query: "SELECT * INTO t2 FROM t", ro: wantRW},
	{query: "COPY t TO STDOUT", ro: wantRW},
	{query: "LOCK TABLE t", ro: wantRW},
	{query: "TRUNCATE t", ro: wantRW},
	{query: "CALL p()", ro: wantRW},
	{query: "ALTER TABLE t ADD COLUMN c int", ro: wantRW},
	{query: "DROP TABLE t", ro: wantRW},
	{query: "GRANT SELECT ON t TO u", ro: wantRW},
	{query: "REVOKE SELECT ON t FROM u", ro: wantRW},
	{query: "VACUUM t", ro: wantRW},
	{query: "ANALYZE t", ro: wantRW},
	{query: "BEGIN", ro: wantRW},
	{query: "EXECUTE p(1)", ro: wantRW},
	{query: "NOTIFY c, 'x'", ro: wantRW},
	{query: "CREATE TABLE t(x int)", ro: wantRW, ss: wantNS},
	{query: "CREATE INDEX ON t (x)", ro: wantRW, ss: wantNS},
	{query: "SELECT a FROM t WHERE b = (SELECT 1) AND c IN (SELECT d FROM u) UNION ALL SELECT x FROM v; INSERT INTO w VALUES (1)", ro: wantRW},

	// Locking clauses.
	{query: "SELECT * FROM t FOR UPDATE", ro: wantRW},
	{query: "SELECT * FROM t FOR NO KEY UPDATE", ro: wantRW},
	{query: "SELECT * FROM t FOR SHARE", ro: wantRW},
	{query: "SELECT * FROM t FOR KEY SHARE", ro: wantRW},
	{query: "SELECT * FROM t FOR UPDATE SKIP LOCKED", ro: wantRW},
	{query: "select * from t for share of t nowait", ro: wantRW},
	{query: "SELECT * FROM t /* pgreplica:replica */ FOR UPDATE", ro: wantRW, hint: hintReplica},

	// Calls of functions that write, lock or keep session state.
	{query: "SELECT nextval('s')", ro: wantRW},
	{query: "SELECT pg_catalog.setval('s', 42)", ro: wantRW},
	{query: "SELECT pg_catalog.setval('s', 42, true)", ro: wantRW},
	{query: `SELECT "nextval"('s')`, ro: wantRW},
	{query: `SELECT pg_catalog."NextVal"('s')`, ro: wantRW},
	{query: "SELECT NEXTVAL('s')", ro: wantRW},
	{query: "SELECT nextval /* why */ ('s')", ro: wantRW},
	{query: "SELECT currval('s')", ro: wantRW},
	{query: "SELECT lastval()", ro: wantRW},
	{query: "VALUES (nextval('s'))", ro: wantRW},
	{query: "SELECT pg_advisory_lock(1)", ro: wantRW, ss: wantSS},
	{query: "SELECT pg_advisory_lock_shared(1)", ro: wantRW, ss: wantSS},
	{query: "SELECT pg_try_advisory_lock(1)", ro: wantRW, ss: wantSS},
	{query: "SELECT pg_try_advisory_lock_shared(1, 2)", ro: wantRW, ss: wantSS},
	{query: "SELECT PG_ADVISORY_LOCK(1)", ro: wantRW, ss: wantSS},
	{query: "SELECT pg_advisory_xact_lock(1)", ro: wantRW, ss: wantNS},
	{query: "SELECT pg_advisory_xact_lock_shared(1)", ro: wantRW, ss: wantNS},
	{query: "SELECT pg_try_advisory_xact_lock(1)", ro: wantRW, ss: wantNS},
	{query: "SELECT pg_try_advisory_xact_lock_shared(1)", ro: wantRW, ss: wantNS},
	{query: "SELECT pg_advisory_unlock(1)", ro: wantRW, ss: wantNS},
	{query: "SELECT pg_advisory_unlock_all()", ro: wantRW, ss: wantNS},
	{query: "select set_config('a','b',false)", ro: wantRW, ss: wantSS},
	{query: `SELECT "set_config"('a', 'b', true)`, ro: wantRW, ss: wantSS},
	{query: "SELECT setseed(0.5)", ro: wantRW, ss: wantSS},
	{query: "SELECT pg_notify('c', 'x')", ro: wantRW},
	{query: "SELECT txid_current()", ro: wantRW},
	{query: "SELECT pg_current_xact_id()", ro: wantRW},
	{query: "SELECT pg_current_xact_id_if_assigned()", ro: wantRW},
	{query: "SELECT lo_create(0)", ro: wantRW},
	{query: "SELECT lo_import('/tmp/x')", ro: wantRW},
	{query: "SELECT lo_unlink(1)", ro: wantRW},
	{query: "SELECT lo_from_bytea(0, 'x')", ro: wantRW},
	{query: "SELECT lo_put(1, 0, 'x')", ro: wantRW},
	{query: "SELECT lo_open(1, 131072)", ro: wantRW},
	{query: "SELECT lowrite(0, 'x')", ro: wantRW},
	{query: "SELECT pg_switch_wal()", ro: wantRW},
	{query: "SELECT pg_create_restore_point('x')", ro: wantRW},
	{query: "SELECT pg_create_physical_replication_slot('s')", ro: wantRW},
	{query: "SELECT * FROM pg_create_logical_replication_slot('s', 'pgoutput')", ro: wantRW},
	{query: "SELECT pg_drop_replication_slot('s')", ro: wantRW},
	{query: "SELECT pg_terminate_backend(1)", ro: wantRW},
	{query: "SELECT pg_cancel_backend(pid) FROM pg_stat_activity", ro: wantRW},
	{query: "SELECT pg_reload_conf()", ro: wantRW},
	{query: "SELECT pg_rotate_logfile()", ro: wantRW},
	{query: "SELECT pg_promote()", ro: wantRW},
	{query: "SELECT pg_wal_replay_pause()", ro: wantRW},
	{query: "SELECT pg_stat_reset()", ro: wantRW},
	{query: "SELECT dblink_exec('c', 'delete from t')", ro: wantRW, ss: wantSS},
	{query: "SELECT * FROM dblink('c', 'select 1') AS t(a int)", ro: wantRW, ss: wantSS},
	{query: "SELECT * FROM t, LATERAL pg_advisory_lock(t.id) l", ro: wantRW, ss: wantSS},
	{query: `select U&"\006Eextval"('s')`, ro: wantRW, comment: "escaped name could be any function"},

	// Literals, quoted identifiers and comments hide keywords.
	{query: "select 'insert into x'", ro: wantRO},
	{query: "select 'it''s an update'", ro: wantRO},
	{query: `select 'a\' , ' ; delete from t; --'`, ro: wantRO, comment: "no backslash escapes in standard strings"},
	{query: `select '\' ; delete from t; --'`, ro: wantRW},
	{query: `select "update" from t`, ro: wantRO},
	{query: `select "for" "share" from t`, ro: wantRO},
	{query: `select 1 as "a""b"`, ro: wantRO},
	{query: `select "a"" ; delete from t; --"`, ro: wantRO},
	{query: "select $$ delete $$", ro: wantRO},
	{query: "select $tag$ it's $$ nested $tag$", ro: wantRO},
	{query: "select $a$ x $ab$ delete $A$ $a$", ro: wantRO, comment: "other tags do not close"},
	{query: "select $_1$ delete $_1$", ro: wantRO},
	{query: "select $a$$a$", ro: wantRO},
	{query: "select $$ $$ || $$ delete $$", ro: wantRO},
	{query: "select $$ x $$; delete from t", ro: wantRW},
	{query: `select E'it\'s delete'`, ro: wantRO},
	{query: `select e'\\', 'x'`, ro: wantRO},
	{query: `select E'\' ; delete from t; --'`, ro: wantRO, comment: "the escaped quote keeps the string open"},
	{query: `select E'it''s' || e'\x41'`, ro: wantRO},
	{query: `select xe'\' ; delete from t; --'`, ro: wantRW, comment: "E only prefixes a string at the start of a token"},
	{query: `select U&'d\0061t\+000061'`, ro: wantRO},
	{query: `select U&'\0064elete'`, ro: wantRO},
	{query: `select U&'d!0061t!+000061' UESCAPE '!'`, ro: wantRO},
	{query: `select u&'\' ; delete from t; --'`, ro: wantRW, comment: "U& strings end like standard strings"},
	{query: `select U&"d\0061t\+000061" from t`, ro: wantRO},
	{query: `select b'101', x'1F', n'delete'`, ro: wantRO},
	{query: "/* a /* delete */ b */ select 1", ro: wantRO, comment: "nested comment"},
	{query: "/* a /* b */ delete */ select 1", ro: wantRO},
	{query: "/*/ delete */ select 1", ro: wantRO},
	{query: "/***/ select 1", ro: wantRO},
	{query: "select 1 /* a */*/**/ 2", ro: wantRO},
	{query: "-- delete\nselect 1", ro: wantRO},
	{query: "-- delete\rselect 1", ro: wantRO},
	{query: "select 1 --\n", ro: wantRO},
	{query: "select 1+--x\n2", ro: wantRO},
	{query: "select 1 -- ; delete from t", ro: wantRO},

	// EXPLAIN.
	{query: "EXPLAIN SELECT 1", ro: wantRO},
	{query: "explain analyze select 1", ro: wantRO},
	{query: "EXPLAIN ANALYSE VERBOSE SELECT 1", ro: wantRO},
	{query: "EXPLAIN VERBOSE TABLE t", ro: wantRO},
	{query: "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1", ro: wantRO},
	{query: "EXPLAIN (ANALYZE true, SETTINGS) VALUES (1)", ro: wantRO},
	{query: "EXPLAIN (ANALYZE) (SELECT 1)", ro: wantRO},
	{query: "EXPLAIN (SELECT 1)", ro: wantRO},
	{query: "EXPLAIN ((SELECT 1))", ro: wantRO},
	{query: "EXPLAIN ANALYZE VERBOSE WITH x AS (SELECT 1) SELECT * FROM x", ro: wantRO},
	{query: "EXPLAIN ANALYZE DELETE FROM t", ro: wantRW},
	{query: "EXPLAIN DELETE FROM t", ro: wantRW},
	{query: "EXPLAIN (ANALYZE) INSERT INTO t VALUES (1)", ro: wantRW},
	{query: "EXPLAIN EXECUTE p", ro: wantRW, comment: "the prepared statement may write"},
	{query: "EXPLAIN ANALYZE EXECUTE p(1)", ro: wantRW},
	{query: "EXPLAIN SHOW x", ro: wantRW},
	{query: "EXPLAIN EXPLAIN SELECT 1", ro: wantRW},
	{query: "EXPLAIN", ro: wantRW},
	{query: "EXPLAIN (ANALYZE)", ro: wantRW},
	{query: "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", ro: wantRW},
	{query: "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", ro: wantRW, ss: wantSS},
	{query: "EXPLAIN ANALYZE SELECT nextval('s')", ro: wantRW},
	{query: "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", ro: wantRW},

	// Session state.
	{query: "SET search_path TO x", ro: wantRW, ss: wantSS},
	{query: "set search_path = x", ro: wantRW, ss: wantSS},
	{query: "SET SESSION search_path TO x", ro: wantRW, ss: wantSS},
	{query: "SET LOCAL x = 1", ro: wantRW, ss: wantNS},
	{query: "set local search_path to x", ro: wantRW, ss: wantNS},
	{query: "SET ROLE r", ro: wantRW, ss: wantSS},
	{query: "SET SESSION AUTHORIZATION u", ro: wantRW, ss: wantSS},
	{query: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", ro: wantRW, ss: wantSS},
	{query: "SET TIME ZONE 'UTC'", ro: wantRW, ss: wantSS},
	{query: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", ro: wantRW, ss: wantNS},
	{query: "SET CONSTRAINTS ALL DEFERRED", ro: wantRW, ss: wantNS},
	{query: "SET", ro: wantRW, ss: wantSS},
	{query: "UPDATE t SET a = 1", ro: wantRW, ss: wantNS},
	{query: "ALTER ROLE r SET search_path = x", ro: wantRW, ss: wantNS},
	{query: "RESET ALL", ro: wantRW, ss: wantSS},
	{query: "reset search_path", ro: wantRW, ss: wantSS},
	{query: "LISTEN c", ro: wantRW, ss: wantSS},
	{query: "UNLISTEN *", ro: wantRW, ss: wantSS},
	{query: "PREPARE p AS SELECT 1", ro: wantRW, ss: wantSS},
	{query: "DEALLOCATE p", ro: wantRW, ss: wantSS},
	{query: "DEALLOCATE ALL", ro: wantRW, ss: wantSS},
	{query: "DECLARE c CURSOR WITH HOLD FOR SELECT 1", ro: wantRW, ss: wantSS},
	{query: "declare c no scroll cursor with hold for select 1", ro: wantRW, ss: wantSS},
	{query: "DECLARE c CURSOR FOR SELECT 1", ro: wantRW, ss: wantNS},
	{query: "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", ro: wantRW, ss: wantNS},
	{query: "CREATE TEMP TABLE t(x int)", ro: wantRW, ss: wantSS},
	{query: "CREATE TEMPORARY TABLE t(x int)", ro: wantRW, ss: wantSS},
	{query: "CREATE LOCAL TEMP TABLE t(x int)", ro: wantRW, ss: wantSS},
	{query: "CREATE GLOBAL TEMPORARY TABLE t(x int)", ro: wantRW, ss: wantSS},
	{query: "create temp sequence s", ro: wantRW, ss: wantSS},
	{query: "CREATE OR REPLACE TEMP VIEW v AS SELECT 1", ro: wantRW, ss: wantSS},
	{query: "CREATE TABLE pg_temp.t(x int)", ro: wantRW, ss: wantSS},
	{query: `CREATE TABLE "pg_temp".t(x int)`, ro: wantRW, ss: wantSS},
	{query: "SELECT * INTO TEMP t2 FROM t", ro: wantRW, ss: wantSS},
	{query: "SELECT * INTO TEMPORARY TABLE t2 FROM t", ro: wantRW, ss: wantSS},
	{query: "SELECT temp FROM weather", ro: wantRO, ss: wantNS},
	{query: "LOAD 'auto_explain'", ro: wantRW, ss: wantSS},
	{query: "DISCARD ALL", ro: wantRW, ss: wantSS},
	{query: "DO $$ BEGIN PERFORM set_config('a', 'b', false); END $$", ro: wantRW, ss: wantSS},
	{query: "SELECT 1; SET search_path TO x; SELECT 2", ro: wantRW, ss: wantSS},

	// Hints.
	{query: "  /* pgreplica:primary */ select 1", ro: wantRO, hint: hintPrimary},
	{query: "select 1 -- pgreplica:replica", ro: wantRO, hint: hintReplica},
	{query: "/*PGREPLICA:Replica*/ select 1", ro: wantRO, hint: hintReplica},
	{query: "--pgreplica:primary\nselect 1", ro: wantRO, hint: hintPrimary},
	{query: "select /*\tpgreplica:primary\n*/ 1", ro: wantRO, hint: hintPrimary},
	{query: "/* pgreplica:replica */ select 1 /* pgreplica:primary */", ro: wantRO, hint: hintPrimary},
	{query: "/* pgreplica:primary */ select 1 -- pgreplica:replica", ro: wantRO, hint: hintPrimary},
	{query: "/* pgreplica:replica */ DELETE FROM t", ro: wantRW, hint: hintReplica},
	{query: "/* pgreplica:primary x */ select 1", ro: wantRO, hint: hintNone},
	{query: "/* pgreplica: primary */ select 1", ro: wantRO, hint: hintNone},
	{query: "/* /* pgreplica:primary */ */ select 1", ro: wantRO, hint: hintNone, comment: "a commented-out hint"},
	{query: "select '/* pgreplica:primary */'", ro: wantRO, hint: hintNone},
	{query: "select $$-- pgreplica:primary$$", ro: wantRO, hint: hintNone},

	// Texts the server cannot parse.
	{query: "select 'abc", ro: wantRW, ss: wantSS},
	{query: `select "abc`, ro: wantRW, ss: wantSS},
	{query: `select ""`, ro: wantRW, ss: wantSS},
	{query: "select $$abc", ro: wantRW, ss: wantSS},
	{query: "select $a$abc$b$", ro: wantRW, ss: wantSS},
	{query: `select E'abc\'`, ro: wantRW, ss: wantSS},
	{query: "/* abc", ro: wantRW, ss: wantSS},
	{query: "/* a /* b */ select 1", ro: wantRW, ss: wantSS},
	{query: "/* pgreplica:primary */ select 'x", ro: wantRW, ss: wantSS, hint: hintPrimary},
	{query: "select 1from t", ro: wantRW, ss: wantSS, comment: "trailing junk after a number"},
	{query: "select 1e'x'", ro: wantRW, ss: wantSS},
	{query: "select $1e'x'", ro: wantRW, ss: wantSS},
	{query: "select (1", ro: wantRW},
	{query: "select 1)", ro: wantRW},
	{query: "select (1; select 2)", ro: wantRW},
	{query: "select 1); select (2", ro: wantRW},
	{query: `"select" 1`, ro: wantRW},
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
	q := longClassifyQuery()
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
	queries := []string{longClassifyQuery()}
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

var classifySink classification

func BenchmarkClassify(b *testing.B) {
	for _, bc := range []struct{ name, query string }{
		{"short", "SELECT id, name, email FROM users WHERE id = $1"},
		{"2KB", longClassifyQuery()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.query)))
			for b.Loop() {
				classifySink = classify(bc.query)
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
