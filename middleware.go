package pgreplica

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// DefaultSessionCookie is the name of the cookie Middleware keeps a
// client's session token in.
const DefaultSessionCookie = "pgreplica_session"

// DefaultSessionHeader is the name of the HTTP header Middleware reads a
// session token from and sets on responses, for clients that keep no
// cookies (service-to-service calls, mobile clients).
const DefaultSessionHeader = "Pgreplica-Session"

// MiddlewareOption configures Middleware.
type MiddlewareOption func(*middleware)

// SessionCookie changes the cookie Middleware sets. edit gets the default,
//
//	http.Cookie{Name: "pgreplica_session", Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode}
//
// (no MaxAge: it lasts as long as the browser session), and may change any
// field: Secure for HTTPS-only sites, MaxAge, Domain, Name. Value is the
// session token and is set by Middleware. Middleware panics when the edited
// cookie is not valid.
func SessionCookie(edit func(c *http.Cookie)) MiddlewareOption {
	return func(m *middleware) { edit(&m.cookie) }
}

// SessionHeader changes the name of the header Middleware carries the
// session token in, as well as the cookie (DefaultSessionHeader); "" turns
// the header off. A request may bring its token in either; when it brings
// both, its session covers both. A response that sets the cookie sets the
// header to the same token.
func SessionHeader(name string) MiddlewareOption {
	return func(m *middleware) { m.header = http.CanonicalHeaderKey(name) }
}

// PrimaryFor chooses the requests that run wholly on the primary (with
// UsePrimary): by default those whose method is not safe (see Middleware).
// A service whose POST requests only search, or a GraphQL endpoint, can
// send only its mutations there:
//
//	pgreplica.PrimaryFor(func(r *http.Request) bool { return r.URL.Path != "/search" })
//
// Requests it returns false for still write correctly (writes always go to
// the primary) and read their own writes through the session.
func PrimaryFor(f func(r *http.Request) bool) MiddlewareOption {
	return func(m *middleware) { m.primaryFor = f }
}

type middleware struct {
	next       http.Handler
	cookie     http.Cookie
	header     string
	primaryFor func(*http.Request) bool
}

// Middleware gives every request a read-your-writes session kept in a
// cookie, so that each client reads its own writes from then on, from a
// replica as soon as one has replayed them and from the primary until then.
//
// The request's context carries the session, restored from the cookie or
// the Pgreplica-Session header when the request has one (see
// WithSessionToken and SessionHeader). Safe methods (GET, HEAD, OPTIONS,
// TRACE) run with it as it is, so their reads go to replicas. Other
// methods (POST, PUT, PATCH, DELETE, …) also run with UsePrimary: whatever
// they read is current. PrimaryFor changes which requests do.
//
// When a request wrote through its context, the response sets the cookie
// to the session's token before the handler's headers go out: at its first
// WriteHeader, Write or Flush, or when it returns without writing. Writes
// made after that are not covered. Learning the position of the latest
// write may cost one round trip to the primary (see SessionToken). The
// cookie is also replaced when the one the request brought was clamped,
// and removed when it did not parse. The response header carries the same
// token whenever the cookie is set to one.
//
// The ResponseWriter handlers get supports Flush and Hijack when the
// server's does, and Unwrap for http.ResponseController.
func Middleware(next http.Handler, opts ...MiddlewareOption) http.Handler {
	m := &middleware{
		next:       next,
		header:     DefaultSessionHeader,
		primaryFor: func(r *http.Request) bool { return !safeMethod(r.Method) },
		cookie: http.Cookie{
			Name:     DefaultSessionCookie,
			Path:     "/",
			HttpOnly: true,
			SameSite: http.SameSiteLaxMode,
		},
	}
	for _, o := range opts {
		o(m)
	}
	check := m.cookie
	check.Value = formatToken(unknownLSN)
	if err := check.Valid(); err != nil {
		panic(fmt.Sprintf("pgreplica.Middleware: session cookie: %v", err))
	}
	return m
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token := ""
	if c, err := r.Cookie(m.cookie.Name); err == nil {
		token = c.Value
	}
	ctx := r.Context()
	s := restoreSession(optionsFrom(ctx), token)
	if m.header != "" {
		if h := r.Header.Get(m.header); h != "" {
			// On top of the cookie's: a bad header token is ignored, and
			// only a bad cookie is removed.
			hs := restoreSession(&routeOptions{session: s}, h)
			hs.garbage = s.garbage
			s = hs
		}
	}
	primary := m.primaryFor(r)
	ctx = with(ctx, func(o *routeOptions) {
		o.session = s
		if primary {
			o.primary = true
		}
	})
	sw := &sessionWriter{ResponseWriter: w, m: m, ctx: ctx, s: s}
	m.next.ServeHTTP(sw, r.WithContext(ctx))
	sw.setCookie()
}

// safeMethod reports the methods RFC 9110 defines as safe: they only read.
func safeMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// sessionCookie is the cookie to set after a request ran with s, or nil.
func (m *middleware) sessionCookie(ctx context.Context, s *session) *http.Cookie {
	c := m.cookie
	switch {
	case s.wrote.Load() || s.clamped.Load() || (s.claim.Load() != 0 && s.conn.Load() != nil):
		// It wrote; or it brought a forged position, or one ahead of what
		// this process knows of the primary: replace it by a checked one
		// so the next requests need not check it again.
		c.Value = formatToken(s.position(ctx))
	case s.garbage:
		c.Value, c.MaxAge, c.Expires = "", -1, time.Time{}
	default:
		return nil
	}
	return &c
}

// sessionWriter sets the session cookie just before the response's
// headers are written.
type sessionWriter struct {
	http.ResponseWriter
	m    *middleware
	ctx  context.Context
	s    *session
	done bool
}

func (w *sessionWriter) setCookie() {
	if w.done {
		return
	}
	w.done = true
	if c := w.m.sessionCookie(w.ctx, w.s); c != nil {
		http.SetCookie(w.ResponseWriter, c)
		if w.m.header != "" && c.Value != "" {
			w.Header().Set(w.m.header, c.Value)
		}
	}
}

func (w *sessionWriter) WriteHeader(code int) {
	// Informational responses (103 Early Hints) come before the real one.
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.setCookie()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Write(b []byte) (int, error) {
	w.setCookie()
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher; it does nothing when the server's
// ResponseWriter cannot flush.
func (w *sessionWriter) Flush() { _ = w.FlushError() }

// FlushError is what http.ResponseController.Flush calls.
func (w *sessionWriter) FlushError() error {
	w.setCookie()
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker; it fails with http.ErrNotSupported when
// the server's ResponseWriter cannot hijack (HTTP/2).
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.done = true // the handler speaks for itself from now on
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
