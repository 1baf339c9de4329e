package sqlclass

import (
	"strings"
	"testing"
)

// ParseSettingsCases are what ParseSettings must accept (names, joined
// with '|' here, and RESET ALL) or refuse (ok false). They seed
// FuzzParseSettings.
var parseSettingsCases = []struct {
	query    string
	ok       bool
	names    string
	resetAll bool
}{
	{"SET app.user_id = '42'", true, "app.user_id", false},
	{"set App.User_Id to 42;", true, "app.user_id", false},
	{"SET SESSION search_path TO app, \"$user\", public", true, "search_path", false},
	{"SET search_path = DEFAULT", true, "search_path", false},
	{"SET statement_timeout = -1", true, "statement_timeout", false},
	{"SET TIME ZONE 'UTC'", true, "timezone", false},
	{"SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", true, "timezone", false},
	{"SET SCHEMA 'app'", true, "search_path", false},
	{"SET enable_seqscan = off", true, "enable_seqscan", false},
	{`SET "app"."user" = $$x$$`, true, "app.user", false},
	{"/* pgreplica:primary */ SET app.x = 1 -- why\n", true, "app.x", false},
	{"RESET app.user_id", true, "app.user_id", false},
	{"RESET TIME ZONE", true, "timezone", false},
	{"RESET ALL", true, "", true},
	{"SELECT set_config('app.user_id', $1, false)", true, "app.user_id", false},
	{"select pg_catalog.set_config('app.user_id', $1::text, FALSE)", true, "app.user_id", false},
	{"SELECT set_config($1, $2, false)", true, "$1", false},
	{"SELECT set_config('app.a', '1', false), set_config('search_path', 'x', false)", true, "app.a|search_path", false},
	{"SELECT set_config('app.a', 7, false)", true, "app.a", false},
	{"SELECT \"set_config\"('app.a', $$v$$, false);", true, "app.a", false},

	{"SET ROLE app", false, "", false},
	{"SET SESSION ROLE app", false, "", false},
	{"SET SESSION AUTHORIZATION app", false, "", false},
	{"RESET ROLE", false, "", false},
	{"RESET SESSION AUTHORIZATION", false, "", false},
	{"SET role = 'app'", false, "", false},
	{"SELECT set_config('role', 'app', false)", false, "", false},
	{"SELECT set_config('session_authorization', 'app', false)", false, "", false},
	{"SET LOCAL app.x = 1", false, "", false},
	{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false, "", false},
	{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", false, "", false},
	{"SET default_transaction_isolation = 'serializable'", false, "", false},
	{"SET default_transaction_read_only = on", false, "", false},
	{"SET client_encoding = 'LATIN1'", false, "", false},
	{"SET NAMES 'LATIN1'", false, "", false},
	{"SET session_replication_role = replica", false, "", false},
	{"SET app.x FROM CURRENT", false, "", false},
	{"SET app.x = 1; SET app.y = 2", false, "", false},
	{"SET app.x = 1; SELECT 1", false, "", false},
	{"SET app.x = E'a\\'b'", false, "", false},
	{"SET app.x = 'a\\'", false, "", false},
	{"SET app.x = (SELECT 1)", false, "", false},
	{"SET app.x = $1", false, "", false},
	{"SET app.x = 1 -- a line comment at the end", true, "app.x", false},
	{"SELECT set_config('app.x', lower($1), false)", false, "", false},
	{"SELECT set_config('app.x', (SELECT v FROM t), false)", false, "", false},
	{"SELECT set_config('app.x', $1, true)", false, "", false},
	{"SELECT set_config('app.x', $1, $2)", false, "", false},
	{"SELECT set_config('app.x', $1)", false, "", false},
	{"SELECT set_config('app.x', $1, false) FROM t", false, "", false},
	{"SELECT set_config('app.x', $1, false), nextval('s')", false, "", false},
	{"SELECT public.set_config('app.x', $1, false)", false, "", false},
	{"SELECT set_config(E'app.x', $1, false)", false, "", false},
	{"SELECT set_config('app.x', $1::int, false)", false, "", false},
	{"SELECT 1", false, "", false},
	{"DISCARD ALL", false, "", false},
}

func TestParseSettings(t *testing.T) {
	for _, tc := range parseSettingsCases {
		got, ok := ParseSettings(tc.query)
		names := strings.ReplaceAll(got.Names, "\x00", "|")
		if ok != tc.ok || names != tc.names || got.ResetAll != tc.resetAll {
			t.Errorf("ParseSettings(%q) = %q reset all %v, %v; want %q %v, %v", tc.query, names, got.ResetAll, ok, tc.names, tc.resetAll, tc.ok)
		}
		if ok {
			if cl := Classify(tc.query); !cl.SessionState || cl.ReadOnly {
				t.Errorf("ParseSettings accepts %q, which Classify reads as %+v", tc.query, cl)
			}
		}
	}
}

func TestReplayableSetting(t *testing.T) {
	for name, want := range map[string]bool{
		"app.user_id": true, "App.User": true, "a.b.c": true, "search_path": true, "TimeZone": true,
		"enable_hashjoin": true, "role": false, "session_authorization": false,
		"default_transaction_isolation": false, "transaction_read_only": false, "client_encoding": false,
		"app.": false, ".x": false, "enable_": false, "": false,
	} {
		if got := ReplayableSetting(name); got != want {
			t.Errorf("ReplayableSetting(%q) = %v, want %v", name, got, want)
		}
	}
}

// FuzzParseSettings: a text ParseSettings accepts is session state and
// never read-only to Classify, and is one statement.
func FuzzParseSettings(f *testing.F) {
	for _, tc := range parseSettingsCases {
		f.Add(tc.query)
	}
	f.Fuzz(func(t *testing.T, q string) {
		s, ok := ParseSettings(q)
		if !ok {
			return
		}
		if cl := Classify(q); !cl.SessionState || cl.ReadOnly || cl.DDL {
			t.Fatalf("ParseSettings(%q) = %+v, but Classify says %+v", q, s, cl)
		}
		if s.ResetAll != (s.Names == "") {
			t.Fatalf("ParseSettings(%q) = %+v: names iff not RESET ALL", q, s)
		}
	})
}
