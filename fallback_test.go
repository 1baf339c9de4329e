package pgreplica

import (
	"errors"
	"testing"
)

// The primary's share of fallback reads is admitted exactly: the first
// read is, then one in five for 0.2; no bound at 0 or 1.
func TestFallbackShareAdmit(t *testing.T) {
	var f fallbackShare
	var got []bool
	admitted := 0
	for range 1000 {
		ok := f.admit(0.2)
		got = append(got, ok)
		if ok {
			admitted++
		}
	}
	if admitted != 200 || !got[0] || got[1] || got[4] || !got[5] {
		t.Fatalf("admitted %d of 1000 (first six: %v), want 200 starting with the first", admitted, got[:6])
	}
	for _, share := range []float64{0, 1} {
		for range 10 {
			if !f.admit(share) {
				t.Fatalf("share %v refused a read", share)
			}
		}
	}
}

// ParseConfig reads fallback_max_share; its default is no bound.
func TestParseFallbackMaxShare(t *testing.T) {
	cfg, err := ParseConfig("postgres://u@a,b/d?fallback_max_share=0.25")
	if err != nil || cfg.FallbackMaxShare != 0.25 {
		t.Fatalf("cfg %v, err %v; want FallbackMaxShare 0.25", cfg, err)
	}
	if cfg, err = ParseConfig("postgres://u@a,b/d"); err != nil || cfg.FallbackMaxShare != 0 {
		t.Fatalf("default FallbackMaxShare %v, err %v; want 0 (no bound)", cfg.FallbackMaxShare, err)
	}
	if !errors.Is(ErrFallbackShare, ErrNoReplica) {
		t.Fatal("ErrFallbackShare is not ErrNoReplica")
	}
}
