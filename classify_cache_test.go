package pgreplica

import (
	"fmt"
	"testing"
)

func TestClassifyCachedAgreesAndStaysBounded(t *testing.T) {
	texts := []string{
		"SELECT id FROM users WHERE id = $1",
		"INSERT INTO t VALUES (1) RETURNING id",
		"/* pgreplica:primary */ SELECT 1",
		"SET search_path TO app",
		"select 'abc",
	}
	for range 2 { // the second pass is served by the cache
		for _, q := range texts {
			if got, want := classifyCached(q), classify(q); got != want {
				t.Fatalf("classifyCached(%q) = %+v, classify says %+v", q, got, want)
			}
		}
	}
	for i := range classifyCacheEntries + 100 {
		q := fmt.Sprintf("SELECT %d", i)
		if classifyCached(q) != classify(q) {
			t.Fatalf("%q differs", q)
		}
	}
	if n := classifyCacheSize.Load(); n > classifyCacheEntries {
		t.Fatalf("cache holds %d texts, bound is %d", n, classifyCacheEntries)
	}
}
