package pgreplica

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
)

func sessionOf(ctx context.Context) *session {
	if o := optionsFrom(ctx); o != nil {
		return o.session
	}
	return nil
}

// primaryAt records a probe of the primary that started now and found it
// at lsn.
func primaryAt(c *Connector, lsn uint64) { c.primarySample.Store(&lsnSample{at: monoNow(), lsn: lsn}) }

// bareConnector is a Connector with no node: asking its primary fails.
func bareConnector() *Connector {
	c := &Connector{}
	c.topo.Store(&topology{})
	return c
}

func TestTokenRoundTrip(t *testing.T) {
	for _, lsn := range []uint64{0, 1, 0x16b3a28, 0x1_0000_0000, math.MaxUint64 - 1, math.MaxUint64} {
		tok := formatToken(lsn)
		if !strings.HasPrefix(tok, "1.") || len(tok) > 18 {
			t.Errorf("formatToken(%#x) = %q", lsn, tok)
		}
		got, ok := parseToken(tok)
		if !ok || got != lsn {
			t.Errorf("parseToken(%q) = %#x, %v; want %#x", tok, got, ok, lsn)
		}
	}
	if got, ok := parseToken("1.ABCDEF"); !ok || got != 0xabcdef {
		t.Errorf("upper-case hex: %#x, %v", got, ok)
	}
}

func TestGarbageTokens(t *testing.T) {
	for _, tok := range []string{
		"x", "1.", "1", "2.10", "1.-1", "1.+1", "1.0x10", "1.1_0", "1.g", "1. 10", "1.10 ",
		"1.10000000000000000", // 17 digits: beyond 64 bits
		"1.00000000000000001", // 17 digits even if small
		"\x00", "1.10;a=b", "%31.10",
	} {
		if lsn, ok := parseToken(tok); ok {
			t.Errorf("parseToken(%q) = %#x, accepted", tok, lsn)
		}
		ctx := WithSessionToken(context.Background(), tok)
		s := sessionOf(ctx)
		if s == nil || !s.garbage || s.claim.Load() != 0 || s.lsn.Load() != 0 || s.pending.Load() != 0 {
			t.Errorf("WithSessionToken(%q): want a fresh session marked garbage", tok)
		}
	}
	// "" is no token at all, not garbage.
	s := sessionOf(WithSessionToken(context.Background(), ""))
	if s == nil || s.garbage {
		t.Error(`WithSessionToken(""): want a fresh session`)
	}
	if SessionToken(context.Background()) != "" {
		t.Error("SessionToken without a session is not empty")
	}
	if got := SessionToken(WithSession(context.Background())); got != "1.0" {
		t.Errorf("SessionToken of a fresh session = %q, want 1.0", got)
	}
}

// A token at or below the primary's latest known position is taken as it
// is; one above waits for a probe that started after it was restored and is
// capped by it; with no probe at all it waits too.
func TestTokenClamping(t *testing.T) {
	c := bareConnector()
	primaryAt(c, 1000)

	s := sessionOf(WithSessionToken(context.Background(), formatToken(800)))
	if lsn, primary := s.floor(c); primary || lsn != 800 {
		t.Fatalf("honest old token: floor = %d, %v; want 800 on a replica", lsn, primary)
	}
	if s.clamped.Load() {
		t.Fatal("honest token marked clamped")
	}

	s = sessionOf(WithSessionToken(context.Background(), formatToken(5000)))
	if _, primary := s.floor(c); !primary {
		t.Fatal("token ahead of the latest probe: want the primary until a newer probe")
	}
	if s.conn.Load() != c {
		t.Fatal("the session did not remember the connector that checked its token")
	}
	primaryAt(c, 1200)
	if lsn, primary := s.floor(c); primary || lsn != 1200 {
		t.Fatalf("forged token: floor = %d, %v; want clamped to 1200", lsn, primary)
	}
	if !s.clamped.Load() {
		t.Fatal("forged token not marked clamped")
	}
	if got := SessionToken(with(context.Background(), func(o *routeOptions) { o.session = s })); got != formatToken(1200) {
		t.Fatalf("token after clamping = %q, want %q", got, formatToken(1200))
	}

	// A real write made elsewhere after this process's latest probe: the
	// next probe covers it, so it is not cut.
	s = sessionOf(WithSessionToken(context.Background(), formatToken(1300)))
	if _, primary := s.floor(c); !primary {
		t.Fatal("token ahead of the latest probe: want the primary")
	}
	primaryAt(c, 1500)
	if lsn, primary := s.floor(c); primary || lsn != 1300 || s.clamped.Load() {
		t.Fatalf("floor = %d, %v (clamped %v); want 1300 on a replica", lsn, primary, s.clamped.Load())
	}

	empty := bareConnector()
	s = sessionOf(WithSessionToken(context.Background(), formatToken(1)))
	if _, primary := s.floor(empty); !primary {
		t.Fatal("no probe of the primary yet: want the primary")
	}
}

// WithSessionToken on a context that has a session keeps that session's
// writes covered.
func TestWithSessionTokenKeepsOuterSession(t *testing.T) {
	c := bareConnector()
	outer := WithSession(context.Background())
	sessionOf(outer).noteWrite(c)
	inner := WithSessionToken(outer, formatToken(10))
	s := sessionOf(inner)
	if s == sessionOf(outer) {
		t.Fatal("WithSessionToken reused the outer session")
	}
	if _, primary := s.floor(c); !primary {
		t.Fatal("the outer session's pending write was lost")
	}
	primaryAt(c, 50)
	if lsn, primary := s.floor(c); primary || lsn != 50 {
		t.Fatalf("floor = %d, %v; want 50", lsn, primary)
	}
	if s.wrote.Load() {
		t.Fatal("the new session reports the outer session's write as its own")
	}
}

// SessionToken asks the primary once for a pending write's position, and
// not at all once a probe covers it.
func TestSessionTokenAsksPrimaryForPendingWrite(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	ctx := WithSession(context.Background())
	primaryAt(fc.c, 100) // a probe before the write does not cover it
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	s := sessionOf(ctx)
	if !s.wrote.Load() || s.conn.Load() != fc.c {
		t.Fatal("the write did not mark the session with its connector")
	}
	fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnRows(sqlmock.NewRows([]string{"lsn"}).AddRow(int64(0x2a0)))
	if got := SessionToken(ctx); got != "1.2a0" {
		t.Fatalf("SessionToken = %q, want 1.2a0", got)
	}
	if s.pending.Load() != 0 {
		t.Fatal("the round trip did not settle the pending write")
	}
	// Settled: no more round trips (sqlmock fails on an unexpected query).
	if got := SessionToken(ctx); got != "1.2a0" {
		t.Fatalf("second SessionToken = %q, want 1.2a0", got)
	}
	if err := fc.mocks[0].ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}

	// A write covered by a later probe needs no round trip either.
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (2)")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	primaryAt(fc.c, 0x300)
	if got := SessionToken(ctx); got != "1.300" {
		t.Fatalf("SessionToken = %q, want 1.300", got)
	}
}

// When the primary cannot say where a pending write is, the token makes its
// restorer wait for a fresh probe: never a position that misses the write.
func TestSessionTokenWithoutPrimaryIsConservative(t *testing.T) {
	fc := newFakeCluster(t, 1, defaultCfg())
	ctx := WithSession(context.Background())
	fc.mocks[0].ExpectExec(q("INSERT INTO t VALUES (1)")).WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := fc.db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	fc.mocks[0].ExpectQuery(q(insertLSNSQL)).WillReturnError(errors.New("boom"))
	tok := SessionToken(ctx)
	if tok != formatToken(unknownLSN) {
		t.Fatalf("SessionToken = %q, want the unknown position", tok)
	}
	other := bareConnector()
	primaryAt(other, 900)
	s := sessionOf(WithSessionToken(context.Background(), tok))
	if _, primary := s.floor(other); !primary {
		t.Fatal("restored unknown position: want the primary until a fresh probe")
	}
	primaryAt(other, 950)
	if lsn, primary := s.floor(other); primary || lsn != 950 {
		t.Fatalf("floor = %d, %v; want 950", lsn, primary)
	}
}

// Writers and readers of one session at once: every reader that starts
// after a write was noted either goes to the primary or gets a floor that
// covers the probe that resolved it. Run with -race.
func TestSessionConcurrentWritesAndFloors(t *testing.T) {
	c := bareConnector()
	s := &session{}
	var lsn atomic.Uint64 // the "primary": each write advances it
	var probes sync.WaitGroup
	stop := make(chan struct{})
	probes.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// A probe reads the position after it started.
			at := monoNow()
			c.primarySample.Store(&lsnSample{at: at, lsn: lsn.Load()})
		}
	})
	for range 2 { // readers that settle pending writes all the time
		probes.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				s.floor(c)
			}
		})
	}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				written := lsn.Add(1) // the write is acknowledged at this position
				s.noteWrite(c)
				for range 3 {
					floor, primary := s.floor(c)
					if !primary && floor < written {
						bad.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	probes.Wait()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d reads got a floor below their own write", n)
	}
	if s.conn.Load() != c || !s.wrote.Load() {
		t.Fatal("noteWrite did not record the connector")
	}
}

// Tokens taken from a session while other goroutines write through it
// always cover the writes acknowledged before the call.
func TestSessionTokenConcurrent(t *testing.T) {
	c := bareConnector()
	s := &session{}
	ctx := with(context.Background(), func(o *routeOptions) { o.session = s })
	var lsn atomic.Uint64
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				written := lsn.Add(1)
				s.noteWrite(c)
				if i%7 == g%7 {
					// A probe after the write; like a real one, it takes
					// its start time before it reads the position (the
					// other way round, a write between the two would look
					// covered by a position that predates it).
					at := monoNow()
					c.primarySample.Store(&lsnSample{at: at, lsn: lsn.Load()})
				}
				got, _ := parseToken(SessionToken(ctx))
				if got < written {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d tokens missed their own write", n)
	}
}
