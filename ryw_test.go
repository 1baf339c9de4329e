package pgreplica

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
)

// readReason runs a one-row read on the pool and returns its route reason.
func readReason(t *testing.T, fc *fakeCluster, ctx context.Context, query string) Reason {
	t.Helper()
	rctx, route := WithRoute(ctx)
	if err := fc.db.QueryRowContext(rctx, query).Scan(new(int)); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return route.Reason()
}

// read_your_writes=connector: a plain read after a plain write goes to the
// primary until a probe covers the write, then to a replica that replayed
// it, and not to one that did not.
func TestConnectorReadYourWrites(t *testing.T) {
	cfg := defaultCfg()
	cfg.ReadYourWrites = ReadYourWritesConnector
	fc := newFakeCluster(t, 1, cfg)
	ctx := context.Background()
	primaryAt(fc.c, 0x100)
	fc.c.nodes[1].replayLSN.Store(0x100)

	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonRead {
		t.Fatalf("before any write: %s, want read", r)
	}
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonSession {
		t.Fatalf("after a write, before a probe: %s, want session", r)
	}
	primaryAt(fc.c, 0x200) // the probe after the write
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonSession {
		t.Fatalf("replica at 0x100, write at 0x200: %s, want session", r)
	}
	fc.c.nodes[1].replayLSN.Store(0x200)
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonRead {
		t.Fatalf("replica replayed the write: %s, want read", r)
	}

	// INSERT … RETURNING through Query, and a committed transaction, count.
	fc.mocks[0].ExpectQuery(q("INSERT INTO t VALUES (2) RETURNING x")).WillReturnRows(oneRow())
	if err := fc.db.QueryRowContext(ctx, "INSERT INTO t VALUES (2) RETURNING x").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonSession {
		t.Fatalf("after INSERT … RETURNING: %s, want session", r)
	}
	primaryAt(fc.c, 0x300)
	fc.c.nodes[1].replayLSN.Store(0x300)
	fc.mocks[0].ExpectBegin()
	fc.mocks[0].ExpectExec(q("UPDATE t SET x = 3")).WillReturnResult(sqlmock.NewResult(0, 1))
	fc.mocks[0].ExpectCommit()
	tx, err := fc.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE t SET x = 3"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonSession {
		t.Fatalf("after a committed transaction: %s, want session", r)
	}
}

// With read_your_writes=off, a plain read after a write goes to a replica;
// a catalog read after DDL does not, in any mode.
func TestCatalogReadAfterDDL(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	ctx := context.Background()
	primaryAt(fc.c, 0x100)
	fc.c.nodes[1].replayLSN.Store(0x100)
	catalog := "SELECT count(*) FROM information_schema.tables WHERE table_name = 'u'"

	fc.mocks[1].ExpectQuery(q(catalog)).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, catalog); r != ReasonRead {
		t.Fatalf("catalog read before any DDL: %s, want read", r)
	}
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonRead {
		t.Fatalf("read_your_writes=off, plain read after a write: %s, want read", r)
	}
	fc.mocks[1].ExpectQuery(q(catalog)).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, catalog); r != ReasonRead {
		t.Fatalf("catalog read after DML only: %s, want read", r)
	}

	fc.mocks[0].ExpectExec(q("CREATE TABLE u (id int)")).WillReturnResult(sqlmock.NewResult(0, 0))
	if _, err := fc.db.ExecContext(ctx, "CREATE TABLE u (id int)"); err != nil {
		t.Fatal(err)
	}
	for _, read := range []string{catalog, "SELECT to_regclass('u') IS NOT NULL"} {
		fc.mocks[0].ExpectQuery(q(read)).WillReturnRows(oneRow())
		if r := readReason(t, fc, ctx, read); r != ReasonSession {
			t.Fatalf("%s after DDL: %s, want session (the primary)", read, r)
		}
	}
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, "SELECT x FROM t"); r != ReasonRead {
		t.Fatalf("a plain read after DDL: %s, want read", r)
	}
	primaryAt(fc.c, 0x200)
	fc.mocks[0].ExpectQuery(q(catalog)).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, catalog); r != ReasonSession {
		t.Fatalf("catalog read, replica behind the DDL: %s, want session", r)
	}
	fc.c.nodes[1].replayLSN.Store(0x200)
	fc.mocks[1].ExpectQuery(q(catalog)).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, catalog); r != ReasonRead {
		t.Fatalf("catalog read, replica replayed the DDL: %s, want read", r)
	}

	// DDL in a transaction counts at its commit.
	fc.mocks[0].ExpectBegin()
	fc.mocks[0].ExpectExec(q("ALTER TABLE u ADD COLUMN v int")).WillReturnResult(sqlmock.NewResult(0, 0))
	fc.mocks[0].ExpectCommit()
	tx, err := fc.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "ALTER TABLE u ADD COLUMN v int"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	fc.mocks[0].ExpectQuery(q(catalog)).WillReturnRows(oneRow())
	if r := readReason(t, fc, ctx, catalog); r != ReasonSession {
		t.Fatalf("catalog read after DDL in a transaction: %s, want session", r)
	}
}

func TestMiddlewarePrimaryFor(t *testing.T) {
	var got map[string]bool
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got[r.Method+" "+r.URL.Path] = optionsFrom(r.Context()).primary
	})
	for _, tc := range []struct {
		opts []MiddlewareOption
		want map[string]bool
	}{
		{nil, map[string]bool{"GET /": false, "HEAD /": false, "OPTIONS /": false, "TRACE /": false,
			"POST /search": true, "POST /orders": true, "DELETE /orders": true}},
		{[]MiddlewareOption{PrimaryFor(func(r *http.Request) bool { return r.URL.Path != "/search" })},
			map[string]bool{"GET /": true, "POST /search": false, "POST /orders": true}},
	} {
		got = map[string]bool{}
		h := Middleware(handler, tc.opts...)
		for req := range tc.want {
			var method, path string
			for i := range req {
				if req[i] == ' ' {
					method, path = req[:i], req[i+1:]
				}
			}
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(method, path, nil))
		}
		for req, want := range tc.want {
			if got[req] != want {
				t.Errorf("%d options: %s runs on the primary: %v, want %v", len(tc.opts), req, got[req], want)
			}
		}
	}
}

// The token travels in a header as well as in the cookie; a bad, forged,
// old or other-cluster token in the header is handled as in the cookie.
func TestMiddlewareSessionHeader(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	var reason Reason
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			if _, err := fc.db.ExecContext(r.Context(), "INSERT INTO t VALUES (1)"); err != nil {
				t.Error(err)
			}
			return
		}
		reason = readReason(t, fc, r.Context(), "SELECT x FROM t")
	}))
	do := func(method, header string) *http.Response {
		req := httptest.NewRequest(method, "/", nil)
		if header != "" {
			req.Header.Set("pgreplica-session", header)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result()
	}

	primaryAt(fc.c, 0x100)
	fc.c.nodes[1].replayLSN.Store(0x100)
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnRows(sqlmock.NewRows([]string{"lsn"}).AddRow(int64(0x4d2)))
	resp := do(http.MethodPost, "")
	tok := resp.Header.Get(DefaultSessionHeader)
	if c := sessionCookieOf(resp); tok != "1.4d2" || c == nil || c.Value != tok {
		t.Fatalf("after a write: header %q, cookie %v; want both 1.4d2", tok, c)
	}

	// The token in the header: the read waits for a replica at 0x4d2.
	primaryAt(fc.c, 0x500)
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	resp = do(http.MethodGet, tok)
	if reason != ReasonSession || resp.Header.Get(DefaultSessionHeader) != "" || sessionCookieOf(resp) != nil {
		t.Fatalf("header token: reason %s, response header %q", reason, resp.Header.Get(DefaultSessionHeader))
	}
	// An old token (a replica has it): a replica serves it.
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if do(http.MethodGet, "1.80"); reason != ReasonRead {
		t.Fatalf("old token: reason %s, want read", reason)
	}
	// Tampered: ignored, and no cookie is removed (none was sent).
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	resp = do(http.MethodGet, "1.4d2; evil")
	if reason != ReasonRead || resp.Header.Get(DefaultSessionHeader) != "" || len(resp.Cookies()) != 0 {
		t.Fatalf("tampered token: reason %s, header %q, cookies %v", reason, resp.Header.Get(DefaultSessionHeader), resp.Cookies())
	}
	// Forged or from another cluster (beyond this primary): the primary
	// serves it and the token is replaced by this primary's position.
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnRows(sqlmock.NewRows([]string{"lsn"}).AddRow(int64(0x580)))
	resp = do(http.MethodGet, "1.ffffffffffff")
	if reason != ReasonSession || resp.Header.Get(DefaultSessionHeader) != "1.580" {
		t.Fatalf("forged token: reason %s, header %q, want session and 1.580", reason, resp.Header.Get(DefaultSessionHeader))
	}

	// SessionHeader("") turns the header off.
	h = Middleware(h.(*middleware).next, SessionHeader(""))
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	if do(http.MethodGet, "1.ffffffffffff"); reason != ReasonRead {
		t.Fatalf("header off: reason %s, want read", reason)
	}
}

func TestParseReadYourWrites(t *testing.T) {
	for val, want := range map[string]ReadYourWrites{"": ReadYourWritesConnector, "off": ReadYourWritesOff, "connector": ReadYourWritesConnector} {
		dsn := "postgres://u:secretpw@p:5432,r:5432/db"
		if val != "" {
			dsn += "?read_your_writes=" + val
		}
		cfg, err := ParseConfig(dsn)
		if err != nil || cfg.ReadYourWrites != want {
			t.Fatalf("read_your_writes=%q: %v, %v; want %v", val, cfg, err, want)
		}
		if _, ok := cfg.Primary.ConnConfig.RuntimeParams["read_your_writes"]; ok {
			t.Fatal("read_your_writes reached pgx as a runtime parameter")
		}
	}
	for _, dsn := range []string{"postgres://u:secretpw@p/db?read_your_writes=secretpw", "postgres://u:secretpw@p/db?read_your_write=on"} {
		_, err := ParseConfig(dsn)
		if !errors.Is(err, ErrInvalidDSN) || strings.Contains(err.Error(), "secretpw") {
			t.Fatalf("%s: %v", dsn, err)
		}
	}
}
