package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// runBenchJSON runs `paxoslog bench args... --json` and decodes its result.
func runBenchJSON(t *testing.T, wantExit int, args ...string) benchResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := benchMain(t.Context(), append(args, "--json"), &stdout, &stderr)
	if code != wantExit {
		t.Fatalf("bench %v: exit %d, want %d; stderr:\n%s", args, code, wantExit, stderr.String())
	}
	var r benchResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("bench %v: stdout is not one JSON object: %v\n%s", args, err, stdout.String())
	}
	return r
}

// clusterTargets is the --targets value for every node of hc.
func clusterTargets(hc *httpCluster) string {
	var urls []string
	for _, u := range hc.urls {
		urls = append(urls, u)
	}
	slices.Sort(urls)
	return strings.Join(urls, ",")
}

func TestBenchAppendAndRead(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", nil)
	targets := clusterTargets(hc)
	for _, workload := range []string{"append", "read"} {
		t.Run(workload, func(t *testing.T) {
			r := runBenchJSON(t, 0, "--targets", targets, "--workload", workload,
				"--count", "200", "--clients", "4", "--warmup", "0")
			if r.Ops != 200 || r.Errors != 0 || len(r.ErrorsByKind) != 0 {
				t.Fatalf("ops %d errors %d %v, want 200 ops and no errors", r.Ops, r.Errors, r.ErrorsByKind)
			}
			if !(r.P50 > 0 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.Max) {
				t.Fatalf("latencies not positive and ordered: p50 %v p90 %v p99 %v max %v", r.P50, r.P90, r.P99, r.Max)
			}
			if r.Workload != workload || r.System != "paxoslog" || r.Clients != 4 || r.OpsPerS <= 0 || r.DurationS <= 0 {
				t.Fatalf("result does not describe the run: %+v", r)
			}
		})
	}
	// The append run wrote exactly 200 entries; the reads wrote none.
	r := do(t, http.MethodGet, hc.urls[1]+"/v1/log?from=1&limit=1", "", nil)
	if last, _ := r.body["last"].(float64); r.code != http.StatusOK || last != 200 {
		t.Fatalf("linearizable read after the runs: %d %s, want last 200", r.code, r.raw)
	}
}

func TestBenchAppendIdempotent(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", nil)
	r := runBenchJSON(t, 0, "--targets", clusterTargets(hc), "--idempotent",
		"--count", "50", "--clients", "2", "--warmup", "0", "--size", "300")
	if r.Ops != 50 || r.Errors != 0 || r.Size != 300 {
		t.Fatalf("ops %d errors %d size %d, want 50, 0, 300", r.Ops, r.Errors, r.Size)
	}
	got := do(t, http.MethodGet, hc.urls[2]+"/v1/log/1", "", nil)
	data, _ := json.Marshal(got.body["data"])
	if got.code != http.StatusOK || len(data) != 300 {
		t.Fatalf("entry 1: %d, %d bytes of data, want 300: %s", got.code, len(data), got.raw)
	}
}

func TestBenchFeedDelivers(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", nil)
	targets := clusterTargets(hc)

	// Count mode: the op is one delivery, on any feed.
	r := runBenchJSON(t, 0, "--targets", targets, "--workload", "feed",
		"--count", "100", "--clients", "2", "--rate", "500", "--warmup", "0")
	if r.Ops != 100 || r.Errors != 0 || r.P50 <= 0 || r.Appends == 0 {
		t.Fatalf("feed: ops %d errors %d %v p50 %v appends %d; want 100 deliveries, no errors", r.Ops, r.Errors, r.ErrorsByKind, r.P50, r.Appends)
	}

	// Duration mode: each feed delivers every acknowledged append before
	// the run ends, so deliveries are exactly clients × appends.
	r = runBenchJSON(t, 0, "--targets", targets, "--workload", "feed",
		"--duration", "500ms", "--clients", "3", "--rate", "200", "--warmup", "100ms")
	if r.Errors != 0 || r.Appends == 0 || r.Ops != 3*r.Appends {
		t.Fatalf("feed: ops %d, appends %d, errors %d %v; want ops = 3 × appends and no errors", r.Ops, r.Appends, r.Errors, r.ErrorsByKind)
	}
}

func TestBenchBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--nope"},
		{"extra"},
		{"--clients", "0"},
		{"--count", "0"},
		{"--count", "10000001"},
		{"--duration", "0s"},
		{"--duration", "11m"},
		{"--duration", "9m59s", "--warmup", "2s"},
		{"--warmup", "-1s"},
		{"--size", "10"},
		{"--targets", "ftp://127.0.0.1:1"},
		{"--targets", "http://127.0.0.1:1,"},
		{"--workload", "scan"},
		{"--system", "zookeeper"},
		{"--workload", "feed", "--system", "etcd"},
		{"--system", "etcd", "--idempotent"},
		{"--rate", "0"},
		{"--batch", "0"},
		{"--batch", "65537"},
		{"--batch", "10", "--workload", "read"},
	} {
		var stdout, stderr bytes.Buffer
		code := benchMain(t.Context(), args, &stdout, &stderr)
		msg := stderr.String()
		if code != 2 || strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "paxoslog bench: ") || stdout.Len() != 0 {
			t.Errorf("bench %q: exit %d, stderr %q, stdout %q; want exit 2 and one line", args, code, msg, stdout.String())
		}
	}
	// Main hands "bench" over.
	var stderr bytes.Buffer
	if code := Main(t.Context(), []string{"bench", "--workload", "feed", "--system", "etcd"}, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "not supported with --system etcd") {
		t.Errorf("paxoslog bench with feed on etcd: exit %d, stderr %q", code, stderr.String())
	}
	if code := benchMain(t.Context(), []string{"--help"}, io.Discard, &stderr); code != 0 {
		t.Errorf("bench --help: exit %d", code)
	}
}

// fakeEtcd serves the two etcd v3 gateway calls the bench uses and checks
// their encoding.
type fakeEtcd struct {
	t    *testing.T
	mu   sync.Mutex // protects the fields below
	kv   map[string][]byte
	puts int
	gets int
	txns int
}

func (f *fakeEtcd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v3/kv/txn" {
		f.txn(w, r)
		return
	}
	var req struct {
		Key          *string `json:"key"`
		Value        *string `json:"value"`
		Serializable *bool   `json:"serializable"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil || req.Key == nil {
		f.t.Errorf("%s %s: not a POST of a JSON object with a key", r.Method, r.URL.Path)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	key, err := base64.StdEncoding.DecodeString(*req.Key)
	if err != nil || !strings.HasPrefix(string(key), benchEtcdPrefix) {
		f.t.Errorf("%s: key %q is not base64 of %s...: %v", r.URL.Path, *req.Key, benchEtcdPrefix, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case "/v3/kv/put":
		if req.Value == nil {
			f.t.Errorf("put %q without a value", key)
			break
		}
		v, err := base64.StdEncoding.DecodeString(*req.Value)
		var entry struct{ K, V string }
		if err != nil || json.Unmarshal(v, &entry) != nil || benchEtcdPrefix+entry.K != string(key) {
			f.t.Errorf("put %q: value %q is not base64 of the JSON entry for this key: %v", key, *req.Value, err)
		}
		if _, dup := f.kv[string(key)]; dup {
			f.t.Errorf("put %q twice: keys must be unique per op", key)
		}
		f.kv[string(key)] = v
		f.puts++
		w.Write([]byte(`{"header":{"revision":"1"}}`))
	case "/v3/kv/range":
		if req.Serializable == nil || *req.Serializable {
			f.t.Errorf("range %q: want serializable false (a linearizable read)", key)
		}
		if _, ok := f.kv[string(key)]; !ok {
			f.t.Errorf("range %q: a key that was never put", key)
		}
		f.gets++
		w.Write([]byte(`{"header":{"revision":"1"},"kvs":[],"count":"1"}`))
	default:
		f.t.Errorf("unexpected path %s", r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}
}

// txn takes a txn of puts, as etcd's gateway does: at most 128 of them.
func (f *fakeEtcd) txn(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Success []struct {
			Put struct{ Key, Value string } `json:"request_put"`
		} `json:"success"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Success) == 0 || len(req.Success) > benchEtcdMaxTxn {
		f.t.Errorf("txn: %d puts, %v; want 1 to %d", len(req.Success), err, benchEtcdMaxTxn)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, op := range req.Success {
		key, err1 := base64.StdEncoding.DecodeString(op.Put.Key)
		v, err2 := base64.StdEncoding.DecodeString(op.Put.Value)
		if err1 != nil || err2 != nil || !strings.HasPrefix(string(key), benchEtcdPrefix) {
			f.t.Errorf("txn put %q=%q: not base64 of a bench key and value", op.Put.Key, op.Put.Value)
		}
		if _, dup := f.kv[string(key)]; dup {
			f.t.Errorf("put %q twice: keys must be unique per op", key)
		}
		f.kv[string(key)] = v
		f.puts++
	}
	f.txns++
	w.Write([]byte(`{"header":{"revision":"1"},"succeeded":true}`))
}

// --batch: a batch append a request on paxoslog, a txn on etcd (cut to
// etcd's 128 puts); entries_per_s counts entries.
func TestBenchBatch(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", nil)
	r := runBenchJSON(t, 0, "--targets", clusterTargets(hc), "--batch", "50", "--idempotent",
		"--count", "20", "--clients", "3", "--warmup", "0", "--size", "120")
	if r.Ops != 20 || r.Errors != 0 || r.Batch != 50 || r.EntriesPerS < 49*r.OpsPerS || r.EntriesPerS > 51*r.OpsPerS {
		t.Fatalf("paxoslog batch: ops %d errors %d %v batch %d, %v entries/s at %v ops/s", r.Ops, r.Errors, r.ErrorsByKind, r.Batch, r.EntriesPerS, r.OpsPerS)
	}
	got := do(t, http.MethodGet, hc.urls[1]+"/v1/log?from=1&limit=1000", "", nil)
	entries, _ := got.body["entries"].([]any)
	seen := map[string]bool{}
	for _, e := range entries {
		data, _ := json.Marshal(e.(map[string]any)["data"])
		if len(data) != 120 || seen[string(data)] {
			t.Fatalf("entry %s: %d bytes (want 120), repeated %v", data, len(data), seen[string(data)])
		}
		seen[string(data)] = true
	}
	if len(entries) != 1000 || got.body["last"].(float64) != 1000 {
		t.Fatalf("log holds %d entries, last %v; want 1000", len(entries), got.body["last"])
	}

	f := &fakeEtcd{t: t, kv: map[string][]byte{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	r = runBenchJSON(t, 0, "--system", "etcd", "--targets", srv.URL, "--batch", "500", "--count", "4", "--clients", "2", "--warmup", "0")
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Ops != 4 || r.Errors != 0 || r.Batch != benchEtcdMaxTxn || f.txns != 4 || f.puts != 4*benchEtcdMaxTxn || len(f.kv) != f.puts {
		t.Fatalf("etcd txn: ops %d errors %d batch %d; server saw %d txns, %d puts of %d keys", r.Ops, r.Errors, r.Batch, f.txns, f.puts, len(f.kv))
	}
}

func TestBenchEtcdEncoding(t *testing.T) {
	f := &fakeEtcd{t: t, kv: map[string][]byte{}}
	srv := httptest.NewServer(f)
	defer srv.Close()

	r := runBenchJSON(t, 0, "--system", "etcd", "--targets", srv.URL, "--count", "60", "--clients", "3", "--warmup", "0", "--size", "120")
	if r.Ops != 60 || r.Errors != 0 {
		t.Fatalf("etcd put: ops %d errors %d %v", r.Ops, r.Errors, r.ErrorsByKind)
	}
	f.mu.Lock()
	if f.puts != 60 || len(f.kv) != 60 {
		t.Errorf("server saw %d puts of %d keys, want 60 and 60", f.puts, len(f.kv))
	}
	for k, v := range f.kv {
		if len(v) != 120 {
			t.Errorf("value of %q is %d bytes, want --size 120", k, len(v))
		}
	}
	f.mu.Unlock()

	r = runBenchJSON(t, 0, "--system", "etcd", "--workload", "read", "--targets", srv.URL, "--count", "30", "--clients", "3", "--warmup", "0")
	if r.Ops != 30 || r.Errors != 0 {
		t.Fatalf("etcd range: ops %d errors %d %v", r.Ops, r.Errors, r.ErrorsByKind)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gets != 30 || f.puts != 63 { // 3 more: one key to read per client
		t.Errorf("server saw %d ranges and %d puts, want 30 and 63", f.gets, f.puts)
	}
}

func TestBenchErrorsByKind(t *testing.T) {
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer unavailable.Close()
	r := runBenchJSON(t, 1, "--targets", unavailable.URL, "--count", "7", "--clients", "2", "--warmup", "0")
	if r.Ops != 0 || r.Errors != 7 || r.ErrorsByKind["503"] != 7 {
		t.Errorf("against a 503 server: ops %d errors %d %v, want 7 × 503", r.Ops, r.Errors, r.ErrorsByKind)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	r = runBenchJSON(t, 1, "--targets", closed, "--count", "3", "--clients", "1", "--warmup", "0")
	if r.Errors != 3 || r.ErrorsByKind["conn refused"] != 3 {
		t.Errorf("against a closed port: errors %d %v, want 3 × conn refused", r.Errors, r.ErrorsByKind)
	}
}

func TestBenchTable(t *testing.T) {
	r := &benchResult{Workload: "append", System: "paxoslog", Clients: 16, DurationS: 5, Ops: 100, OpsPerS: 20,
		P50: 1.234, P90: 2, P99: 3, Max: 4.5, Errors: 3, ErrorsByKind: map[string]int64{"timeout": 1, "503": 2}}
	var out bytes.Buffer
	r.writeTable(&out)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "workload") ||
		!strings.Contains(lines[1], "1.23") || !strings.HasSuffix(lines[1], "3 (503=2 timeout=1)") {
		t.Errorf("table:\n%s", out.String())
	}
}

func TestBenchHistogram(t *testing.T) {
	var h benchHistogram
	for v := int64(0); v < 1<<20; v += 1 + v/97 {
		i := h.bucket(v)
		low, high := h.bounds(i)
		if v < low || v > high || (high-low) > max(low>>benchSubBits, 0) {
			t.Fatalf("value %d in bucket %d = [%d, %d]", v, i, low, high)
		}
	}
	if i := h.bucket(1<<63 - 1); i >= len(h.counts) {
		t.Fatalf("largest value maps past the end: bucket %d of %d", i, len(h.counts))
	}

	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([]time.Duration, 100_000)
	var other benchHistogram
	for i := range vals {
		vals[i] = time.Duration(rng.Int64N(int64(50 * time.Millisecond)))
		if i%2 == 0 {
			h.record(vals[i])
		} else {
			other.record(vals[i])
		}
	}
	h.merge(&other)
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 1} {
		want := vals[int(q*float64(len(vals)))-1]
		got := h.quantile(q)
		if d := float64(got-want) / float64(want); d > 0.01 || d < -0.01 {
			t.Errorf("quantile %v = %v, want %v within 1%%", q, got, want)
		}
	}
	if h.n != uint64(len(vals)) || time.Duration(h.max) != vals[len(vals)-1] || time.Duration(h.min) != vals[0] {
		t.Errorf("n %d min %d max %d, want %d %v %v", h.n, h.min, h.max, len(vals), vals[0], vals[len(vals)-1])
	}
}

func TestBenchClaim(t *testing.T) {
	now := time.Now()
	b := &benchRun{measureStart: now, limit: 3}
	if measured, stop := b.claim(now.Add(-time.Millisecond)); measured || stop {
		t.Errorf("during warmup: measured %v stop %v, want neither", measured, stop)
	}
	for i := 1; i <= 4; i++ {
		measured, stop := b.claim(now)
		if !measured || stop != (i > 3) {
			t.Errorf("op %d of a limit of 3: measured %v stop %v", i, measured, stop)
		}
	}
	b = &benchRun{measureStart: now, end: now.Add(time.Second), limit: benchMaxOps}
	if _, stop := b.claim(now.Add(time.Second)); !stop {
		t.Error("an op at the end of the duration did not stop the client")
	}
}

// TestBenchMaxGap: the longest time without a success counts from the
// start of measuring, and successes out of order (clients race) do not
// shorten or lengthen it.
func TestBenchMaxGap(t *testing.T) {
	start := time.Now()
	b := &benchRun{start: start, measureStart: start.Add(5 * time.Millisecond)}
	b.lastOK.Store(int64(5 * time.Millisecond))
	for _, ms := range []int{2, 20, 25, 24, 110, 111, 90} {
		b.noteSuccess(start.Add(time.Duration(ms) * time.Millisecond))
	}
	if got, want := time.Duration(b.maxGap.Load()), 85*time.Millisecond; got != want {
		t.Fatalf("longest gap %v, want %v", got, want)
	}
}
