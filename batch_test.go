package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

// batch_test.go: batch appends (application/x-ndjson): one Entry with
// More, chosen whole in one slot, at consecutive indices.

func TestSplitBatch(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string
		code       int
		msg        string
	}{
		{"lines", "1\n\"two\"\n{\"t\":3}", []string{"1", `"two"`, `{"t":3}`}, 0, ""},
		{"final newline", "1\n2\n", []string{"1", "2"}, 0, ""},
		{"CRLF and blank lines", "1\r\n\r\n  \n[2, 3]\r\n", []string{"1", "[2, 3]"}, 0, ""},
		{"spaces around a value", "  {\"a\" : 1}  \n", []string{`{"a" : 1}`}, 0, ""},
		{"bad line", "1\n\n{\"a\":\n3", nil, 400, "line 3 "},
		{"two values on a line", "1\n2 3\n", nil, 400, "line 2 "},
		{"a form feed after a value", "1\n2\f\n", nil, 400, "line 2 "},
		{"empty", "", nil, 400, "empty"},
		{"only blank lines", "\n\r\n \n", nil, 400, "empty"},
		{"too many entries", "1\n2\n3\n4\n", nil, 413, "line 4: a batch holds at most 3"},
		{"entry too large", "1\n\"" + strings.Repeat("x", 20) + "\"\n", nil, 413, "line 2: entry is larger"},
	}
	for _, tc := range cases {
		vals, err := splitBatch([]byte(tc.body), 3, 16)
		if tc.code == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			got := make([]string, len(vals))
			for i, v := range vals {
				got[i] = string(v)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
			}
			continue
		}
		code, msg := errorStatus(err)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, code, msg, tc.code, tc.msg)
		}
	}
	// A value keeps its own capacity: appending to it cannot write into
	// the body (the next line) it was cut from.
	body := []byte("1\n2")
	vals, err := splitBatch(body, 3, 16)
	if err != nil {
		t.Fatal(err)
	}
	_ = append(vals[0], 'x')
	if !bytes.Equal(body, []byte("1\n2")) {
		t.Fatalf("body changed to %q", body)
	}
}

func TestHTTPBatchAppend(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", func(cfg *Config) {
		cfg.MaxBatchEntries = 5
		cfg.MaxBatchBytes = 200
	})
	u := hc.urls[2]
	nd := map[string]string{"Content-Type": "application/x-ndjson; charset=utf-8"}
	if r := do(t, "POST", u+"/v1/log", `"single"`, nil); r.code != 201 || r.body["index"].(float64) != 1 {
		t.Fatalf("single append: %d %s", r.code, r.raw)
	}
	r := do(t, "POST", u+"/v1/log", "{\"b\":1}\r\n\n{ \"b\" : 2 }\r\n[3]\n", nd)
	if r.code != 201 || r.raw != `{"first":2,"last":4}` || r.header.Get("Location") != "/v1/log/2" {
		t.Fatalf("batch: %d %s Location %q", r.code, r.raw, r.header.Get("Location"))
	}
	want := []string{`"single"`, `{"b":1}`, `{ "b" : 2 }`, `[3]`}
	for id := NodeID(1); id <= 3; id++ {
		for i, w := range want {
			got := do(t, "GET", fmt.Sprintf("%s/v1/log/%d", hc.urls[id], i+1), "", nil)
			if got.raw != fmt.Sprintf(`{"index":%d,"data":%s}`, i+1, w) {
				t.Fatalf("node %d index %d: %s, want data %s", id, i+1, got.raw, w)
			}
		}
	}
	// A key covers the batch: a repeat through another node appends
	// nothing and answers the same first and last.
	keyed := map[string]string{"Content-Type": "application/x-ndjson", "Idempotency-Key": "batch-7"}
	r = do(t, "POST", hc.urls[1]+"/v1/log", "\"k1\"\n\"k2\"\n", keyed)
	if r.code != 201 || r.raw != `{"first":5,"last":6}` {
		t.Fatalf("keyed batch: %d %s", r.code, r.raw)
	}
	r = do(t, "POST", hc.urls[3]+"/v1/log", "\"other\"\n\"lines\"\n\"too\"\n", keyed)
	if r.code != 200 || r.raw != `{"first":5,"last":6,"duplicate":true}` || r.header.Get("Location") != "/v1/log/5" {
		t.Fatalf("repeat of the keyed batch: %d %s", r.code, r.raw)
	}
	// Refused batches append nothing.
	bad := []struct {
		name, body string
		header     map[string]string
		code       int
		msg        string
	}{
		{"bad third line", "1\n2\n{\"x\"\n4\n", nd, 400, "line 3"},
		{"empty batch", "\n\n", nd, 400, "empty"},
		{"six entries", "1\n2\n3\n4\n5\n6\n", nd, 413, "at most 5"},
		{"body past the batch limit", `"` + strings.Repeat("x", 200) + `"`, nd, 413, "limit of 200"},
		{"long key", "1\n", map[string]string{"Content-Type": "application/x-ndjson", "Idempotency-Key": strings.Repeat("k", 129)}, 400, "Idempotency-Key"},
		{"ndjson as one value", "1\n2\n", nil, 400, "exactly one"},
	}
	for _, tc := range bad {
		r := do(t, "POST", u+"/v1/log", tc.body, tc.header)
		if msg, _ := r.body["error"].(string); r.code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: %d %s, want %d with %q", tc.name, r.code, r.raw, tc.code, tc.msg)
		}
	}
	if r := do(t, "POST", u+"/v1/log", `"after"`, nil); r.code != 201 || r.body["index"].(float64) != 7 {
		t.Fatalf("append after the refused batches: %d %s, want index 7", r.code, r.raw)
	}
	// Range reads and the feed see a batch's entries as single entries.
	rr := do(t, "GET", u+"/v1/log?from=4&limit=3", "", nil)
	if rr.raw != `{"entries":[{"index":4,"data":[3]},{"index":5,"data":"k1"},{"index":6,"data":"k2"}],"first":1,"last":7}` {
		t.Fatalf("range: %s", rr.raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", hc.urls[1]+"/v1/feed?from=2", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 0, 512)
	for !bytes.Contains(buf, []byte(`"index":7`)) {
		chunk := make([]byte, 256)
		k, err := resp.Body.Read(chunk)
		if err != nil {
			t.Fatalf("feed: %v after %q", err, buf)
		}
		buf = append(buf, chunk[:k]...)
	}
	wantFeed := `{"index":2,"data":{"b":1}}` + "\n" + `{"index":3,"data":{ "b" : 2 }}` + "\n" + `{"index":4,"data":[3]}` + "\n" +
		`{"index":5,"data":"k1"}` + "\n" + `{"index":6,"data":"k2"}` + "\n" + `{"index":7,"data":"after"}` + "\n"
	if string(buf) != wantFeed {
		t.Fatalf("feed:\n%s\nwant:\n%s", buf, wantFeed)
	}
}

// appendBatchKeys appends n keyed batches of 1 to 5 entries through via
// and returns each key's first and last index; the entries' data names
// the batch and the place in it.
func (c *testCluster) appendBatchKeys(via NodeID, n int) map[string][2]Index {
	c.t.Helper()
	keys := map[string][2]Index{}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("b%d", i)
		a, err := c.appendBatch(context.Background(), via, batchData(key, 1+i%5), key)
		if err != nil {
			c.t.Fatal(err)
		}
		keys[key] = [2]Index{a.Index, a.Last}
	}
	return keys
}

// batchData is the data of a batch of k entries for key.
func batchData(key string, k int) []string {
	var vals []string
	for j := 0; j < k; j++ {
		vals = append(vals, fmt.Sprintf(`{"batch":%q,"j":%d}`, key, j))
	}
	return vals
}

// appendBatch appends vals as one batch through node id, recording the
// acks as appendKeyed does (a duplicate appended none of vals).
func (c *testCluster) appendBatch(ctx context.Context, id NodeID, vals []string, key string) (Applied, error) {
	n := c.node(id)
	if n == nil {
		return Applied{}, errUnreachable
	}
	bs := make([][]byte, len(vals))
	for j, v := range vals {
		bs[j] = []byte(v)
	}
	a, err := n.AppendBatch(ctx, bs, key)
	if err != nil {
		return a, err
	}
	if a.Duplicate {
		return a, nil
	}
	if a.Last != a.Index+Index(len(vals))-1 {
		return a, fmt.Errorf("batch of %d entries got %d..%d", len(vals), a.Index, a.Last)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, v := range vals {
		if prev, ok := c.acked[v]; ok && prev != a.Index+Index(j) {
			return a, fmt.Errorf("%s acknowledged twice: at %d and %d", v, prev, a.Index+Index(j))
		}
		c.acked[v] = a.Index + Index(j)
	}
	return a, nil
}

// restartPastRetention waits until every node but lagging (which is
// down) retains at most keep entries, starts lagging and waits until it
// has caught up with leader, which must have taken a prefix install.
func (c *testCluster) restartPastRetention(leader, lagging NodeID, keep Index) {
	c.t.Helper()
	waitFor(c.t, 10*time.Second, fmt.Sprintf("the live nodes to retain at most %d entries", keep), func() bool {
		for _, id := range c.members {
			if id == lagging {
				continue
			}
			if first, last := c.node(id).learner.Bounds(); last-first+1 > keep {
				return false
			}
		}
		return true
	})
	c.start(lagging)
	n := c.node(lagging)
	waitFor(c.t, 10*time.Second, "the lagging node to catch up", func() bool {
		_, l1 := c.node(leader).learner.Bounds()
		_, l2 := n.learner.Bounds()
		return l1 == l2
	})
	if v := scrape(c.t, n, "paxoslog_prefix_installs_total"); v < 1 {
		c.t.Fatalf("paxoslog_prefix_installs_total = %v on the lagging node, want an install", v)
	}
}

// retryBatches retries every keyed batch through via and fails unless
// each answers the first and last its entries got, as a duplicate.
func (c *testCluster) retryBatches(via NodeID, keys map[string][2]Index) {
	c.t.Helper()
	for key, at := range keys {
		a, err := c.appendBatch(context.Background(), via, []string{`"retry"`, `"of"`, key}, key)
		if err != nil || a.Index != at[0] || a.Last != at[1] || !a.Duplicate {
			c.t.Fatalf("retry of %s through node %d: %+v %v, want %d..%d, a duplicate", key, via, a, err, at[0], at[1])
		}
	}
}

// A batch's key is remembered with both its indices through a restart of
// every node (the dedup journal) and through the loss of one node's
// dedup journal (rebuilt from the client log's records, whose continued
// records say where each batch ends).
func TestBatchKeysSurviveRestartAndLostDedup(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	keys := c.appendBatchKeys(leader, 40)
	for i := 0; i < 10; i++ {
		c.mustAppend(leader%3+1, fmt.Sprintf(`{"single":%d}`, i)) // forwarded singles between them
	}
	for _, id := range c.members {
		c.syncedThrough(id, keys["b39"][1])
	}
	for _, id := range c.members {
		c.crash(id)
	}
	for _, id := range c.members {
		c.start(id)
	}
	c.leader(5 * time.Second)
	for _, id := range c.members {
		c.retryBatches(id, keys)
	}
	victim := c.leader(5*time.Second)%3 + 1
	c.crash(victim)
	if err := os.RemoveAll(filepath.Join(c.dirs[victim], "dedup")); err != nil {
		t.Fatal(err)
	}
	c.start(victim)
	c.retryBatches(victim, keys)
	c.check()
	// Each batch's entries sit at its indices, in order.
	n := c.node(victim)
	for key, at := range keys {
		data := batchData(key, int(at[1]-at[0]+1))
		for j, want := range data {
			e, err := n.learner.Get(at[0] + Index(j))
			if err != nil || string(e.Data) != want {
				t.Fatalf("index %d: %s %v, want %s", at[0]+Index(j), e.Data, err, want)
			}
		}
	}
}

// A follower that was down while its peers' retention dropped everything
// it lacked installs a prefix whose dedup records include continued ones:
// batch keys keep both their indices there, through its restart.
func TestBatchKeysThroughPrefixInstall(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), retainFew(5, nil))
	leader := c.leader(5 * time.Second)
	lagging := leader%3 + 1
	c.crash(lagging)
	keys := c.appendBatchKeys(leader, 60)
	c.restartPastRetention(leader, lagging, 5)
	c.retryBatches(lagging, keys)
	c.syncedThrough(lagging, keys["b59"][1])
	c.crash(lagging)
	c.start(lagging)
	c.retryBatches(lagging, keys)
	c.check()
}

func TestTakeForSlot(t *testing.T) {
	e := func(values, bytes int) Entry {
		return Entry{Data: make([]byte, bytes), More: make([][]byte, values-1)}
	}
	cases := []struct {
		name          string
		queue         []Entry
		max           int
		appends, vals int
	}{
		{"singles up to the cap", []Entry{e(1, 1), e(1, 1), e(1, 1)}, 2, 2, 2},
		{"a batch past the cap goes alone", []Entry{e(5, 1), e(1, 1)}, 2, 1, 5},
		{"a batch that does not fit waits", []Entry{e(1, 1), e(3, 1), e(1, 1)}, 3, 1, 1},
		{"bytes bound a slot", []Entry{e(1, maxSlotBytes/2), e(1, maxSlotBytes/2), e(1, 1)}, 100, 2, 2},
		{"a batch past the bytes goes alone", []Entry{e(2, maxSlotBytes+1), e(1, 1)}, 100, 1, 2},
	}
	for _, tc := range cases {
		if a, v := takeForSlot(tc.queue, tc.max); a != tc.appends || v != tc.vals {
			t.Errorf("%s: %d appends, %d values; want %d, %d", tc.name, a, v, tc.appends, tc.vals)
		}
	}
	big := []SlotValue{{Slot: 1, Value: Value{Entries: []Entry{e(1, maxAcceptBytes-1000)}}},
		{Slot: 2, Value: Value{Entries: []Entry{e(1, 2000)}}}, {Slot: 3, Value: Value{Entries: []Entry{e(1, 10)}}}}
	if runs := splitAccepts(big); len(runs) != 2 || len(runs[0]) != 1 || len(runs[1]) != 2 {
		t.Fatalf("splitAccepts: %d runs", len(runs))
	}
}

// Batches at the default limits (10,000 entries), several at once through
// a follower, next to single appends: each lands whole, in order.
func TestFullSizeBatchesThroughAFollower(t *testing.T) {
	// The default election timeout, and time to spare: the test's 80 ms
	// and 3 s are shorter than rounds of megabyte values take under the
	// race detector on two cores.
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) {
		cfg.ElectionTimeout = 500 * time.Millisecond
		cfg.RequestTimeout = 30 * time.Second
	})
	leader := c.leader(5 * time.Second)
	follower := leader%3 + 1
	const batches, size = 4, 10_000
	errs := make(chan error, batches+1)
	got := make([]Applied, batches)
	for b := 0; b < batches; b++ {
		go func() {
			vals := make([]string, size)
			for j := range vals {
				vals[j] = fmt.Sprintf(`{"b":%d,"j":%d,"pad":"%s"}`, b, j, strings.Repeat("x", 20))
			}
			a, err := c.appendBatch(context.Background(), follower, vals, "")
			got[b] = a
			errs <- err
		}()
	}
	go func() {
		for i := 0; i < 50; i++ {
			if _, err := c.appendTo(context.Background(), leader, fmt.Sprintf(`{"single":%d}`, i)); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	for k := 0; k < batches+1; k++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.check()
	for b, a := range got {
		for _, id := range c.members {
			for _, i := range []Index{a.Index, a.Index + size/2, a.Last} {
				e, err := c.node(id).learner.Get(i)
				want := fmt.Sprintf(`{"b":%d,"j":%d,`, b, i-a.Index)
				if err != nil || !strings.HasPrefix(string(e.Data), want) {
					t.Fatalf("node %d index %d: %.40s %v, want %s...", id, i, e.Data, err, want)
				}
			}
		}
	}
}

// A dedup window of a few indices: batches straddle its edge, one is
// longer than it, and a follower installs a prefix whose shipped dedup
// records begin with continued ones. A key is remembered while its
// batch's first index is in the window, alike on every node.
func TestBatchesAtTheWindowEdge(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), retainFew(3, func(cfg *Config) { cfg.DedupWindow = 8 }))
	leader := c.leader(5 * time.Second)
	lagging := leader%3 + 1
	c.crash(lagging)
	long, err := c.appendBatch(context.Background(), leader, batchData("long", 12), "long")
	if err != nil || long.Last != long.Index+11 || long.Duplicate {
		t.Fatalf("a batch longer than the window: %+v %v", long, err)
	}
	keys := map[string][2]Index{}
	for i := 0; i < 30; i++ {
		key := fmt.Sprintf("w%d", i)
		a, err := c.appendBatch(context.Background(), leader, batchData(key, 5), key)
		if err != nil {
			t.Fatal(err)
		}
		keys[key] = [2]Index{a.Index, a.Last}
	}
	c.restartPastRetention(leader, lagging, 3)
	// The last batch's first index is 4 below the end: remembered. The
	// one before starts 9 below: forgotten, so a retry appends it anew.
	last := keys["w29"]
	for _, id := range c.members {
		if got, ok := remembered(c.node(id).learner, "w29"); !ok || got != last[0] {
			t.Fatalf("node %d remembers w29 at %d %v, want %d", id, got, ok, last[0])
		}
		if got, ok := remembered(c.node(id).learner, "w28"); ok {
			t.Fatalf("node %d remembers w28 at %d: its first index left the window", id, got)
		}
	}
	c.retryBatches(lagging, map[string][2]Index{"w29": last})
	again, err := c.appendBatch(context.Background(), lagging, batchData("w28-again", 2), "w28")
	if err != nil || again.Duplicate || again.Index != last[1]+1 {
		t.Fatalf("retry of a forgotten key: %+v %v, want new entries at %d", again, err, last[1]+1)
	}
	c.check()
}

// TestReadBodySizes: a body of declared length, a batch's included, is
// read into exactly its length (accepted values pin it until the
// acceptor's checkpoint); one of unknown length is read too; one past the
// limit is 413 either way.
func TestReadBodySizes(t *testing.T) {
	e := echo.New()
	read := func(body []byte, declared bool, limit int) ([]byte, error) {
		req := httptest.NewRequest(http.MethodPost, "/v1/log", bytes.NewReader(body))
		if !declared {
			req.ContentLength = -1
		}
		return readBody(e.NewContext(req, httptest.NewRecorder()), limit)
	}
	for _, n := range []int{0, 100, 64 << 10, 100_000, 1<<20 + 3} {
		want := bytes.Repeat([]byte("y"), n)
		got, err := read(want, true, 2<<20)
		if err != nil || !bytes.Equal(got, want) || cap(got) != n {
			t.Fatalf("%d bytes declared: %d bytes (capacity %d), %v", n, len(got), cap(got), err)
		}
		if got, err = read(want, false, 2<<20); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes undeclared: %d bytes, %v", n, len(got), err)
		}
	}
	for _, declared := range []bool{true, false} {
		var ae *apiError
		if _, err := read(make([]byte, 1001), declared, 1000); !errors.As(err, &ae) || ae.code != http.StatusRequestEntityTooLarge {
			t.Errorf("1001 bytes over a limit of 1000 (declared %v): %v, want 413", declared, err)
		}
	}
}
