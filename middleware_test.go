package pgreplica

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
)

// serve runs one request through h and returns the response.
func serve(t *testing.T, h http.Handler, method string, cookie *http.Cookie) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, "/", nil)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func sessionCookieOf(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == DefaultSessionCookie {
			return c
		}
	}
	return nil
}

func TestMiddlewareRoutesByMethod(t *testing.T) {
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := optionsFrom(r.Context())
		if o == nil || o.session == nil {
			t.Errorf("%s: no session in the request's context", r.Method)
			return
		}
		if want := !safeMethod(r.Method); o.primary != want {
			t.Errorf("%s: UsePrimary = %v, want %v", r.Method, o.primary, want)
		}
	}))
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "TRACE", "POST", "PUT", "PATCH", "DELETE", "PROPFIND"} {
		resp := serve(t, h, m, nil)
		if c := sessionCookieOf(resp); c != nil {
			t.Errorf("%s without a write set the cookie %q", m, c.Value)
		}
	}
}

// A request that writes gets the cookie with its session's position, set
// before the handler's first byte; the next request restores it.
func TestMiddlewareSetsCookieAfterWrite(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	var restored *session
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			restored = sessionOf(r.Context())
			io.WriteString(w, "read")
			return
		}
		if _, err := fc.db.ExecContext(r.Context(), "INSERT INTO t VALUES (1)"); err != nil {
			t.Error(err)
		}
		io.WriteString(w, "ok") // headers go out here
		if h := w.Header().Get("Set-Cookie"); !strings.Contains(h, "1.4d2") {
			t.Errorf("Set-Cookie at the first Write = %q", h)
		}
	}))
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnRows(sqlmock.NewRows([]string{"lsn"}).AddRow(int64(0x4d2)))
	resp := serve(t, h, http.MethodPost, nil)
	c := sessionCookieOf(resp)
	if c == nil || c.Value != "1.4d2" {
		t.Fatalf("cookie after a write = %v, want 1.4d2", c)
	}
	if c.Path != "/" || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure || c.MaxAge != 0 {
		t.Fatalf("cookie attributes = %+v", c)
	}
	primaryAt(fc.c, 0x500)
	resp = serve(t, h, http.MethodGet, c)
	if restored == nil || restored.claim.Load() != 0x4d2 {
		t.Fatal("the GET did not restore the session from the cookie")
	}
	if c := sessionCookieOf(resp); c != nil {
		t.Fatalf("a GET that did not write set the cookie %q", c.Value)
	}
}

// A handler that writes nothing at all still gets its cookie; a Flush
// before any byte sends it too.
func TestMiddlewareCookieWithoutBodyAndOnFlush(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	flush := false
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := fc.db.ExecContext(r.Context(), "DELETE FROM t"); err != nil {
			t.Error(err)
		}
		if flush {
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Error(err)
			}
		}
	}))
	for _, f := range []bool{false, true} {
		flush = f
		primaryAt(fc.c, 10)
		fc.mocks[0].ExpectExec(q("DELETE FROM t")).WillReturnResult(sqlmock.NewResult(0, 1))
		fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnRows(sqlmock.NewRows([]string{"lsn"}).AddRow(int64(0x20)))
		req := httptest.NewRequest(http.MethodDelete, "/", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if f && !rec.Flushed {
			t.Fatal("Flush did not reach the recorder")
		}
		if c := sessionCookieOf(rec.Result()); c == nil || c.Value != "1.20" {
			t.Fatalf("flush=%v: cookie = %v, want 1.20", f, c)
		}
	}
}

func TestMiddlewareGarbageAndForgedCookies(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	var reason Reason
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, route := WithRoute(r.Context())
		if err := fc.db.QueryRowContext(ctx, "SELECT x FROM t").Scan(new(int)); err != nil {
			t.Error(err)
		}
		reason = route.Reason()
	}))

	// Garbage: ignored (a replica serves the read) and removed.
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	resp := serve(t, h, http.MethodGet, &http.Cookie{Name: DefaultSessionCookie, Value: "garbage"})
	if resp.StatusCode != http.StatusOK || reason != ReasonRead {
		t.Fatalf("garbage cookie: status %d, reason %s", resp.StatusCode, reason)
	}
	if c := sessionCookieOf(resp); c == nil || c.MaxAge >= 0 {
		t.Fatalf("garbage cookie not removed: %v", c)
	}

	// Forged: the primary serves the request (it may be a real write made
	// elsewhere), and the cookie is replaced by the primary's position.
	primaryAt(fc.c, 0x100)
	fc.c.nodes[1].replayLSN.Store(0x100)
	fc.mocks[0].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnRows(sqlmock.NewRows([]string{"lsn"}).AddRow(int64(0x180)))
	resp = serve(t, h, http.MethodGet, &http.Cookie{Name: DefaultSessionCookie, Value: "1.ffffffffffff"})
	if reason != ReasonSession {
		t.Fatalf("forged cookie: reason %s, want session", reason)
	}
	c := sessionCookieOf(resp)
	if c == nil || c.Value != "1.180" {
		t.Fatalf("forged cookie replaced by %v, want 1.180", c)
	}
	// With the clamped cookie, a replica that replayed it serves the client.
	primaryAt(fc.c, 0x200)
	fc.c.nodes[1].replayLSN.Store(0x180)
	fc.mocks[1].ExpectQuery(q("SELECT x FROM t")).WillReturnRows(oneRow())
	resp = serve(t, h, http.MethodGet, c)
	if reason != ReasonRead {
		t.Fatalf("clamped cookie: reason %s, want read", reason)
	}
	if c := sessionCookieOf(resp); c != nil {
		t.Fatalf("an honest cookie was replaced by %q", c.Value)
	}
}

func TestMiddlewareCookieOptions(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := fc.db.ExecContext(r.Context(), "DELETE FROM t"); err != nil {
			t.Error(err)
		}
		primaryAt(fc.c, 0x77) // a probe after the write: no round trip needed
		w.WriteHeader(http.StatusCreated)
	}), SessionCookie(func(c *http.Cookie) {
		c.Name, c.Secure, c.MaxAge, c.SameSite = "rw", true, 60, http.SameSiteStrictMode
	}))
	fc.mocks[0].ExpectExec(q("DELETE FROM t")).WillReturnResult(sqlmock.NewResult(0, 1))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	cs := rec.Result().Cookies()
	if len(cs) != 1 || cs[0].Name != "rw" || cs[0].Value != "1.77" || !cs[0].Secure || cs[0].MaxAge != 60 ||
		cs[0].SameSite != http.SameSiteStrictMode || !cs[0].HttpOnly {
		t.Fatalf("cookies = %+v", cs)
	}

	defer func() {
		if recover() == nil {
			t.Fatal("an invalid cookie name did not panic")
		}
	}()
	Middleware(h, SessionCookie(func(c *http.Cookie) { c.Name = "a b" }))
}

// The wrapped ResponseWriter keeps what the server's offers: Unwrap for
// http.ResponseController, and Hijack.
func TestMiddlewareResponseWriterFeatures(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	srv := httptest.NewServer(Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if r.URL.Path == "/hints" {
			if _, err := fc.db.ExecContext(r.Context(), "DELETE FROM t"); err != nil {
				t.Error(err)
			}
			primaryAt(fc.c, 0x99)
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints) // not the response: the cookie waits
			io.WriteString(w, "hinted")
			return
		}
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetWriteDeadline through Unwrap: %v", err)
		}
		if r.URL.Path == "/hijack" {
			conn, buf, err := rc.Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
			buf.Flush()
			return
		}
		io.WriteString(w, "plain")
	})))
	defer srv.Close()
	fc.mocks[0].ExpectExec(q("DELETE FROM t")).WillReturnResult(sqlmock.NewResult(0, 1))
	for path, want := range map[string]string{"/": "plain", "/hijack": "hijacked", "/hints": "hinted"} {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != want {
			t.Fatalf("%s: body %q, want %q", path, body, want)
		}
		if c := sessionCookieOf(resp); (path == "/hints") != (c != nil) || c != nil && c.Value != "1.99" {
			t.Fatalf("%s: cookie %v", path, c)
		}
	}
}
