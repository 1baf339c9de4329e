package pgreplica

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreplica/pgreplica/internal/testca"
)

// handshake runs a TLS handshake between a client using cfg and a server
// presenting cert, over loopback TCP (net.Pipe has no buffer: a client
// sending its alert while the server still writes would deadlock).
func handshake(t *testing.T, cfg *tls.Config, cert tls.Certificate) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc, err := ln.Accept()
		if err != nil {
			return
		}
		defer sc.Close()
		_ = sc.SetDeadline(time.Now().Add(time.Minute))
		_ = tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{cert}}).Handshake()
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = cc.SetDeadline(time.Now().Add(time.Minute))
	err = tls.Client(cc, cfg.Clone()).Handshake()
	cc.Close()
	<-done
	return err
}

// TestTLSVerifyFullDSN checks docs/operations.md's three-node verify-full
// example in both DSN forms: each node gets pgx's verify-full TLS
// configuration for its own host name (so each server's certificate must
// name that host), the one sslrootcert applies to every node, and no node
// may fall back to plain text.
func TestTLSVerifyFullDSN(t *testing.T) {
	ca := testca.New(t)
	root := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(root, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	hosts := []string{"db1.example.com", "db2.example.com", "db3.example.com"}
	dsns := map[string]string{
		"url": "postgres://app:secret@db1.example.com:5432,db2.example.com:5432,db3.example.com:5432/shop?sslmode=verify-full&sslrootcert=" +
			url.QueryEscape(root),
		"keyword": "host=db1.example.com,db2.example.com,db3.example.com port=5432 dbname=shop user=app sslmode=verify-full sslrootcert='" +
			root + "'",
	}
	certs := make([]tls.Certificate, len(hosts))
	for i, h := range hosts {
		certs[i] = ca.Issue(t, h)
	}
	for form, dsn := range dsns {
		t.Run(form, func(t *testing.T) {
			cfg, err := ParseConfig(dsn)
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			ccs := []*pgconn.Config{&cfg.Primary.ConnConfig.Config}
			for _, r := range cfg.Replicas {
				ccs = append(ccs, &r.ConnConfig.Config)
			}
			if len(ccs) != len(hosts) {
				t.Fatalf("%d nodes, want %d", len(ccs), len(hosts))
			}
			for i, cc := range ccs {
				if cc.Host != hosts[i] {
					t.Fatalf("node %d: host %q, want %q", i+1, cc.Host, hosts[i])
				}
				tc := cc.TLSConfig
				if tc == nil {
					t.Fatalf("node %d (%s): no TLS configuration", i+1, hosts[i])
				}
				if tc.ServerName != hosts[i] || tc.InsecureSkipVerify {
					t.Errorf("node %d: ServerName %q, InsecureSkipVerify %v; want %q, false", i+1, tc.ServerName, tc.InsecureSkipVerify, hosts[i])
				}
				for _, fb := range cc.Fallbacks {
					if fb.TLSConfig == nil {
						t.Errorf("node %d: a fallback to plain text (%s:%d)", i+1, fb.Host, fb.Port)
					}
				}
				// Its own server's certificate verifies; another node's
				// does not.
				if err := handshake(t, tc, certs[i]); err != nil {
					t.Errorf("node %d: handshake with %s's certificate: %v", i+1, hosts[i], err)
				}
				other := (i + 1) % len(hosts)
				var herr x509.HostnameError
				if err := handshake(t, tc, certs[other]); !errors.As(err, &herr) {
					t.Errorf("node %d: handshake with %s's certificate: %v; want a host name error", i+1, hosts[other], err)
				}
			}
		})
	}
}

// TestTLSMissingRootCert: an sslrootcert that cannot be read fails
// ParseConfig (and so sql.Open) with ErrInvalidDSN, naming the node and
// not the password.
func TestTLSMissingRootCert(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.crt")
	const password = "Sup3rSecretPw"
	_, err := ParseConfig("postgres://app:" + password + "@db1.example.com,db2.example.com/shop?sslmode=verify-full&sslrootcert=" + url.QueryEscape(missing))
	if !errors.Is(err, ErrInvalidDSN) {
		t.Fatalf("err = %v, want ErrInvalidDSN", err)
	}
	if !strings.Contains(err.Error(), "node 1") || strings.Contains(err.Error(), password) {
		t.Errorf("err = %q: want the node named and no password", err)
	}
}
