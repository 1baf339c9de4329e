package pgreplica

import (
	"sync"
	"sync/atomic"
)

// Applications run a small set of statement texts over and over (sqlc and
// prepared statements especially), so each text is lexed once per process.
// The cache only grows up to classifyCacheEntries texts of at most
// classifyCacheMaxLen bytes: texts with inlined literals would otherwise
// fill it without end. Beyond that, classify runs every time (≈300 ns for a
// point query, allocation-free).
const (
	classifyCacheEntries = 4096
	classifyCacheMaxLen  = 4096
)

var (
	classifyCache     sync.Map // string → classification
	classifyCacheSize atomic.Int32
)

func classifyCached(query string) classification {
	if cl, ok := classifyCache.Load(query); ok {
		return cl.(classification)
	}
	cl := classify(query)
	if len(query) <= classifyCacheMaxLen && classifyCacheSize.Load() < classifyCacheEntries {
		if _, loaded := classifyCache.LoadOrStore(query, cl); !loaded {
			classifyCacheSize.Add(1)
		}
	}
	return cl
}
