package model

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pgreplica/pgreplica"
	"github.com/pgreplica/pgreplica/integration/model/check"
	"github.com/pgreplica/pgreplica/internal/testcluster"
)

// mdb is one *sql.DB of the run, with what its workers share.
type mdb struct {
	name, app string
	// ryw: opened in the default mode or with read_your_writes=connector,
	// so every read sees the writes the *sql.DB acknowledged before it
	// began (checked for the worker's own writes: its scope).
	ryw       bool
	db        *sql.DB
	connector *pgreplica.Connector
	srv       *httptest.Server // Middleware in front of handlers on db
	transport *http.Transport
	// Prepared once, while the primary is up, and used all run long.
	stmtRead, stmtWrite, stmtFn *sql.Stmt
}

// openDB opens one *sql.DB of the run; mode is its read_your_writes, ""
// for none in the DSN (the default, connector).
func (r *run) openDB(hedge, app, mode string) *mdb {
	t := r.t
	ryw := mode != "off"
	params := []string{"monitor_interval=" + monitorInterval.String(), "application_name=" + app,
		"max_replica_lag=" + maxReplicaLag.String(), hedge,
		"primary_max_conns=" + strconv.Itoa(primaryMax), "replica_max_conns=" + strconv.Itoa(replicaMax)}
	if mode != "" {
		params = append(params, "read_your_writes="+mode)
	}
	cfg, err := pgreplica.ParseConfig(testcluster.DSN(params...))
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgreplica.NewConnector(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	name := hedge
	switch mode {
	case "":
		name += " read_your_writes default"
	case "connector":
		name += " read_your_writes=connector"
	}
	d := &mdb{name: name, app: app, ryw: ryw, db: sql.OpenDB(c), connector: c}
	t.Cleanup(func() { d.db.Close() })
	d.db.SetMaxOpenConns(16)
	ctx, cancel := context.WithTimeout(r.base, 30*time.Second)
	defer cancel()
	for _, p := range []struct {
		dst  **sql.Stmt
		text string
	}{{&d.stmtRead, r.readSQL()}, {&d.stmtWrite, r.execSQL()}, {&d.stmtFn, r.fnSQL()}} {
		if *p.dst, err = d.db.PrepareContext(ctx, p.text); err != nil {
			t.Fatal(err)
		}
	}
	d.srv = httptest.NewServer(pgreplica.Middleware(r.handler(d)))
	d.transport = &http.Transport{MaxIdleConnsPerHost: workersPerDB}
	t.Cleanup(func() { d.transport.CloseIdleConnections(); d.srv.Close() })
	return d
}

// The statements. Every read returns the node that answered, the highest
// key of the caller's scope it sees, the highest heartbeat it sees and the
// value of model.uid its connection has ("" when it has none).
func (r *run) readSQL() string {
	return "SELECT inet_server_port(), coalesce((SELECT max(k) FROM " + r.w + " WHERE k >= $1 AND k < $2), 0), coalesce((SELECT max(seq) FROM " + r.hb + "), 0), " +
		"coalesce(current_setting('model.uid', true), '')"
}
func (r *run) execSQL() string {
	return "INSERT INTO " + r.w + " (k) VALUES ($1) ON CONFLICT (k) DO UPDATE SET n = " + r.w + ".n + 1"
}
func (r *run) returningSQL() string { return r.execSQL() + " RETURNING inet_server_port()" }
func (r *run) fnSQL() string        { return "SELECT " + r.fn + "($1, $2)" }

// killMark marks the statements the "terminate primary statement" fault
// kills while they run: a read that waits 100 ms on the primary, and a
// procedure that commits its write and then waits 100 ms, so that killing
// it leaves a write applied whose outcome the caller cannot know.
const killMark = "/* model-kill */"

func (r *run) slowReadSQL() string { return r.readSQL() + " FROM pg_sleep($3) " + killMark }
func (r *run) callSQL() string     { return "CALL " + r.fn + "_commit($1, NULL) " + killMark }

// fnTailSQL calls the write function in its first row and takes 100 ms
// over its second: a reader has the first row well before the commit.
func (r *run) fnTailSQL() string {
	return "SELECT CASE WHEN g = 1 THEN " + r.fn + "($1, $2) ELSE length(pg_sleep(0.1)::text) END FROM generate_series(1, 2) g"
}

// worker is one goroutine of the workload, on one DB.
type worker struct {
	r    *run
	id   int
	d    *mdb
	rng  *rand.Rand
	seqs map[int64]int64
	anon int64 // scope of its writes outside sessions

	sess  int64 // its session's scope
	sctx  context.Context
	hscop int64 // its HTTP client's scope
	http  *http.Client
	bufs  [][]byte // reused arguments: a call must not touch them after it returned
}

func (r *run) newWorker(id int, d *mdb, sd uint64) *worker {
	jar, _ := cookiejar.New(nil)
	w := &worker{
		r: r, id: id, d: d, rng: rand.New(rand.NewPCG(sd, 1)), seqs: map[int64]int64{},
		anon: r.nextScope.Add(1), sess: r.nextScope.Add(1), hscop: r.nextScope.Add(1),
		http: &http.Client{Jar: jar, Transport: d.transport, Timeout: opTimeout},
		bufs: [][]byte{[]byte("abc"), []byte("def")},
	}
	w.sctx = pgreplica.WithSession(r.base)
	return w
}

func (w *worker) key(scope int64) int64 {
	w.seqs[scope]++
	return scope*scopeSpan + w.seqs[scope]
}

func (w *worker) begin(kind string, scope int64) check.Op {
	return check.Op{Worker: w.id, DB: w.d.name, Kind: kind, Scope: scope, Start: w.r.now()}
}

func (w *worker) end(op *check.Op, err error) {
	op.End = w.r.now()
	if err != nil {
		op.Err = err.Error()
	}
	w.r.record(*op)
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// A read's expectations.
type expect struct {
	ryw, fresh, stale bool
	bound             time.Duration
	checkout          bool
	setting           string // the model.uid its conn set
	// primaryRead: its text calls only known built-ins and it goes to the
	// primary outside a transaction, on a conn without session state.
	primaryRead bool
}

var (
	plain    = expect{stale: true, bound: maxReplicaLag}
	fresh    = expect{fresh: true}
	onPrim   = expect{fresh: true, primaryRead: true}
	sessRead = expect{ryw: true, stale: true, bound: maxReplicaLag}
)

func (w *worker) read(ctx context.Context, q querier, kind, text string, scope int64, e expect, extra ...any) {
	op := w.begin(kind, scope)
	op.Read, op.RYW, op.Fresh, op.Stale, op.Bound, op.Checkout = true, e.ryw, e.fresh, e.stale, e.bound, e.checkout
	op.WantSetting, op.PrimaryRead = e.setting, e.primaryRead
	rctx, route := pgreplica.WithRoute(ctx)
	cctx, cancel := context.WithTimeout(rctx, opTimeout)
	args := append([]any{scope * scopeSpan, (scope + 1) * scopeSpan}, extra...)
	err := q.QueryRowContext(cctx, text, args...).Scan(&op.Port, &op.ScopeMax, &op.HB, &op.Setting)
	cancel()
	op.Reason = reasonOf(route)
	w.end(&op, err)
}

func (w *worker) stmtRead(ctx context.Context, s *sql.Stmt, kind string, scope int64, e expect) {
	op := w.begin(kind, scope)
	op.Read, op.RYW, op.Fresh, op.Stale, op.Bound, op.Stmt = true, e.ryw, e.fresh, e.stale, e.bound, true
	rctx, route := pgreplica.WithRoute(ctx)
	cctx, cancel := context.WithTimeout(rctx, opTimeout)
	err := s.QueryRowContext(cctx, scope*scopeSpan, (scope+1)*scopeSpan).Scan(&op.Port, &op.ScopeMax, &op.HB, &op.Setting)
	cancel()
	op.Reason = reasonOf(route)
	// pgreplica names the primary in the errors of a statement that
	// needed it ("pgreplica: primary host:port: …").
	op.PrimaryErr = err != nil && strings.Contains(err.Error(), "pgreplica: primary ")
	w.end(&op, err)
}

// write runs one write of a fresh key of scope; how is "exec",
// "returning", "fn", "fn slow" (it sleeps 3–50 ms before writing, so
// that its replica attempt is hedged), "fn tail" (100 ms between its first row and its commit),
// "call" (a procedure that commits, then sleeps), "stmt exec" or "stmt fn".
func (w *worker) write(ctx context.Context, q querier, kind, how string, scope int64, checkout bool) bool {
	op := w.begin(kind, scope)
	op.Key, op.Checkout = w.key(scope), checkout
	rctx, route := pgreplica.WithRoute(ctx)
	cctx, cancel := context.WithTimeout(rctx, opTimeout)
	var err error
	switch how {
	case "exec":
		_, err = q.ExecContext(cctx, w.r.execSQL(), op.Key)
	case "returning":
		err = q.QueryRowContext(cctx, w.r.returningSQL(), op.Key).Scan(&op.Port)
	case "fn", "fn hint":
		text := w.r.fnSQL()
		if how == "fn hint" {
			text = "/* pgreplica:primary */ " + text
		}
		op.WriteFn = true
		err = q.QueryRowContext(cctx, text, op.Key, 0.0).Scan(&op.Port)
	case "fn slow":
		// Slower on a replica than hedge_after=1ms, or than an auto delay.
		op.WriteFn = true
		err = q.QueryRowContext(cctx, w.r.fnSQL(), op.Key, slowDelays[w.rng.IntN(len(slowDelays))]).Scan(&op.Port)
	case "fn tail":
		op.WriteFn = true
		err = q.QueryRowContext(cctx, w.r.fnTailSQL(), op.Key, 0.003).Scan(&op.Port)
	case "call":
		// Commits, then sleeps: see killMark.
		err = q.QueryRowContext(cctx, w.r.callSQL(), op.Key).Scan(&op.Port)
	case "stmt exec":
		_, err = w.d.stmtWrite.ExecContext(cctx, op.Key)
	case "stmt fn":
		op.WriteFn = true
		err = w.d.stmtFn.QueryRowContext(cctx, op.Key, 0.0).Scan(&op.Port)
	default:
		panic("unknown write " + how)
	}
	cancel()
	op.Reason = reasonOf(route)
	op.Acked = err == nil
	w.end(&op, err)
	return err == nil
}

// slowDelays are how long the slow write function sleeps before it writes.
var slowDelays = []float64{0.003, 0.02, 0.05}

func reasonOf(route *pgreplica.Route) string {
	if route.Node() == "" {
		return ""
	}
	return route.Reason().String()
}

// loop runs random ops until the run stops, biased so that every kind runs
// many times per run.
func (w *worker) loop() {
	type choice struct {
		weight int
		do     func()
	}
	r, d, ctx := w.r, w.d, w.r.base
	plain := plain
	if d.ryw {
		plain.ryw = true // the default, read_your_writes=connector
	}
	choices := []choice{
		{14, func() { w.read(ctx, d.db, "plain read", r.readSQL(), w.anon, plain) }},
		{6, func() {
			w.read(pgreplica.WithMaxLag(ctx, 0), d.db, "WithMaxLag(0) read", r.readSQL(), w.anon, expect{stale: true})
		}},
		{3, func() {
			w.read(pgreplica.WithMaxLag(ctx, 300*time.Millisecond), d.db, "WithMaxLag(300ms) read", r.readSQL(), w.anon, expect{stale: true, bound: 300 * time.Millisecond})
		}},
		{2, func() {
			w.read(pgreplica.WithMaxLag(ctx, time.Hour), d.db, "WithMaxLag(1h) read", r.readSQL(), w.anon, expect{})
		}},
		{3, func() { w.read(ctx, d.db, "replica-hint read", "/* pgreplica:replica */ "+r.readSQL(), w.anon, plain) }},
		{2, func() { w.read(ctx, d.db, "primary-hint read", "/* pgreplica:primary */ "+r.readSQL(), w.anon, onPrim) }},
		{2, func() { w.read(pgreplica.UsePrimary(ctx), d.db, "UsePrimary read", r.readSQL(), w.anon, onPrim) }},
		{3, func() {
			w.read(pgreplica.UsePrimary(ctx), d.db, "UsePrimary slow read", r.slowReadSQL(), w.anon, onPrim, 0.1)
		}},
		{4, func() { w.stmtRead(ctx, d.stmtRead, "Stmt read", w.anon, plain) }},
		{5, func() {
			// [][]byte: the hedge must not read the inner slices after the
			// call returned (the race detector watches).
			w.read(ctx, d.db, "read with [][]byte arg", r.readSQL()+" WHERE cardinality($3::bytea[]) >= 0", w.anon, plain, w.bufs)
			w.bufs[0][0]++
			w.bufs[1][0]++
		}},
		{3, func() { w.write(ctx, d.db, "exec write", "exec", w.anon, false) }},
		{2, func() { w.write(ctx, d.db, "INSERT RETURNING via Query", "returning", w.anon, false) }},
		{3, func() { w.write(ctx, d.db, "write fn via SELECT", "fn", w.anon, false) }},
		{5, func() { w.write(ctx, d.db, "slow write fn via SELECT", "fn slow", w.anon, false) }},
		{3, func() { w.write(ctx, d.db, "write fn, slow tail", "fn tail", w.anon, false) }},
		{2, func() { w.write(ctx, d.db, "Stmt exec write", "stmt exec", w.anon, false) }},
		{2, func() { w.write(ctx, d.db, "CALL commit, then sleep", "call", w.anon, false) }},
		{2, func() { w.write(ctx, d.db, "Stmt write fn", "stmt fn", w.anon, false) }},
		{14, w.session},
		{5, w.httpRequests},
		{5, w.checkout},
		{2, w.txReadWrite},
		{3, func() { w.txReadOnly(false) }},
		{1, func() { w.txReadOnly(true) }},
		{1, w.sessionState},
	}
	total := 0
	for _, c := range choices {
		total += c.weight
	}
	for !r.stopped() {
		n := w.rng.IntN(total)
		for _, c := range choices {
			if n < c.weight {
				c.do()
				break
			}
			n -= c.weight
		}
	}
}

// session writes through the worker's session in one of the ways a
// session can write, then reads its writes back at once, sometimes after
// passing the session on as a token.
func (w *worker) session() {
	r, d := w.r, w.d
	kinds := []struct{ kind, how string }{
		{"session exec write", "exec"},
		{"session INSERT RETURNING", "returning"},
		{"session write fn", "fn"},
		{"session write fn (UsePrimary)", "fn"},
		{"session write fn (primary hint)", "fn hint"},
		{"session Stmt write fn", "stmt fn"},
	}
	k := kinds[w.rng.IntN(len(kinds))]
	wctx := w.sctx
	if k.kind == "session write fn (UsePrimary)" {
		wctx = pgreplica.UsePrimary(w.sctx)
	}
	if !w.write(wctx, d.db, k.kind, k.how, w.sess, false) {
		return
	}
	if w.rng.IntN(4) == 0 {
		op := w.begin("session token handover", w.sess)
		tok := pgreplica.SessionToken(w.sctx)
		w.sctx = pgreplica.WithSessionToken(r.base, tok)
		w.end(&op, nil)
	}
	for range 1 + w.rng.IntN(3) {
		switch w.rng.IntN(6) {
		case 0:
			w.read(pgreplica.UsePrimary(w.sctx), d.db, "session UsePrimary read", r.readSQL(), w.sess, expect{ryw: true, fresh: true, primaryRead: true})
		case 1:
			w.stmtRead(w.sctx, d.stmtRead, "session Stmt read", w.sess, sessRead)
		default:
			w.read(w.sctx, d.db, "session read", r.readSQL(), w.sess, sessRead)
		}
	}
}

// httpRequests is a client with a cookie jar: a POST that writes (the
// Middleware runs it with UsePrimary), then GETs that must see it.
func (w *worker) httpRequests() {
	hows := []string{"fn", "exec", "returning"}
	how := hows[w.rng.IntN(len(hows))]
	op := w.begin("HTTP POST ("+how+")", w.hscop)
	op.Key, op.WriteFn = w.key(w.hscop), how == "fn"
	var res httpResult
	err := w.httpDo(http.MethodPost, url.Values{"how": {how}, "key": {strconv.FormatInt(op.Key, 10)}}, &res)
	op.Port, op.Reason, op.Acked = res.Port, res.Reason, err == nil
	w.end(&op, err)
	if err != nil {
		return
	}
	for range 1 + w.rng.IntN(2) {
		op := w.begin("HTTP GET", w.hscop)
		op.Read, op.RYW, op.Stale, op.Bound = true, true, true, maxReplicaLag
		err := w.httpDo(http.MethodGet, url.Values{"scope": {strconv.FormatInt(w.hscop, 10)}}, &res)
		op.Port, op.Reason, op.ScopeMax, op.HB, op.Setting = res.Port, res.Reason, res.ScopeMax, res.HB, res.Setting
		w.end(&op, err)
	}
}

type httpResult struct {
	Port     int    `json:"port"`
	Reason   string `json:"reason"`
	ScopeMax int64  `json:"scope_max"`
	HB       int64  `json:"hb"`
	Setting  string `json:"setting"`
	Err      string `json:"err"`
}

func (w *worker) httpDo(method string, v url.Values, res *httpResult) error {
	*res = httpResult{}
	var req *http.Request
	var err error
	if method == http.MethodPost {
		req, err = http.NewRequest(method, w.d.srv.URL+"/write", nil)
		req.URL.RawQuery = v.Encode()
	} else {
		req, err = http.NewRequest(method, w.d.srv.URL+"/read?"+v.Encode(), nil)
	}
	if err != nil {
		return err
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(res); err != nil {
		return fmt.Errorf("HTTP %d: %w", resp.StatusCode, err)
	}
	if res.Err != "" {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, res.Err)
	}
	return nil
}

// handler serves the HTTP ops on d, behind pgreplica.Middleware.
func (r *run) handler(d *mdb) http.Handler {
	mux := http.NewServeMux()
	reply := func(rw http.ResponseWriter, route *pgreplica.Route, res httpResult, err error) {
		res.Reason = reasonOf(route)
		if err != nil {
			res.Err = err.Error()
			rw.WriteHeader(http.StatusInternalServerError)
		}
		_ = json.NewEncoder(rw).Encode(res)
	}
	mux.HandleFunc("POST /write", func(rw http.ResponseWriter, req *http.Request) {
		ctx, route := pgreplica.WithRoute(req.Context())
		key, _ := strconv.ParseInt(req.URL.Query().Get("key"), 10, 64)
		var res httpResult
		var err error
		switch req.URL.Query().Get("how") {
		case "fn":
			err = d.db.QueryRowContext(ctx, r.fnSQL(), key, 0.0).Scan(&res.Port)
		case "returning":
			err = d.db.QueryRowContext(ctx, r.returningSQL(), key).Scan(&res.Port)
		default:
			_, err = d.db.ExecContext(ctx, r.execSQL(), key)
		}
		reply(rw, route, res, err)
	})
	mux.HandleFunc("GET /read", func(rw http.ResponseWriter, req *http.Request) {
		ctx, route := pgreplica.WithRoute(req.Context())
		scope, _ := strconv.ParseInt(req.URL.Query().Get("scope"), 10, 64)
		var res httpResult
		err := d.db.QueryRowContext(ctx, r.readSQL(), scope*scopeSpan, (scope+1)*scopeSpan).Scan(&res.Port, &res.ScopeMax, &res.HB, &res.Setting)
		reply(rw, route, res, err)
	})
	return mux
}

// checkout runs a few statements on one sql.Conn: its reads must see its
// writes, and once the primary answered one, the primary answers the rest.
func (w *worker) checkout() {
	r := w.r
	ctx, cancel := context.WithTimeout(r.base, 3*opTimeout)
	defer cancel()
	scope := r.nextScope.Add(1)
	op := w.begin("sql.Conn checkout", scope)
	c, err := w.d.db.Conn(ctx)
	if err != nil {
		w.end(&op, err)
		return
	}
	defer c.Close()
	var changed bool
	defer func() {
		if changed {
			// set_config(…, true) may have pinned it for good; model.uid
			// stays with the database/sql connection, as with pgx.
			discard(c)
		}
	}()
	on := expect{ryw: true, stale: true, bound: maxReplicaLag, checkout: true}
	for range 2 + w.rng.IntN(3) {
		switch w.rng.IntN(10) {
		case 0, 1:
			w.read(ctx, c, "conn: read", r.readSQL(), scope, on)
		case 2:
			// A standby refuses an unlogged table (0A000): re-run on the
			// primary, which then serves the rest of the checkout.
			op := w.begin("conn: unlogged-table read", scope)
			op.Checkout = true
			rctx, route := pgreplica.WithRoute(ctx)
			var n int64
			err := c.QueryRowContext(rctx, "SELECT inet_server_port(), count(*) FROM "+r.u).Scan(&op.Port, &n)
			op.Reason = reasonOf(route)
			w.end(&op, err)
		case 3:
			w.write(ctx, c, "conn: write fn via SELECT", "fn", scope, true)
		case 4:
			w.write(ctx, c, "conn: slow write fn via SELECT", "fn slow", scope, true)
		case 5:
			w.write(ctx, c, "conn: exec write", "exec", scope, true)
		case 6:
			changed = true
			op := w.begin("conn: set_config(…, true)", scope)
			op.Checkout = true
			rctx, route := pgreplica.WithRoute(ctx)
			var s string
			err := c.QueryRowContext(rctx, "SELECT set_config('model.x', '1', true)").Scan(&s)
			op.Reason = reasonOf(route)
			w.end(&op, err)
		case 7:
			w.write(ctx, c, "conn: INSERT RETURNING", "returning", scope, true)
		case 8, 9:
			// A plain setting: the conn's later reads see it, wherever
			// they run (replicas replay it), and no other conn's do.
			held := changed // session state from an earlier op of this checkout
			changed = true
			user := fmt.Sprintf("w%d-%d", w.id, scope)
			if on.setting != "" && w.rng.IntN(3) == 0 {
				user = ""
			}
			kind, text, args := "conn: SET model.uid", "SET model.uid = '"+user+"'", []any(nil)
			switch {
			case user == "":
				kind, text = "conn: RESET model.uid", "RESET model.uid"
			case w.rng.IntN(2) == 0:
				kind, text, args = "conn: set_config(…, false)", "SELECT set_config('model.uid', $1, false)", []any{user}
			}
			op := w.begin(kind, scope)
			op.Checkout = true
			op.Unsent = !held
			rctx, route := pgreplica.WithRoute(ctx)
			// Exec: no port is recorded, as a plain setting does not pin
			// the checkout to the primary that ran it.
			_, err := c.ExecContext(rctx, text, args...)
			op.Reason = reasonOf(route)
			w.end(&op, err)
			if err != nil {
				return // whether the conn has it is unknown
			}
			on.setting = user
		}
	}
}

// txReadWrite: a write and a read in one transaction on the primary; the
// write is acknowledged by the commit.
func (w *worker) txReadWrite() {
	r := w.r
	ctx, cancel := context.WithTimeout(r.base, opTimeout)
	defer cancel()
	wop := w.begin("rw tx: write+commit", w.anon)
	wop.Key = w.key(w.anon)
	tx, err := w.d.db.BeginTx(ctx, nil)
	if err != nil {
		w.end(&wop, err)
		return
	}
	if _, err := tx.ExecContext(ctx, r.execSQL(), wop.Key); err != nil {
		_ = tx.Rollback()
		w.end(&wop, err)
		return
	}
	w.read(ctx, tx, "rw tx: read", r.readSQL(), w.anon, fresh)
	err = tx.Commit()
	wop.Acked = err == nil
	w.end(&wop, err)
}

// txReadOnly: a read-only transaction (serializable: on the primary).
func (w *worker) txReadOnly(serializable bool) {
	r := w.r
	ctx, cancel := context.WithTimeout(r.base, opTimeout)
	defer cancel()
	opts := &sql.TxOptions{ReadOnly: true}
	kind, e := "ro tx: read", plain
	if serializable {
		opts.Isolation = sql.LevelSerializable
		kind, e = "serializable ro tx: read", fresh
	}
	start := r.now()
	tx, err := w.d.db.BeginTx(ctx, opts)
	if err != nil {
		op := w.begin(kind, w.anon)
		op.Start = start
		// A serializable one begins on the primary, sending nothing first.
		op.Unsent = serializable
		w.end(&op, err)
		return
	}
	// The transaction's first read is bounded from when it began.
	op := w.begin(kind, w.anon)
	op.Start = start
	op.Read, op.Fresh, op.Stale, op.Bound = true, e.fresh, e.stale, e.bound
	rctx, route := pgreplica.WithRoute(ctx)
	err = tx.QueryRowContext(rctx, r.readSQL(), w.anon*scopeSpan, (w.anon+1)*scopeSpan).Scan(&op.Port, &op.ScopeMax, &op.HB, &op.Setting)
	op.Reason = reasonOf(route)
	if err != nil {
		_ = tx.Rollback()
		w.end(&op, err)
		return
	}
	if err := tx.Commit(); err != nil {
		op.Err = "commit: " + err.Error()
	}
	w.end(&op, nil)
}

// sessionState changes session state on one database/sql connection:
// SET, set_config(…, false), or set_config(…, true) outside a
// transaction, then discards that connection as README advises (left in
// the pool, it would keep its primary connection for good).
func (w *worker) sessionState() {
	ctx, cancel := context.WithTimeout(w.r.base, opTimeout)
	defer cancel()
	var op check.Op
	c, err := w.d.db.Conn(ctx)
	if err != nil {
		op = w.begin("session state: checkout", 0)
		w.end(&op, err)
		return
	}
	defer c.Close()
	defer discard(c)
	rctx, route := pgreplica.WithRoute(ctx)
	var s string
	switch w.rng.IntN(3) {
	case 0:
		op = w.begin("SET", 0)
		op.Unsent = true // the checkout's first statement
		_, err = c.ExecContext(rctx, "SET model.x = '1'")
	case 1:
		op = w.begin("set_config(…, false)", 0)
		err = c.QueryRowContext(rctx, "SELECT set_config('model.x', '2', false)").Scan(&s)
	default:
		op = w.begin("set_config(…, true)", 0)
		err = c.QueryRowContext(rctx, "SELECT set_config('model.x', '3', true)").Scan(&s)
	}
	op.Reason = reasonOf(route)
	w.end(&op, err)
	if err == nil {
		// A plain read on the same connection: the primary, where its
		// session state is (set_config(…, true) left none).
		w.read(ctx, c, "read after session state", w.r.readSQL(), w.anon, plain)
	}
}

// discard makes database/sql close c's connection instead of pooling it.
func discard(c *sql.Conn) {
	_ = c.Raw(func(any) error { return driver.ErrBadConn })
}
