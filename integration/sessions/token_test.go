package sessions

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// Issue 8, section 6: a session token covers a write from the moment it
// commits, even while the checkout that made it is still open.

// SessionToken taken after QueryRowContext("INSERT … RETURNING").Scan on a
// sql.Conn that is still open (so database/sql has not ended its checkout)
// covers the row: a request restoring it, with both replicas replaying
// nothing, reads the row from the primary.
func TestSessionTokenCoversInsertReturningOnOpenConn(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "tok", "id bigserial PRIMARY KEY, v text")
	db := testcluster.Open(t, dsnParams...)
	reader := testcluster.Open(t, dsnParams...) // another process, as far as pgreplica goes
	pauseReplay(t, ctx, 1, 2)
	replica := testcluster.Direct(t, 1)

	const rounds = 10
	stale := 0
	for i := range rounds {
		sctx := pgreplica.WithSession(ctx)
		conn, err := db.Conn(sctx)
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		v := "row-" + strconv.Itoa(i)
		if err := conn.QueryRowContext(sctx, "INSERT INTO "+table+" (v) VALUES ($1) RETURNING id", v).Scan(&id); err != nil {
			t.Fatal(err)
		}
		token := pgreplica.SessionToken(sctx)

		// The replicas lack the row: a read that trusted them would miss it.
		var n int
		if err := replica.QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE id = $1", id).Scan(&n); err != nil || n != 0 {
			t.Fatalf("replica1 has %d rows with id %d (err %v): replay is not paused, the test proves nothing", n, id, err)
		}

		for _, d := range []*sql.DB{db, reader} {
			rctx, route := pgreplica.WithRoute(pgreplica.WithSessionToken(context.Background(), token))
			var got string
			err := d.QueryRowContext(rctx, "SELECT v FROM "+table+" WHERE id = $1", id).Scan(&got)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				stale++
				t.Errorf("round %d: token %q: row %d not found, read served by %s (%s)", i, token, id, route.Node(), route.Reason())
			case err != nil:
				t.Fatal(err)
			case got != v:
				t.Fatalf("round %d: v = %q, want %q", i, got, v)
			case route.Node() != primaryAddr():
				t.Fatalf("round %d: served by %s, want the primary: the replicas lack the row", i, route.Node())
			}
		}
		if err := conn.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if stale != 0 {
		t.Fatalf("%d of %d restored reads were stale", stale, 2*rounds)
	}
}

// A Middleware handler that streams the rows of an INSERT … RETURNING,
// writing the response while it iterates, sets the session cookie, and the
// client's next request, with that cookie, reads its rows (from the
// primary: both replicas replay nothing). read_your_writes=off, so that a
// request without the cookie shows what the cookie alone carries.
func TestMiddlewareStreamingInsertReturningSetsCookie(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "tokhttp", "id bigserial PRIMARY KEY, batch int, v text")
	db := testcluster.Open(t, append([]string{rywOff}, dsnParams...)...)
	const batchRows = 2000

	mux := http.NewServeMux()
	mux.HandleFunc("POST /batches/{b}", func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.QueryContext(r.Context(),
			"INSERT INTO "+table+" (batch, v) SELECT $1, 'v' || g FROM generate_series(1, $2::int) g RETURNING id",
			r.PathValue("b"), batchRows)
		if err != nil {
			t.Errorf("POST: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Errorf("POST: %v", err)
				return
			}
			fmt.Fprintln(w, id) // the headers go out with the first rows
		}
		if err := rows.Err(); err != nil {
			t.Errorf("POST: %v", err)
		}
	})
	mux.HandleFunc("GET /batches/{b}", func(w http.ResponseWriter, r *http.Request) {
		ctx, route := pgreplica.WithRoute(r.Context())
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE batch = $1", r.PathValue("b")).Scan(&n); err != nil {
			t.Errorf("GET: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("X-Served-By", route.Node())
		fmt.Fprint(w, n)
	})
	srv := httptest.NewServer(pgreplica.Middleware(mux))
	t.Cleanup(srv.Close)
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)

	pauseReplay(t, ctx, 1, 2)
	get := func(client *http.Client, b int) (count int, servedBy string) {
		t.Helper()
		resp, err := client.Get(srv.URL + "/batches/" + strconv.Itoa(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := fmt.Fscan(resp.Body, &count); err != nil {
			t.Fatal(err)
		}
		return count, resp.Header.Get("X-Served-By")
	}

	stale := 0
	for b := 1; b <= 3; b++ {
		jar, err := cookiejar.New(nil)
		if err != nil {
			t.Fatal(err)
		}
		client := &http.Client{Jar: jar, Transport: transport}
		resp, err := client.Post(srv.URL+"/batches/"+strconv.Itoa(b), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		lines := 0
		for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
			lines++
		}
		resp.Body.Close()
		if lines != batchRows {
			t.Fatalf("batch %d: %d ids streamed, want %d", b, lines, batchRows)
		}
		var cookie *http.Cookie
		for _, c := range resp.Cookies() {
			if c.Name == pgreplica.DefaultSessionCookie {
				cookie = c
			}
		}
		if cookie == nil || cookie.Value == "" {
			t.Errorf("batch %d: the streaming write set no session cookie (Set-Cookie: %q)", b, resp.Header.Values("Set-Cookie"))
		}

		// Without the cookie a read goes to a replica, which lacks the
		// rows: what the cookie must prevent.
		if n, by := get(&http.Client{Transport: transport}, b); n != 0 || !testcluster.IsReplicaAddr(by) {
			t.Fatalf("batch %d without the cookie: %d rows from %s, want 0 from a paused replica: the test proves nothing", b, n, by)
		}
		n, by := get(client, b)
		if n != batchRows {
			stale++
			t.Errorf("batch %d with the cookie: %d rows from %s, want %d", b, n, by, batchRows)
		} else if by != primaryAddr() {
			t.Fatalf("batch %d with the cookie: served by %s, want the primary", b, by)
		}
	}
	if stale != 0 {
		t.Fatalf("%d of 3 reads after a streaming write were stale", stale)
	}
}
