package sqlclass

import "testing"

// TestClassifyCatalog: which texts read the catalog (a read after DDL must
// see it) and which change the schema.
func TestClassifyCatalog(t *testing.T) {
	for _, tc := range []struct {
		query        string
		catalog, ddl bool
	}{
		{"SELECT count(*) FROM information_schema.tables WHERE table_schema = CURRENT_SCHEMA() AND table_name = $1", true, false},
		{"SELECT * FROM INFORMATION_SCHEMA.COLUMNS WHERE table_name = 't'", true, false},
		{`SELECT * FROM "information_schema"."columns"`, true, false},
		{"SELECT c.relname FROM pg_catalog.pg_class c", true, false},
		{"SELECT count(*) FROM pg_indexes WHERE tablename = $1", true, false},
		{"SELECT * FROM pg_tables", true, false},
		{"SELECT to_regclass('public.t') IS NOT NULL", true, false},
		{"SELECT to_regtype('mood')", true, false},
		{"SELECT 'public.t'::regclass::oid", true, false},
		{"SELECT format_type(atttypid, atttypmod) FROM x", true, false},
		{"SELECT has_table_privilege('t', 'select')", true, false},
		{"SELECT pg_get_indexdef(i.indexrelid) FROM x i", true, false},
		{"SELECT obj_description('t'::regclass)", true, false},
		{"SELECT U&\"\\0070g_class\".oid FROM x", true, false}, // could spell pg_class
		{"SELECT * FROM users WHERE id = $1", false, false},
		{"SELECT 'information_schema.tables' FROM t", false, false}, // a string, not a name
		{"SELECT hash_privilege FROM t", false, false},
		{"SELECT count(*) FROM tables", false, false},
		{"INSERT INTO t VALUES (1)", false, false},
		{"UPDATE t SET v = 1", false, false},
		{"CREATE TABLE t (id int)", false, true},
		{"create index on t (v)", false, true},
		{"ALTER TABLE t ADD COLUMN c int", false, true},
		{"DROP TABLE IF EXISTS t", false, true},
		{"TRUNCATE t", false, true},
		{"GRANT SELECT ON t TO bob", false, true},
		{"REVOKE SELECT ON t FROM bob", false, true},
		{"COMMENT ON TABLE t IS 'x'", false, true},
		{"REFRESH MATERIALIZED VIEW v", false, true},
		{"DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", false, true},
		{"CALL migrate()", false, true},
		{"INSERT INTO t VALUES (1); CREATE TABLE u (id int)", false, true},
		{"EXPLAIN SELECT * FROM pg_class", true, false},
		{"SELECT 1 /* CREATE TABLE t */", false, false},
	} {
		got := Classify(tc.query)
		if got.Catalog != tc.catalog || got.DDL != tc.ddl {
			t.Errorf("Classify(%q): Catalog %v DDL %v, want %v %v", tc.query, got.Catalog, got.DDL, tc.catalog, tc.ddl)
		}
	}
}
