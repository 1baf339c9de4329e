package sessions

import (
	"database/sql"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// itemsHandler is a tiny service on db: POST /items?id=N&v=… stores a row,
// GET /items/N returns its v, with the node that served the read in the
// X-Served-By header.
func itemsHandler(t *testing.T, db *sql.DB, table string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /items", func(w http.ResponseWriter, r *http.Request) {
		_, err := db.ExecContext(r.Context(), "INSERT INTO "+table+" (id, v) VALUES ($1, $2)", r.FormValue("id"), r.FormValue("v"))
		if err != nil {
			t.Errorf("POST: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx, route := pgreplica.WithRoute(r.Context())
		var v string
		err := db.QueryRowContext(ctx, "SELECT v FROM "+table+" WHERE id = $1", r.PathValue("id")).Scan(&v)
		w.Header().Set("X-Served-By", route.Node())
		w.Header().Set("X-Reason", route.Reason().String())
		switch {
		case errors.Is(err, sql.ErrNoRows):
			http.NotFound(w, r)
		case err != nil:
			t.Errorf("GET: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			io.WriteString(w, v)
		}
	})
	return pgreplica.Middleware(mux)
}

// A client writes through server A and reads through server B, two
// processes as far as pgreplica goes (two *sql.DB, two connectors, two
// monitors): the session cookie A set makes B read the write from the
// primary while both replicas replay nothing, and from the replicas again
// soon after replay resumes.
func TestMiddlewareCarriesSessionsAcrossServers(t *testing.T) {
	ctx := testCtx(t)
	table := testcluster.NewTable(t, ctx, "http", "id bigint PRIMARY KEY, v text")
	dbA := testcluster.Open(t, dsnParams...)
	dbB := testcluster.Open(t, dsnParams...)
	srvA := httptest.NewServer(itemsHandler(t, dbA, table))
	t.Cleanup(srvA.Close)
	srvB := httptest.NewServer(itemsHandler(t, dbB, table))
	t.Cleanup(srvB.Close)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Jar: jar, Transport: transport}

	// get fetches /items/id from srv: status, body, the node that read.
	get := func(srv *httptest.Server, id int) (int, string, string) {
		t.Helper()
		resp, err := client.Get(srv.URL + "/items/" + strconv.Itoa(id))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if node := resp.Header.Get("X-Served-By"); !testcluster.IsReplicaAddr(node) {
			t.Logf("GET /items/%d: %s (%s)", id, node, resp.Header.Get("X-Reason"))
		}
		return resp.StatusCode, string(body), resp.Header.Get("X-Served-By")
	}
	post := func(srv *httptest.Server, id int, v string) {
		t.Helper()
		resp, err := client.PostForm(srv.URL+"/items", url.Values{"id": {strconv.Itoa(id)}, "v": {v}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST: status %d", resp.StatusCode)
		}
	}
	cookie := func() string {
		t.Helper()
		u, _ := url.Parse(srvB.URL)
		for _, c := range jar.Cookies(u) {
			if c.Name == pgreplica.DefaultSessionCookie {
				return c.Value
			}
		}
		return ""
	}

	resume := pauseReplay(t, ctx, 1, 2)
	post(srvA, 1, "one")
	if cookie() == "" {
		t.Fatal("the POST set no session cookie")
	}
	for i := range 20 {
		code, body, node := get(srvB, 1)
		if code != http.StatusOK || body != "one" || node != primaryAddr() {
			t.Fatalf("GET %d from B: %d %q served by %s; want the row, from the primary", i, code, body, node)
		}
	}
	// Another client, without the cookie, reads from a stale replica.
	resp, err := (&http.Client{Transport: transport}).Get(srvB.URL + "/items/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !testcluster.IsReplicaAddr(resp.Header.Get("X-Served-By")) {
		t.Fatalf("GET without the cookie: %d from %s; want 404 from a replica", resp.StatusCode, resp.Header.Get("X-Served-By"))
	}

	start := time.Now()
	resume()
	back := backOnReplica(t, get, srvB, 1, "one", start)
	t.Logf("server B's reads for the client returned to a replica %s after replay resumed", back.Round(time.Millisecond))

	// A forged cookie far ahead of the primary, and a garbage one: the
	// requests work, and the reads soon go back to the replicas. Once both
	// replicas replayed the row: a request without a usable cookie is a
	// plain read, which any replica within max_replica_lag may serve.
	testcluster.WaitReplayed(t, ctx)
	u, _ := url.Parse(srvB.URL)
	for _, bad := range []string{"1.ffffffffffffffff", "1." + strconv.FormatUint(1<<60, 16), "garbage", "1.", "9.10"} {
		jar.SetCookies(u, []*http.Cookie{{Name: pgreplica.DefaultSessionCookie, Value: bad, Path: "/"}})
		start := time.Now()
		code, body, _ := get(srvB, 1)
		if code != http.StatusOK || body != "one" {
			t.Fatalf("cookie %q: GET %d %q", bad, code, body)
		}
		if cookie() == bad {
			t.Fatalf("cookie %q was neither replaced nor removed", bad)
		}
		back := backOnReplica(t, get, srvB, 1, "one", start)
		t.Logf("cookie %q: reads on a replica again after %s (cookie now %q)", bad, back.Round(time.Millisecond), cookie())
	}
}

// backOnReplica polls GET /items/id on srv until a replica serves it, and
// fails unless that happens within returnBound of start; every answer must
// be want. It returns the time since start.
func backOnReplica(t *testing.T, get func(*httptest.Server, int) (int, string, string), srv *httptest.Server, id int, want string, start time.Time) time.Duration {
	t.Helper()
	for {
		code, body, node := get(srv, id)
		if code != http.StatusOK || body != want {
			t.Fatalf("GET: %d %q from %s; want %q", code, body, node, want)
		}
		if testcluster.IsReplicaAddr(node) {
			return time.Since(start)
		}
		if time.Since(start) > returnBound {
			t.Fatalf("reads stayed on %s for %s, more than %s", node, time.Since(start), returnBound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
