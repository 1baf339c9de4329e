package integration

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// writeFunction creates a table and a plpgsql function that inserts its
// argument into it and returns 1, and waits until the replicas have both.
// It returns the table and the function's name.
func writeFunction(t *testing.T, ctx context.Context) (table, fn string) {
	t.Helper()
	table = testcluster.NewTable(t, ctx, "fnwrites", "k text PRIMARY KEY")
	fn = table + "_write"
	_, err := testcluster.Direct(t, 0).ExecContext(ctx, `CREATE FUNCTION `+fn+`(key text) RETURNS int
		LANGUAGE plpgsql AS $$ BEGIN INSERT INTO `+table+` VALUES (key); RETURN 1; END $$`)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	return table, fn
}

// A SELECT of a user function that writes, sent to the primary by a
// UsePrimary context, a primary hint or a conn pinned to the primary, is
// a write of the session: the session's next read, made elsewhere, sees
// its row although neither replica replays anything.
func TestWriteFunctionReachingPrimaryIsASessionWrite(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "max_replica_lag=off", "hedge_after=off")
	table, fn := writeFunction(t, ctx)
	pauseReplicas(t, ctx)

	for _, path := range []string{"use_primary", "hint", "pinned"} {
		t.Run(path, func(t *testing.T) {
			sctx := pgreplica.WithSession(ctx)
			key := "k-" + path
			query := "SELECT " + fn + "($1)"
			var one int
			switch path {
			case "use_primary":
				err := db.QueryRowContext(pgreplica.UsePrimary(sctx), query, key).Scan(&one)
				if err != nil {
					t.Fatal(err)
				}
			case "hint":
				if err := db.QueryRowContext(sctx, "/* pgreplica:primary */ "+query, key).Scan(&one); err != nil {
					t.Fatal(err)
				}
			case "pinned":
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				// A write without the session pins the conn to the primary.
				if _, err := conn.ExecContext(ctx, "SELECT 1"); err != nil {
					t.Fatal(err)
				}
				rctx, route := pgreplica.WithRoute(sctx)
				if err := conn.QueryRowContext(rctx, query, key).Scan(&one); err != nil {
					t.Fatal(err)
				}
				if route.Reason() != pgreplica.ReasonPinned {
					t.Fatalf("reason %s; want pinned", route.Reason())
				}
				conn.Close()
			}
			var n int
			if err := db.QueryRowContext(sctx, "SELECT count(*) FROM "+table+" WHERE k = $1", key).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("the session's read after %s(%q) through %s found %d rows; want 1", fn, key, path, n)
			}
		})
	}
}

// Middleware: a POST that writes through a SELECT of a function sets the
// session cookie, and the client's next GET reads its row although the
// replicas replay nothing.
func TestMiddlewarePostWritingThroughFunctionSetsCookie(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "max_replica_lag=off", "hedge_after=off")
	table, fn := writeFunction(t, ctx)
	pauseReplicas(t, ctx)

	h := pgreplica.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			var one int
			if err := db.QueryRowContext(r.Context(), "SELECT "+fn+"('posted')").Scan(&one); err != nil {
				http.Error(w, err.Error(), 500)
			}
			return
		}
		var n int
		if err := db.QueryRowContext(r.Context(), "SELECT count(*) FROM "+table+" WHERE k = 'posted'").Scan(&n); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Write([]byte(strings.Repeat("x", n)))
	}))
	post := httptest.NewRecorder()
	h.ServeHTTP(post, httptest.NewRequest(http.MethodPost, "/", nil))
	if post.Code != 200 {
		t.Fatalf("POST: %d %s", post.Code, post.Body)
	}
	cookies := post.Result().Cookies()
	if len(cookies) != 1 || cookies[0].Name != pgreplica.DefaultSessionCookie || cookies[0].Value == "" {
		t.Fatalf("POST that wrote through %s() set cookies %v; want the session cookie", fn, cookies)
	}
	get := httptest.NewRequest(http.MethodGet, "/", nil)
	get.AddCookie(cookies[0])
	resp := httptest.NewRecorder()
	h.ServeHTTP(resp, get)
	if resp.Code != 200 || resp.Body.String() != "x" {
		t.Fatalf("GET after the POST: %d %q; want the posted row", resp.Code, resp.Body)
	}
}

// After a standby refused a read that the primary then served (an unlogged
// table: 0A000), the rest of the sql.Conn's checkout reads from the
// primary: a replica may not have what that read saw.
func TestStandbyRerunPinsConn(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t, "hedge_after=off")
	table := testcluster.NewTable(t, ctx, "unlogged_src", "x int")
	if _, err := testcluster.Direct(t, 0).ExecContext(ctx, "CREATE UNLOGGED TABLE "+table+"_u (x int)"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitReplayed(t, ctx)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rctx, route := pgreplica.WithRoute(ctx)
	var n int
	if err := conn.QueryRowContext(rctx, "SELECT count(*) FROM "+table+"_u").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonRecoveryError {
		t.Fatalf("read of an unlogged table: %s %s; want the primary, recovery_error", route.Node(), route.Reason())
	}
	for range 5 {
		if port := testcluster.Port(t, rctx, conn); port != primaryPort() || route.Reason() != pgreplica.ReasonPinned {
			t.Fatalf("the conn's next read: %s (%s); want the primary, pinned", testcluster.Role(port), route.Reason())
		}
	}
}

// set_config(…, true) outside a transaction lasts for its statement: it
// does not keep the conn on the primary. Reads on the same database/sql
// connection afterwards go to replicas.
func TestSetConfigLocalDoesNotPin(t *testing.T) {
	ctx := testCtx(t)
	// read_your_writes=off: the call runs on the primary as a possible
	// write, so in the default mode the next reads also wait for a replica
	// known to have replayed it, which a loaded machine may take a probe
	// interval to learn. What is checked here is the pin, not that wait.
	db := openDB(t, "hedge_after=off", "read_your_writes=off")
	db.SetMaxOpenConns(1)
	var v string
	if err := db.QueryRowContext(ctx, "SELECT set_config('app.tenant', 'a', true)").Scan(&v); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		rctx, route := pgreplica.WithRoute(ctx)
		var setting string
		var port int
		if err := db.QueryRowContext(rctx, "SELECT coalesce(current_setting('app.tenant', true), ''), inet_server_port()").Scan(&setting, &port); err != nil {
			t.Fatal(err)
		}
		if !isReplicaPort(port) || !replicaRead(route.Reason()) {
			t.Fatalf("read %d after set_config(…, true): %s (%s); want a replica, read", i, testcluster.Role(port), route.Reason())
		}
		if setting != "" {
			t.Fatalf("read %d sees app.tenant = %q", i, setting)
		}
	}
}

// WithRoute says which node refused a statement: here the primary, which
// refused an INSERT of a duplicate key.
func TestRouteOfRefusedInsert(t *testing.T) {
	ctx := testCtx(t)
	db := openDB(t)
	table := testcluster.NewTable(t, ctx, "refused", "k int PRIMARY KEY")
	if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	rctx, route := pgreplica.WithRoute(ctx)
	if _, err := db.ExecContext(rctx, "INSERT INTO "+table+" VALUES (1)"); err == nil {
		t.Fatal("duplicate INSERT succeeded")
	}
	if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonWrite {
		t.Fatalf("route of the refused INSERT: %q %s; want %s write", route.Node(), route.Reason(), primaryAddr())
	}
	rctx, route = pgreplica.WithRoute(ctx)
	if err := db.QueryRowContext(rctx, "INSERT INTO "+table+" VALUES (1) RETURNING k").Scan(new(int)); err == nil {
		t.Fatal("duplicate INSERT … RETURNING succeeded")
	}
	if route.Node() != primaryAddr() || route.Reason() != pgreplica.ReasonClassifier {
		t.Fatalf("route of the refused INSERT … RETURNING: %q %s; want %s classifier", route.Node(), route.Reason(), primaryAddr())
	}
}
