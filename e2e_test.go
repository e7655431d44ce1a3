package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// e2e_test.go: real HTTP servers on loopback, driven with net/http.

// httpCluster runs nodes behind real HTTP servers on 127.0.0.1.
type httpCluster struct {
	urls    map[NodeID]string
	nodes   map[NodeID]*Node
	servers map[NodeID]*http.Server
	trs     map[NodeID]*httpTransport
	cancels map[NodeID]context.CancelFunc
	wg      sync.WaitGroup
}

// stop takes node id down: its server and its node.
func (hc *httpCluster) stop(id NodeID) {
	hc.servers[id].Close()
	hc.cancels[id]()
}

func startHTTPCluster(tb testing.TB, size int, key string, tweak func(*Config)) *httpCluster {
	tb.Helper()
	hc := &httpCluster{urls: map[NodeID]string{}, nodes: map[NodeID]*Node{},
		servers: map[NodeID]*http.Server{}, trs: map[NodeID]*httpTransport{}, cancels: map[NodeID]context.CancelFunc{}}
	lns, members := loopbackListeners(tb, size, "http", hc.urls)
	dir := tb.TempDir()
	for _, id := range members {
		cfg := Config{ID: id, Members: members, PeerURLs: hc.urls, DataDir: filepath.Join(dir, fmt.Sprint(id)),
			HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, RequestTimeout: 5 * time.Second}
		if tweak != nil {
			tweak(&cfg)
		}
		tr := newHTTPTransport(hc.urls, key)
		tb.Cleanup(tr.closeIdle)
		hc.trs[id] = tr
		n, err := NewNode(cfg, tr)
		if err != nil {
			tb.Fatal(err)
		}
		hc.nodes[id] = n
		srv := &http.Server{Handler: newHandler(n, handlerOptions{ClusterKey: key, SSEHeartbeat: 50 * time.Millisecond})}
		ctx, cancel := context.WithCancel(context.Background())
		hc.servers[id], hc.cancels[id] = srv, cancel
		hc.wg.Add(2)
		go func() { defer hc.wg.Done(); srv.Serve(lns[id]) }()
		go func() { defer hc.wg.Done(); n.Run(ctx) }()
	}
	tb.Cleanup(func() {
		for id := range hc.servers {
			hc.stop(id)
		}
		hc.wg.Wait()
		for _, n := range hc.nodes {
			n.Close()
		}
	})
	return hc
}

// loopbackListeners opens size listeners on 127.0.0.1 for nodes 1..size
// and records each node's base URL with scheme in urls.
func loopbackListeners(tb testing.TB, size int, scheme string, urls map[NodeID]string) (map[NodeID]net.Listener, []NodeID) {
	tb.Helper()
	lns := map[NodeID]net.Listener{}
	var members []NodeID
	for i := 1; i <= size; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		id := NodeID(i)
		lns[id] = ln
		urls[id] = scheme + "://" + ln.Addr().String()
		members = append(members, id)
	}
	return lns, members
}

type httpReply struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

// do makes one request with the default client; a transport error fails
// the test.
func do(t testing.TB, method, url, body string, header map[string]string) httpReply {
	t.Helper()
	return mustSend(t, http.DefaultClient, method, url, body, header)
}

// send makes one request with client c; a transport error is returned.
func send(t testing.TB, c *http.Client, method, url, body string, header map[string]string) (httpReply, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return httpReply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return httpReply{}, err
	}
	r := httpReply{code: resp.StatusCode, header: resp.Header, raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r, nil
}

func mustSend(t testing.TB, c *http.Client, method, url, body string, header map[string]string) httpReply {
	t.Helper()
	r, err := send(t, c, method, url, body, header)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func TestHTTPEndToEnd(t *testing.T) {
	const key = "s3cret"
	hc := startHTTPCluster(t, 3, key, nil)
	// Appends through every node.
	want := map[float64]string{}
	for round := 0; round < 5; round++ {
		for id := NodeID(1); id <= 3; id++ {
			data := fmt.Sprintf(`{"node":%d,"round":%d}`, id, round)
			r := do(t, "POST", hc.urls[id]+"/v1/log", data, nil)
			if r.code != http.StatusCreated {
				t.Fatalf("append via %d: %d %s", id, r.code, r.raw)
			}
			idx := r.body["index"].(float64)
			if loc := r.header.Get("Location"); loc != fmt.Sprintf("/v1/log/%d", int(idx)) {
				t.Fatalf("Location %q for index %v", loc, idx)
			}
			want[idx] = data
		}
	}
	// Linearizable range reads on every node see all 15, identical.
	for id := NodeID(1); id <= 3; id++ {
		r := do(t, "GET", hc.urls[id]+"/v1/log?from=1&limit=1000", "", nil)
		if r.code != http.StatusOK {
			t.Fatalf("range via %d: %d %s", id, r.code, r.raw)
		}
		entries := r.body["entries"].([]any)
		if len(entries) != 15 || r.body["last"].(float64) != 15 || r.body["first"].(float64) != 1 {
			t.Fatalf("node %d range: %s", id, r.raw)
		}
		for _, e := range entries {
			m := e.(map[string]any)
			got, _ := json.Marshal(m["data"])
			var w any
			json.Unmarshal([]byte(want[m["index"].(float64)]), &w)
			wb, _ := json.Marshal(w)
			if string(got) != string(wb) {
				t.Fatalf("node %d index %v: %s, want %s", id, m["index"], got, wb)
			}
		}
	}
	u := hc.urls[2]
	cases := []struct {
		name, method, path, body string
		header                   map[string]string
		code                     int
	}{
		{"one entry", "GET", "/v1/log/3", "", nil, 200},
		{"past the end", "GET", "/v1/log/99", "", nil, 404},
		{"index zero", "GET", "/v1/log/0", "", nil, 400},
		{"index not a number", "GET", "/v1/log/abc", "", nil, 400},
		{"negative index", "GET", "/v1/log/-1", "", nil, 400},
		{"bad limit", "GET", "/v1/log?limit=0", "", nil, 400},
		{"bad from", "GET", "/v1/log?from=x", "", nil, 400},
		{"bad stale", "GET", "/v1/log?stale=maybe", "", nil, 400},
		{"stale read", "GET", "/v1/log?stale=true", "", nil, 200},
		{"empty body", "POST", "/v1/log", "", nil, 400},
		{"invalid json", "POST", "/v1/log", `{"a":`, nil, 400},
		{"two values", "POST", "/v1/log", `1 2`, nil, 400},
		{"no-break space after the value", "POST", "/v1/log", "1\u00a0", nil, 400},
		{"too large", "POST", "/v1/log", `"` + strings.Repeat("x", 1<<20) + `"`, nil, 413},
		{"status", "GET", "/v1/status", "", nil, 200},
		{"healthz", "GET", "/healthz", "", nil, 200},
		{"peer without key", "POST", "/paxos/prepare", `{"b":{"r":999,"n":9},"slot":1}`, nil, 401},
		{"peer with wrong key", "POST", "/paxos/accept", `{}`, map[string]string{"Authorization": "Bearer nope"}, 401},
		{"peer with bare key", "POST", "/paxos/learn", `{}`, map[string]string{"Authorization": key}, 401},
		{"peer with key", "POST", "/paxos/learn", `{"b":{"r":0,"n":0},"commit":0}`, map[string]string{"Authorization": "Bearer " + key}, 200},
	}
	for _, tc := range cases {
		r := do(t, tc.method, u+tc.path, tc.body, tc.header)
		if r.code != tc.code {
			t.Errorf("%s: %s %s = %d %s, want %d", tc.name, tc.method, tc.path, r.code, r.raw, tc.code)
			continue
		}
		if tc.code >= 400 {
			if msg, _ := r.body["error"].(string); msg == "" {
				t.Errorf("%s: error body %q lacks {\"error\": ...}", tc.name, r.raw)
			}
		}
	}
	// The refused prepare changed nothing: the leader still appends.
	if r := do(t, "POST", u+"/v1/log", `"after"`, nil); r.code != 201 || r.body["index"].(float64) != 16 {
		t.Fatalf("append after refused peer requests: %d %s", r.code, r.raw)
	}
	// The value comes back byte for byte: spacing and characters kept.
	exact := `{ "a" : "<b>&", "n": 1.50 }`
	r := do(t, "POST", hc.urls[3]+"/v1/log", exact, nil)
	if r.code != 201 {
		t.Fatalf("append: %d %s", r.code, r.raw)
	}
	if got := do(t, "GET", u+"/v1/log/17", "", nil); got.raw != `{"index":17,"data":`+exact+`}` {
		t.Fatalf("read back %s", got.raw)
	}
	st := do(t, "GET", u+"/v1/status", "", nil)
	if st.body["id"].(float64) != 2 || st.body["leader"].(float64) == 0 || st.body["last"].(float64) != 17 {
		t.Fatalf("status: %s", st.raw)
	}
	m := do(t, "GET", u+"/metrics", "", nil)
	if m.code != 200 || !strings.Contains(m.raw, "paxoslog_last_index 17") {
		t.Fatalf("metrics lack paxoslog_last_index 16: %d", m.code)
	}
}

// TestHTTPNoMajority: with two of three nodes gone, an append is answered
// 503 with Retry-After, and a linearizable read too; a stale read works.
func TestHTTPNoMajority(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", func(c *Config) { c.RequestTimeout = 500 * time.Millisecond })
	if r := do(t, "POST", hc.urls[1]+"/v1/log", `"one"`, nil); r.code != 201 {
		t.Fatalf("append: %d %s", r.code, r.raw)
	}
	waitFor(t, 5*time.Second, "node 1 to apply index 1", func() bool {
		_, last := hc.nodes[1].learner.Bounds()
		return last == 1
	})
	hc.stop(2)
	hc.stop(3)
	r := do(t, "POST", hc.urls[1]+"/v1/log", `"two"`, nil)
	if r.code != 503 || r.header.Get("Retry-After") == "" || r.body["error"] == nil {
		t.Fatalf("append without a majority: %d %v %s", r.code, r.header, r.raw)
	}
	if r := do(t, "GET", hc.urls[1]+"/v1/log", "", nil); r.code != 503 {
		t.Fatalf("linearizable read without a majority: %d %s", r.code, r.raw)
	}
	if r := do(t, "GET", hc.urls[1]+"/v1/log?stale=true", "", nil); r.code != 200 {
		t.Fatalf("stale read: %d %s", r.code, r.raw)
	}
}

// BenchmarkHTTPAppend measures appends/s and latency of a three-node
// cluster over loopback HTTP with fsync on, at 1, 16 and 64 clients.
func BenchmarkHTTPAppend(b *testing.B) {
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			hc := startHTTPCluster(b, 3, "k", nil)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
			body := bytes.Repeat([]byte("x"), 90)
			payload := `{"v":"` + string(body) + `"}`
			var leaderURL string
			waitFor(b, 5*time.Second, "a leader", func() bool {
				for id, n := range hc.nodes {
					if _, _, l := n.proposer.leaderInfo(); l {
						leaderURL = hc.urls[id]
						return true
					}
				}
				return false
			})
			var next atomic.Int64
			lat := make([][]time.Duration, clients)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := 0; w < clients; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						resp, err := client.Post(leaderURL+"/v1/log", "application/json", strings.NewReader(payload))
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 201 {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			var all []time.Duration
			for _, l := range lat {
				all = append(all, l...)
			}
			sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
			if len(all) > 0 {
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "appends/s")
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
