package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// feed_test.go: the live feed and idempotent appends.

// consumer follows one node's feed, reconnecting (to the same node, once
// it is back, or once it is a member) from the index after the last one
// it saw. Indices retention dropped before it came to them are "" in
// seen (it goes on from the node's first).
type consumer struct {
	mu      sync.Mutex
	seen    []string
	next    Index
	skipped int
}

func (c *testCluster) follow(ctx context.Context, id NodeID) *consumer {
	con := &consumer{next: 1}
	go func() {
		for ctx.Err() == nil {
			n := c.node(id)
			if n == nil {
				time.Sleep(5 * time.Millisecond) // node down: retry later
				continue
			}
			err := n.learner.follow(ctx, con.next, 0, func(batch []LogEntry) error {
				con.mu.Lock()
				defer con.mu.Unlock()
				for _, e := range batch {
					if e.Index != con.next {
						return fmt.Errorf("feed of node %d gave index %d, expected %d", id, e.Index, con.next)
					}
					con.seen = append(con.seen, string(e.Data))
					con.next++
				}
				return nil
			}, nil)
			if errors.Is(err, ErrNotMember) {
				time.Sleep(5 * time.Millisecond) // not a member (yet, or any more): retry later
				continue
			}
			if errors.Is(err, ErrCompacted) {
				first, _ := n.learner.Bounds()
				con.mu.Lock()
				for con.next < first {
					con.seen = append(con.seen, "")
					con.next++
					con.skipped++
				}
				con.mu.Unlock()
				continue
			}
			if err != nil && !errors.Is(err, errJournalClosed) && ctx.Err() == nil {
				c.t.Errorf("follow node %d: %v", id, err)
				return
			}
		}
	}()
	return con
}

func (con *consumer) snapshot() []string {
	con.mu.Lock()
	defer con.mu.Unlock()
	return append([]string(nil), con.seen...)
}

// Every node's feed delivers the identical sequence, with no gap or
// repeat, while appends go to every node and the leader is killed and
// restarted.
func TestFeedsAgreeThroughFailover(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	c.leader(5 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cons := map[NodeID]*consumer{}
	for _, id := range c.members {
		cons[id] = c.follow(ctx, id)
	}
	l := c.startLoad(6)
	for round := 0; round < 2; round++ {
		base := l.acked()
		waitFor(t, 10*time.Second, "appends", func() bool { return l.acked() >= base+40 })
		old := c.leader(5 * time.Second)
		c.crash(old)
		base = l.acked()
		waitFor(t, 10*time.Second, "appends after the kill", func() bool { return l.acked() >= base+20 })
		c.start(old)
	}
	l.halt()
	c.check()
	want := logOf(t, c.node(c.leader(5*time.Second)))
	for id, con := range cons {
		waitFor(t, 10*time.Second, fmt.Sprintf("node %d's feed to deliver %d entries", id, len(want)), func() bool {
			return len(con.snapshot()) >= len(want)
		})
		got := con.snapshot()
		if len(got) != len(want) {
			t.Fatalf("node %d feed: %d entries, log has %d", id, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("node %d feed index %d: %s, log has %s", id, i+1, got[i], want[i])
			}
		}
	}
}

// An idempotent append retried through another node after the leader
// died, and again after every node restarted, keeps its first index.
func TestIdempotentRetryAcrossFailoverAndRestart(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	first, err := c.appendKeyed(context.Background(), leader, `"pay-1"`, "key-1")
	if err != nil || first.Duplicate {
		t.Fatalf("first append: %+v %v", first, err)
	}
	c.mustAppend(leader, `"other"`)
	c.crash(leader)
	other := leader%3 + 1
	again, err := c.appendKeyed(context.Background(), other, `"pay-1"`, "key-1")
	if err != nil || again.Index != first.Index || !again.Duplicate {
		t.Fatalf("retry after failover: %+v %v, want index %d duplicate", again, err, first.Index)
	}
	c.start(leader)
	for _, id := range c.members {
		c.crash(id)
	}
	for _, id := range c.members {
		c.start(id)
	}
	for _, id := range c.members {
		a, err := c.appendKeyed(context.Background(), id, `"pay-1"`, "key-1")
		if err != nil || a.Index != first.Index || !a.Duplicate {
			t.Fatalf("retry via %d after full restart: %+v %v", id, a, err)
		}
	}
	c.check()
}

// Concurrent appends with one key, through every node at once, make one
// entry; every caller learns its index.
func TestIdempotentConcurrentDuplicates(t *testing.T) {
	c := newTestCluster(t, 5, testSeed(t))
	c.leader(5 * time.Second)
	for k := 0; k < 5; k++ {
		key := fmt.Sprintf("k%d", k)
		data := fmt.Sprintf(`{"key":%q}`, key)
		var wg sync.WaitGroup
		res := make([]Applied, 10)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := c.appendKeyed(context.Background(), c.members[i%5], data, key)
				if err != nil {
					t.Errorf("append %s: %v", key, err)
				}
				res[i] = a
			}()
		}
		wg.Wait()
		fresh := 0
		for _, a := range res {
			if a.Index != res[0].Index {
				t.Fatalf("key %s got indices %+v", key, res)
			}
			if !a.Duplicate {
				fresh++
			}
		}
		if fresh != 1 {
			t.Errorf("key %s: %d callers told they appended, want 1: %+v", key, fresh, res)
		}
	}
	c.check()
}

func TestCompileMatch(t *testing.T) {
	entry := []byte(`{"type":"order","amount":150,"tags":["a"],"who":{"name":"Ada"}}`)
	cases := []struct {
		cond  string
		valid bool
		match bool
	}{
		{``, true, true},
		{`type=="order"`, true, true},
		{`type == "refund"`, true, false},
		{`amount>100`, true, true},
		{`amount<=100`, true, false},
		{`amount>100 && type=="order"`, true, true},
		{`amount>1000 || type=="order"`, true, true},
		{`amount>100 && type=="refund"`, true, false},
		{`type=="refund" && amount>100`, true, false},
		{`type=="refund" || amount<100`, true, false},
		{`type=="refund" || amount<100 || who.name=="Ada"`, true, true},
		{`type=="refund" && amount>1 || who.name=="Ada" && amount>=150`, true, true},
		{`type=="order" && amount>1 && who.name=="Bob"`, true, false},
		{`who.name%"A*"`, true, true},
		{`who.name!%"A*"`, true, false},
		{`tags.#>0`, true, true},
		{`missing`, true, false},
		{`type`, true, true},
		{`type=="a && b"`, true, false},
		{`type==order`, false, false},
		{`amount>{}`, false, false},
		{`type=="order`, false, false},
		{`(type)`, false, false},
		{`type=="order" &&`, false, false},
		{`type=="order" and x`, false, false},
		{`who.name%A*`, false, false},
	}
	for _, tc := range cases {
		m, err := compileMatch(tc.cond)
		if (err == nil) != tc.valid {
			t.Errorf("compileMatch(%q) error = %v, want valid=%v", tc.cond, err, tc.valid)
			continue
		}
		if err == nil && m.match(entry) != tc.match {
			t.Errorf("match(%q) = %v, want %v", tc.cond, !tc.match, tc.match)
		}
	}
}

// readLines reads n lines from a streaming response, with a deadline.
func readLines(t *testing.T, r *bufio.Reader, n int) []string {
	t.Helper()
	lines := make(chan string)
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			s, err := r.ReadString('\n')
			if err != nil {
				errc <- err
				return
			}
			lines <- strings.TrimRight(s, "\n")
		}
	}()
	var out []string
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case s := <-lines:
			out = append(out, s)
		case err := <-errc:
			t.Fatalf("after %d lines: %v", len(out), err)
		case <-timeout:
			t.Fatalf("timed out after %d of %d lines", len(out), n)
		}
	}
	return out
}

func openFeed(t *testing.T, url string, header map[string]string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, bufio.NewReader(resp.Body)
}

// The feed over HTTP: NDJSON that stays open for new entries, SSE with
// ids and resume by Last-Event-ID, filters, idempotency over HTTP.
func TestHTTPFeed(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", nil)
	post := func(id NodeID, body string, key string) httpReply {
		h := map[string]string{}
		if key != "" {
			h["Idempotency-Key"] = key
		}
		return do(t, "POST", hc.urls[id]+"/v1/log", body, h)
	}
	for i := 1; i <= 4; i++ {
		if r := post(NodeID(i%3+1), fmt.Sprintf(`{"type":%q,"n":%d}`, []string{"order", "refund"}[i%2], i), ""); r.code != 201 {
			t.Fatalf("append: %d %s", r.code, r.raw)
		}
	}
	resp, r := openFeed(t, hc.urls[2]+"/v1/feed?from=2", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("feed: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	got := readLines(t, r, 3)
	if got[0] != `{"index":2,"data":{"type":"order","n":2}}` || !strings.HasPrefix(got[2], `{"index":4,`) {
		t.Fatalf("feed lines: %q", got)
	}
	// Still open: a new append arrives on it.
	if rr := post(3, "{\n  \"type\": \"order\",\n  \"n\": 5\n}", ""); rr.code != 201 {
		t.Fatal(rr.raw)
	}
	if l := readLines(t, r, 1)[0]; l != `{"index":5,"data":{"type":"order","n":5}}` {
		t.Fatalf("live line (multi-line value kept on one line): %q", l)
	}

	// Filter: only orders, indices those of the log.
	_, fr := openFeed(t, hc.urls[1]+`/v1/feed?match=type=="order"`, nil)
	if l := readLines(t, fr, 3); !strings.HasPrefix(l[0], `{"index":2,`) || !strings.HasPrefix(l[1], `{"index":4,`) || !strings.HasPrefix(l[2], `{"index":5,`) {
		t.Fatalf("filtered feed: %q", l)
	}
	if bad := do(t, "GET", hc.urls[1]+`/v1/feed?match=type==order`, "", nil); bad.code != 400 || bad.body["error"] == nil {
		t.Fatalf("invalid match: %d %s", bad.code, bad.raw)
	}
	if bad := do(t, "GET", hc.urls[1]+`/v1/feed?from=0`, "", nil); bad.code != 400 {
		t.Fatalf("from=0: %d %s", bad.code, bad.raw)
	}

	// SSE, resumed after index 3 with Last-Event-ID.
	sresp, sr := openFeed(t, hc.urls[3]+"/v1/feed", map[string]string{"Accept": "text/event-stream", "Last-Event-ID": "3"})
	if sresp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE content type %q", sresp.Header.Get("Content-Type"))
	}
	ev := readLines(t, sr, 6)
	if ev[0] != "id: 4" || !strings.HasPrefix(ev[1], `data: {"index":4,`) || ev[2] != "" || ev[3] != "id: 5" {
		t.Fatalf("SSE events: %q", ev)
	}
	// Idle: a comment heartbeat keeps proxies from timing the stream out.
	if l := readLines(t, sr, 2); l[0] != ": ping" {
		t.Fatalf("SSE heartbeat: %q", l)
	}

	// Idempotency over HTTP: 201 then 200 with the same index.
	a := post(1, `"charge"`, "charge-42")
	b := post(2, `"charge"`, "charge-42")
	if a.code != 201 || b.code != 200 || a.body["index"] != b.body["index"] || b.body["duplicate"] != true {
		t.Fatalf("idempotent pair: %d %s / %d %s", a.code, a.raw, b.code, b.raw)
	}
	if long := post(1, `"x"`, strings.Repeat("k", 129)); long.code != 400 {
		t.Fatalf("129-byte key: %d %s", long.code, long.raw)
	}
}

// Below the first retained index the feed, and reads, answer 410 with the
// first retained index rather than skipping silently.
func TestFeedBelowFirstRetained(t *testing.T) {
	dir := t.TempDir()
	n := newIdleNode(t, dir)
	n.learner.chosen(SlotValue{Slot: 1, Value: entryValue(`1`, `2`, `3`, `4`, `5`)})
	n.Close()
	j, err := openJournal(filepath.Join(dir, "log"), journalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.TruncateFront(3); err != nil { // as retention would
		t.Fatal(err)
	}
	j.Close()
	n = newIdleNode(t, dir)
	h := newHandler(n, handlerOptions{})
	for _, path := range []string{"/v1/feed?from=2", "/v1/log/2", "/v1/log?from=1&stale=true"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		var body struct {
			Error string
			First Index
		}
		json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != http.StatusGone || body.Error == "" || body.First != 3 {
			t.Errorf("GET %s = %d %s, want 410 with first 3", path, rec.Code, rec.Body)
		}
	}
}

// http.Server.Shutdown returns promptly with feeds open: the handler's
// shutdown context ends them.
func TestShutdownEndsFeeds(t *testing.T) {
	n := newIdleNode(t, t.TempDir())
	n.learner.chosen(SlotValue{Slot: 1, Value: entryValue(`1`)})
	shutdown, endFeeds := context.WithCancel(context.Background())
	srv := &http.Server{Handler: newHandler(n, handlerOptions{Shutdown: shutdown})}
	srv.RegisterOnShutdown(endFeeds)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	var bodies []io.ReadCloser
	for i := 0; i < 3; i++ {
		resp, r := openFeed(t, "http://"+ln.Addr().String()+"/v1/feed", nil)
		readLines(t, r, 1)
		bodies = append(bodies, resp.Body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with open feeds: %v", err)
	}
	for _, b := range bodies {
		if _, err := io.ReadAll(b); err != nil {
			t.Errorf("feed did not end cleanly: %v", err)
		}
	}
}

// BenchmarkFeedDelivery: entries per second delivered to one NDJSON
// consumer reading a log that is already there.
func BenchmarkFeedDelivery(b *testing.B) {
	n, err := NewNode(Config{ID: 1, DataDir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	const per = 1000
	payload := []byte(`{"type":"order","amount":123,"note":"` + strings.Repeat("x", 60) + `"}`)
	var slot Slot
	for total := 0; total < b.N; total += per {
		slot++
		v := Value{}
		for i := 0; i < per; i++ {
			var id EntryID
			copy(id[:], fmt.Sprintf("%d-%d", slot, i))
			v.Entries = append(v.Entries, Entry{ID: id, Data: payload})
		}
		n.learner.chosen(SlotValue{Slot: slot, Value: v})
	}
	srv := httptest.NewServer(newHandler(n, handlerOptions{}))
	defer srv.Close()
	b.ResetTimer()
	resp, err := http.Get(srv.URL + "/v1/feed")
	if err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReaderSize(resp.Body, 1<<16)
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := r.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "entries/s")
	resp.Body.Close()
}

// BenchmarkIdleSubscribers: heap and goroutines per idle feed subscriber
// (server side and the client connection in this process together).
func BenchmarkIdleSubscribers(b *testing.B) {
	const subs = 1000
	n, err := NewNode(Config{ID: 1, DataDir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	srv := httptest.NewServer(newHandler(n, handlerOptions{}))
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: subs, MaxConnsPerHost: 0}
	client := &http.Client{Transport: tr}
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		var resps []*http.Response
		for s := 0; s < subs; s++ {
			resp, err := client.Get(srv.URL + "/v1/feed")
			if err != nil {
				b.Fatal(err)
			}
			resps = append(resps, resp)
		}
		waitFor(b, 10*time.Second, "subscribers to register", func() bool {
			return testutil.ToFloat64(n.metrics.feedSubscribers) == subs
		})
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/subs, "heap-bytes/sub")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/subs, "stack-bytes/sub")
		b.ReportMetric(float64(runtime.NumGoroutine()-g0)/subs, "goroutines/sub")
		for _, r := range resps {
			r.Body.Close()
		}
		waitFor(b, 10*time.Second, "subscribers to leave", func() bool {
			return testutil.ToFloat64(n.metrics.feedSubscribers) == 0
		})
	}
}

// BenchmarkAppendWithStalledFeed: appends/s through a 3-node HTTP cluster
// while a feed consumer on the leader reads nothing at all, next to the
// same cluster with no consumer.
func BenchmarkAppendWithStalledFeed(b *testing.B) {
	for _, stalled := range []bool{false, true} {
		b.Run(fmt.Sprintf("stalled=%v", stalled), func(b *testing.B) {
			hc := startHTTPCluster(b, 3, "", nil)
			var leader NodeID
			waitFor(b, 5*time.Second, "a leader", func() bool {
				for id, n := range hc.nodes {
					if _, _, l := n.proposer.leaderInfo(); l {
						leader = id
						return true
					}
				}
				return false
			})
			payload := `"` + strings.Repeat("y", 4000) + `"`
			if stalled {
				conn, err := net.Dial("tcp", strings.TrimPrefix(hc.urls[leader], "http://"))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				fmt.Fprintf(conn, "GET /v1/feed HTTP/1.1\r\nHost: x\r\n\r\n") // and never read
			}
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
			b.ResetTimer()
			var wg sync.WaitGroup
			var mu sync.Mutex
			left := b.N
			start := time.Now()
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						mu.Lock()
						if left == 0 {
							mu.Unlock()
							return
						}
						left--
						mu.Unlock()
						resp, err := client.Post(hc.urls[leader]+"/v1/log", "application/json", strings.NewReader(payload))
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
		})
	}
}
