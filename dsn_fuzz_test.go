package pgreplica

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseConfig checks that no input makes the parser panic, that every
// failure wraps ErrInvalidDSN, and that a password never shows in an error.
func FuzzParseConfig(f *testing.F) {
	seeds := []string{
		"postgres://app:secret@primary:5432,replica-1:5432,replica-2:5432/shop?sslmode=disable",
		"postgresql://u:p@a,b/d?replica_policy=weighted&replica_weights=1,2",
		"postgres://u@a,b,c/d?replica_policy=nearest&latency_window=5ms",
		"host=a,b dbname=d latency_window=-3ms replica_policy=round_robin",
		"host=a,b,c port=5432,5433,5434 dbname=shop user=app password='x y'",
		"host=a dbname='unterminated",
		"postgres://u@a,,b/d",
		"postgres://u@a:notaport/d",
		"replica_max_conns=0 host=a",
		"",
		"=",
		"host=",
		"postgres://app@h1,h2/db#frag",
		"postgres://app@/db?host=/tmp,replica-1&port=5432,5433",
		"postgres:///db?host=/tmp",
		"postgres://app@/db?host=/a,,b",
		"host=/var/run/postgresql,replica-1 port=5432,5433 dbname=d",
		"postgres://u@a,b/d?primary_wait=30s",
		"host=a,b dbname=d primary_wait=off",
		"postgres://u@a,b/d?primary_wait=-1s",
	}
	for _, c := range discoveryDSNs {
		seeds = append(seeds, c.dsn)
	}
	for _, c := range patroniURLDSNs {
		seeds = append(seeds, c.dsn)
	}
	for _, s := range seeds {
		f.Add(s, "hunter2hunter2")
	}
	f.Fuzz(func(t *testing.T, dsn, password string) {
		// A password that also occurs elsewhere in the DSN (say in a key
		// name) may legitimately appear in a message about that part.
		if len(password) < 6 || strings.ContainsAny(password, "'\\ \t\n\r\f\v") || strings.Contains(dsn, password) {
			return
		}
		full := dsn + " password='" + password + "'"
		if strings.HasPrefix(dsn, "postgres") {
			full = strings.Replace(dsn, "@", ":"+password+"@", 1)
		}
		cfg, err := ParseConfig(full)
		if err != nil {
			if !errors.Is(err, ErrInvalidDSN) {
				t.Fatalf("error does not wrap ErrInvalidDSN: %v", err)
			}
			if strings.Contains(err.Error(), password) {
				t.Fatalf("error shows the password: %v", err)
			}
			return
		}
		if cfg.Primary == nil {
			t.Fatal("no primary and no error")
		}
	})
}
