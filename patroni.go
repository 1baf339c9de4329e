package pgreplica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// NewPatroniDiscoverer returns a Discoverer that asks Patroni's REST API
// for the cluster's members (GET /cluster): endpoints are one or more
// members' REST URLs (http://10.0.0.1:8008), tried in order until one
// answers. client nil means http.DefaultClient; the context of each
// Discover call bounds each request. The DSN key patroni_url (a
// comma-separated list) sets one.
//
// Every member Patroni lists with a host and a port is reported, whatever
// its role and state: which one is the primary, and whether it is healthy,
// is what the monitor's probe of the server itself says, not Patroni's
// word. Errors name the endpoint without its credentials.
func NewPatroniDiscoverer(endpoints []string, client *http.Client) (Discoverer, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("pgreplica: a Patroni discoverer needs at least one REST endpoint")
	}
	d := &patroniDiscoverer{client: client}
	if d.client == nil {
		d.client = http.DefaultClient
	}
	for i, e := range endpoints {
		u, err := url.Parse(strings.TrimSpace(e))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("pgreplica: Patroni endpoint %d must be an http:// or https:// URL with a host", i+1)
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + "/cluster"
		d.endpoints = append(d.endpoints, u)
	}
	return d, nil
}

type patroniDiscoverer struct {
	endpoints []*url.URL
	client    *http.Client
}

// patroniCluster is the part of GET /cluster pgreplica reads.
type patroniCluster struct {
	Members []struct {
		Name  string `json:"name"`
		Role  string `json:"role"`
		State string `json:"state"`
		Host  string `json:"host"`
		Port  int    `json:"port"`
	} `json:"members"`
}

func (d *patroniDiscoverer) Discover(ctx context.Context) ([]Member, error) {
	var errs []error
	for _, u := range d.endpoints {
		ms, err := d.ask(ctx, u)
		if err == nil {
			return ms, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u.Redacted(), err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("pgreplica: no Patroni endpoint answered: %w", errors.Join(errs...))
}

func (d *patroniDiscoverer) ask(ctx context.Context, u *url.URL) ([]Member, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, errors.New("bad request")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		// *url.Error carries the URL; net/http strips its password, but
		// say only what failed.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /cluster: %s", resp.Status)
	}
	var doc patroniCluster
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("GET /cluster: %w", err)
	}
	var ms []Member
	for _, m := range doc.Members {
		if m.Host == "" || m.Port <= 0 || m.Port > 65535 {
			continue
		}
		ms = append(ms, Member{Host: m.Host, Port: uint16(m.Port), Source: SourcePatroni})
	}
	if len(ms) == 0 {
		return nil, errors.New("GET /cluster lists no member with a host and port")
	}
	return ms, nil
}
