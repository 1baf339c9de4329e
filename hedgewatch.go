package pgreplica

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// hedgeWatch fires the hedges of reads that outlived their hedge delay.
// One goroutine per connector (started by NewConnector when hedging is
// on, ended by Close) sleeps until the earliest armed read is due; arming and
// disarming a read is a couple of atomic operations. A time.Timer per
// read measured about 2% of a point read's CPU for its Reset and Stop.
type hedgeWatch struct {
	base time.Time    // origin of the due times (monotonic)
	idle atomic.Bool  // the goroutine found nothing armed and sleeps until woken
	next atomic.Int64 // the due time the goroutine sleeps until
	wake chan struct{}

	mu      sync.Mutex
	hedges  []*hedge
	started bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
	fired   sync.WaitGroup // hedges running: a loser still holds a connection
}

// maxWatchSleep bounds the goroutine's sleep, so a read armed with a
// shorter delay than the one it sleeps for waits at most this much extra.
const maxWatchSleep = 5 * time.Millisecond

func (w *hedgeWatch) now() int64 { return int64(time.Since(w.base)) }

// start runs the goroutine; the connector calls it once, when it opens
// with hedging on (a goroutine started by the first read would appear at
// an arbitrary time in the application's life).
func (w *hedgeWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.started = true
	w.base = time.Now()
	w.wake = make(chan struct{}, 1)
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go w.run()
}

// add registers a conn's hedge; it reports false when the watch does not
// run (hedging off, or the connector closed).
func (w *hedgeWatch) add(h *hedge) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || !w.started {
		return false
	}
	w.hedges = append(w.hedges, h)
	return true
}

// remove unregisters a hedge the conn no longer uses.
func (w *hedgeWatch) remove(h *hedge) {
	w.disarm(h)
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, x := range w.hedges {
		if x == h {
			last := len(w.hedges) - 1
			w.hedges[i], w.hedges[last] = w.hedges[last], nil
			w.hedges = w.hedges[:last]
			return
		}
	}
}

// arm makes h's hedge due after d from armedAt. It writes only h's own
// state: every conn arming reads concurrently would otherwise contend for
// a shared counter.
func (w *hedgeWatch) arm(h *hedge, armedAt time.Time, d time.Duration) {
	due := int64(armedAt.Sub(w.base) + d)
	h.due.Store(due)
	// Dekker-style with run: it sets idle before it scans, this stores due
	// before it reads idle, so one of the two sees the other.
	if w.idle.Load() || due < w.next.Load() {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// disarm cancels h's pending hedge, if the goroutine has not claimed it.
func (w *hedgeWatch) disarm(h *hedge) { h.due.Store(0) }

// close stops the goroutine; no hedge fires after it returns.
func (w *hedgeWatch) close() {
	w.mu.Lock()
	w.closed = true
	started := w.started
	w.mu.Unlock()
	if started {
		close(w.stop)
		<-w.done
	}
}

// waitFired waits for the hedges that fired before close. The connector
// calls it once its nodes are closing, which ends their statements and
// fails their dials: a losing hedge still in flight at db.Close would
// otherwise release its connection, and close its node's pool, after
// db.Close returned, leaving pgx's cleanup goroutines behind (seen under a
// concurrent CI pair in TestPartitionedReplica's leak check).
func (w *hedgeWatch) waitFired() { w.fired.Wait() }

func (w *hedgeWatch) run() {
	defer close(w.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		w.idle.Store(true)
		next := int64(math.MaxInt64)
		now := w.now()
		w.mu.Lock()
		for _, h := range w.hedges {
			due := h.due.Load()
			switch {
			case due == 0:
			case due <= now:
				if h.due.CompareAndSwap(due, 0) {
					w.fired.Add(1)
					go func() {
						defer w.fired.Done()
						h.fire()
					}()
				}
			default:
				next = min(next, due)
			}
		}
		w.mu.Unlock()
		w.next.Store(next)
		sleep := time.Hour // nothing armed: until a read is
		if next != math.MaxInt64 {
			w.idle.Store(false)
			sleep = min(time.Duration(next-w.now()), maxWatchSleep)
		}
		t.Reset(max(sleep, 0))
		select {
		case <-t.C:
		case <-w.wake:
			if !t.Stop() {
				<-t.C
			}
		case <-w.stop:
			return
		}
	}
}
