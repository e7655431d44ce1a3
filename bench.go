package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
)

// bench.go: `paxoslog bench`, a load generator for a paxoslog cluster (or,
// for comparison, etcd's v3 JSON gateway). Standard library only: N client
// goroutines issuing one request at a time each on keep-alive connections
// of their own (h1conn.go: the tool should not be what limits the
// servers; through http.Client it spent twice the CPU per request), feeds
// through net/http, latencies in a fixed-size histogram per client (no
// per-op growth), merged at the end.
//
// A run is bounded whatever the flags say: it stops at --duration or
// --count, and never runs longer than benchMaxTime nor measures more than
// benchMaxOps operations.

const (
	// benchMaxTime bounds a whole run, warmup included.
	benchMaxTime = 10 * time.Minute
	// benchMaxOps bounds the measured operations of a run.
	benchMaxOps = 10_000_000
	// benchMaxClients bounds --clients.
	benchMaxClients = 4096
	// benchMaxRate bounds --rate (feed appends per second).
	benchMaxRate = 100_000
	// benchRequestTimeout bounds one append or read request.
	benchRequestTimeout = 10 * time.Second
	// benchFeedDrain is how long feeds may take, after the last append was
	// acknowledged, to deliver it before the run gives up on them.
	benchFeedDrain = 5 * time.Second
	// benchAppenders is how many appends the feed workload's pacer may
	// have in flight at once.
	benchAppenders = 128
	// benchRingSize is how many recent feed appends have their send time
	// remembered: a feed that falls further behind than this counts an
	// error instead of a latency.
	benchRingSize = 1 << 20
	// benchMaxCatchUp is how far the feed workload's pacer may fall behind
	// its schedule and still catch up (timer jitter); past it, it skips.
	benchMaxCatchUp = 100 * time.Millisecond
	// benchAppenderClient is the client number in the ids of feed appends.
	benchAppenderClient = 9999
	// benchEtcdPrefix starts every key the etcd workloads write.
	benchEtcdPrefix = "paxoslog-bench/"
)

// benchConfig is the parsed `paxoslog bench` command line.
type benchConfig struct {
	targets    []string // base URLs, no trailing slash
	clients    int
	duration   time.Duration // measured time; unused when count > 0
	count      int64         // measured ops; 0 means run for duration
	warmup     time.Duration
	size       int
	workload   string // append, read or feed
	system     string // paxoslog or etcd
	rate       float64
	idempotent bool
	json       bool
	batch      int // entries per append request (a batch append, or an etcd txn, when > 1)
}

// benchEtcdMaxTxn is the most puts etcd takes in one txn (its default
// --max-txn-ops): --batch is cut to it for etcd.
const benchEtcdMaxTxn = 128

// benchIDLen is the length of an op id: run-client-seq, fixed width, so
// that every payload of a run has the same size.
const benchIDLen = 8 + 1 + 4 + 1 + 10

// benchMinSize is the smallest payload: {"k":"<id>","v":""}.
const benchMinSize = len(`{"k":"","v":""}`) + benchIDLen

// parseBenchFlags turns the bench command line into a benchConfig.
func parseBenchFlags(args []string, stderr io.Writer) (*benchConfig, error) {
	fs := flag.NewFlagSet("paxoslog bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	targets := fs.String("targets", "http://127.0.0.1:7070", "comma-separated base URLs; each client goes round-robin over them")
	clients := fs.Int("clients", 16, "concurrent clients, each with one request in flight")
	duration := fs.Duration("duration", 10*time.Second, "how long to measure (unless --count is given)")
	count := fs.Int64("count", 0, "how many operations to measure, in total; wins over --duration")
	warmup := fs.Duration("warmup", time.Second, "how long to run unmeasured first")
	size := fs.Int("size", 100, "payload bytes: a JSON object {\"k\":\"<id>\",\"v\":\"xxx...\"} padded to this size")
	workload := fs.String("workload", "append", "append (POST /v1/log), read (linearizable GET /v1/log) or feed (GET /v1/feed delivery latency)")
	system := fs.String("system", "paxoslog", "paxoslog, or etcd (its v3 JSON gateway: /v3/kv/put and /v3/kv/range)")
	rate := fs.Float64("rate", 1000, "feed workload: appends per second while the feeds are measured")
	idem := fs.Bool("idempotent", false, "send an Idempotency-Key with every append")
	asJSON := fs.Bool("json", false, "print the result as one JSON object instead of a table")
	batch := fs.Int("batch", 1, "append workload: entries per request, sent as one batch append (application/x-ndjson); on etcd one txn of up to 128 puts")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: paxoslog bench [flags]")
			fs.PrintDefaults()
			return nil, err
		}
		return nil, usagef("%v (see --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q (see --help)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	c := &benchConfig{clients: *clients, duration: *duration, warmup: *warmup, size: *size,
		workload: *workload, system: *system, rate: *rate, idempotent: *idem, json: *asJSON, batch: *batch}
	for _, t := range strings.Split(*targets, ",") {
		t = strings.TrimSpace(t)
		u, err := url.Parse(t)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("--targets entry %q must look like http://host:port", t)
		}
		c.targets = append(c.targets, strings.TrimRight(t, "/"))
	}
	if c.clients < 1 || c.clients > benchMaxClients {
		return nil, usagef("--clients must be from 1 to %d, got %d", benchMaxClients, c.clients)
	}
	if c.warmup < 0 || c.warmup >= benchMaxTime {
		return nil, usagef("--warmup must be from 0 to under %v, got %v", benchMaxTime, c.warmup)
	}
	if set["count"] {
		if *count < 1 || *count > benchMaxOps {
			return nil, usagef("--count must be from 1 to %d, got %d", benchMaxOps, *count)
		}
		c.count = *count
	} else if c.duration <= 0 || c.warmup+c.duration > benchMaxTime {
		return nil, usagef("--duration must be positive and, with --warmup, at most %v; got %v", benchMaxTime, c.duration)
	}
	if c.size < benchMinSize || c.size > 1<<20 {
		return nil, usagef("--size must be from %d to %d bytes, got %d", benchMinSize, 1<<20, c.size)
	}
	switch c.workload {
	case "append", "read", "feed":
	default:
		return nil, usagef("--workload must be append, read or feed, got %q", c.workload)
	}
	switch c.system {
	case "paxoslog", "etcd":
	default:
		return nil, usagef("--system must be paxoslog or etcd, got %q", c.system)
	}
	if c.system == "etcd" && c.workload == "feed" {
		return nil, usagef("--workload feed is not supported with --system etcd (etcd has no equivalent HTTP feed here)")
	}
	if c.system == "etcd" && c.idempotent {
		return nil, usagef("--idempotent applies only to --system paxoslog")
	}
	if c.batch < 1 || c.batch > maxSlotValues {
		return nil, usagef("--batch must be from 1 to %d, got %d", maxSlotValues, c.batch)
	}
	if c.batch > 1 && c.workload != "append" {
		return nil, usagef("--batch applies only to --workload append")
	}
	if c.system == "etcd" {
		c.batch = min(c.batch, benchEtcdMaxTxn)
	}
	if !(c.rate > 0 && c.rate <= benchMaxRate) {
		return nil, usagef("--rate must be above 0 and at most %d per second, got %v", benchMaxRate, c.rate)
	}
	return c, nil
}

// benchMain runs `paxoslog bench args` and returns the exit status: 0 when
// it measured something, 1 when it could not run or nothing succeeded, 2
// for bad flags.
func benchMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseBenchFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "paxoslog bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := runBench(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "paxoslog bench: %v\n", err)
		return 1
	}
	if cfg.json {
		b, _ := json.Marshal(res)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		res.writeTable(stdout)
	}
	switch {
	case res.Ops == 0:
		fmt.Fprintf(stderr, "paxoslog bench: no operation succeeded (%d errors)\n", res.Errors)
		return 1
	case res.Capped:
		fmt.Fprintf(stderr, "paxoslog bench: stopped early at a hard cap (%v or %d ops per run)\n", benchMaxTime, benchMaxOps)
	case res.Interrupted:
		fmt.Fprintln(stderr, "paxoslog bench: interrupted; the result covers the run so far")
	}
	return 0
}

// benchResult is what a run measured. Latencies are in milliseconds.
type benchResult struct {
	Workload  string   `json:"workload"`
	System    string   `json:"system"`
	Clients   int      `json:"clients"`
	Targets   []string `json:"targets"`
	Size      int      `json:"size"`
	DurationS float64  `json:"duration_s"`
	Ops       int64    `json:"ops"`
	OpsPerS   float64  `json:"ops_per_s"`
	// Batch: entries per append request; EntriesPerS = OpsPerS * Batch.
	Batch       int     `json:"batch"`
	EntriesPerS float64 `json:"entries_per_s"`
	P50         float64 `json:"p50_ms"`
	P90         float64 `json:"p90_ms"`
	P99         float64 `json:"p99_ms"`
	Max         float64 `json:"max_ms"`
	// MaxGap: the longest time no op succeeded (append and read loads),
	// from the start of measuring; a fault's pause as the clients saw it.
	MaxGap       float64          `json:"max_gap_ms,omitempty"`
	Errors       int64            `json:"errors"`
	ErrorsByKind map[string]int64 `json:"errors_by_kind"`
	// Feed workload only: the append rate asked for and the appends
	// acknowledged while measuring.
	Rate    float64 `json:"rate,omitempty"`
	Appends int64   `json:"appends,omitempty"`
	// Capped: the run hit benchMaxTime or benchMaxOps before --count or
	// --duration; Interrupted: by a signal. Either way the numbers cover
	// what ran.
	Capped      bool `json:"capped,omitempty"`
	Interrupted bool `json:"interrupted,omitempty"`
}

// writeTable prints r as a small aligned table.
func (r *benchResult) writeTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tsystem\tclients\tbatch\tduration\tops\tops/s\tentries/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\terrors")
	fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.2fs\t%d\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\n",
		r.Workload, r.System, r.Clients, r.Batch, r.DurationS, r.Ops, r.OpsPerS, r.EntriesPerS, r.P50, r.P90, r.P99, r.Max, r.errorsText())
	tw.Flush()
	if r.Workload == "feed" {
		fmt.Fprintf(w, "feed: %d appends acknowledged at a target rate of %g/s; latency is append sent to entry delivered\n", r.Appends, r.Rate)
	}
}

// errorsText renders the errors by kind: "0", or "3 (503=2 timeout=1)".
func (r *benchResult) errorsText() string {
	if r.Errors == 0 {
		return "0"
	}
	kinds := make([]string, 0, len(r.ErrorsByKind))
	for k := range r.ErrorsByKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	var b strings.Builder
	fmt.Fprintf(&b, "%d (", r.Errors)
	for i, k := range kinds {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, r.ErrorsByKind[k])
	}
	b.WriteByte(')')
	return b.String()
}

// benchHistogram counts latencies in log-linear buckets: exact below
// 2^benchSubBits ns, then 2^benchSubBits buckets per power of two, so any
// reported value is within 1/2^benchSubBits (under 1%) of a recorded one.
// Fixed size; not safe for concurrent use (one per client, merged after).
type benchHistogram struct {
	counts   [64 << benchSubBits]uint64
	n        uint64
	min, max int64
}

const benchSubBits = 7

// bucket maps v >= 0 to its bucket: counts[bucket(v)] covers [low, high].
func (h *benchHistogram) bucket(v int64) int {
	if v < 1<<benchSubBits {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - benchSubBits - 1
	return (e+1)<<benchSubBits + int(v>>e) - 1<<benchSubBits
}

// bounds is the inverse of bucket: the values bucket i covers.
func (h *benchHistogram) bounds(i int) (low, high int64) {
	if i < 1<<benchSubBits {
		return int64(i), int64(i)
	}
	e := i>>benchSubBits - 1
	m := int64(i&(1<<benchSubBits-1)) + 1<<benchSubBits
	return m << e, (m+1)<<e - 1
}

func (h *benchHistogram) record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[h.bucket(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
}

func (h *benchHistogram) merge(o *benchHistogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
}

// quantile returns the value at quantile q (0 < q <= 1): the midpoint of
// the bucket holding the ceil(q*n)-th smallest value, kept within the
// recorded min and max.
func (h *benchHistogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			low, high := h.bounds(i)
			return time.Duration(min(max(low+(high-low)/2, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}

// benchClient is one client's private state, owned by its goroutine until
// the run ends.
type benchClient struct {
	num    int
	hist   benchHistogram
	errs   map[string]int64
	body   []byte // reused response body
	recent uint64 // read workload: the log's last index as last seen
	seq    int64  // ops issued, warmup included: the next op's id
	stream *http.Response
}

// benchRun is one run in progress: shared read-only config plus atomic
// counters for the progress line.
type benchRun struct {
	cfg       *benchConfig
	pools     map[string]*connPool // per target; for appends, reads and status
	tr        *http.Transport
	stream    *http.Client // for feeds
	runID     string       // 8 hex digits in every op id of this run
	pad       []byte       // the "xxx..." that pads a payload to --size
	etcdReads [][]byte     // read workload on etcd: the key each client reads

	start, measureStart, end time.Time // end is zero in count mode
	limit                    int64     // --count, or benchMaxOps in duration mode

	ops, errs, claimed atomic.Int64
	// lastOK is when the latest measured op succeeded (ns since start),
	// maxGap the longest time between two successes, or from the start of
	// measuring to the first: a fault's pause, as clients saw it.
	lastOK, maxGap atomic.Int64

	// Feed workload.
	sentAt     []atomic.Int64 // ring: send time (ns since start) of append seq
	appendSeq  atomic.Int64   // appends handed to the workers so far
	ackedIndex atomic.Uint64  // highest log index of an acknowledged append
	appends    atomic.Int64   // acknowledged appends sent while measuring
	appendDone chan struct{}  // closed when the pacer and its workers are done
	lastAcked  uint64         // ackedIndex once appendDone is closed
	appendMu   sync.Mutex     // protects appendErrs
	appendErrs map[string]int64
}

func newBenchRun(cfg *benchConfig) (*benchRun, error) {
	conns := cfg.clients + 16
	if cfg.workload == "feed" {
		conns += benchAppenders
	}
	tr := &http.Transport{
		Proxy:               nil, // loopback benchmarks: never through a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns * len(cfg.targets),
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	var id [4]byte
	rand.Read(id[:])
	b := &benchRun{
		cfg:        cfg,
		pools:      map[string]*connPool{},
		tr:         tr,
		stream:     &http.Client{Transport: tr},
		runID:      hex.EncodeToString(id[:]),
		pad:        bytes.Repeat([]byte{'x'}, cfg.size-benchMinSize),
		appendDone: make(chan struct{}),
		appendErrs: map[string]int64{},
		limit:      cfg.count,
	}
	if b.limit == 0 {
		b.limit = benchMaxOps
	}
	for _, t := range cfg.targets {
		p, err := newConnPool(t, nil, conns)
		if err != nil {
			return nil, err
		}
		b.pools[t] = p
	}
	return b, nil
}

// close closes every idle connection of the run.
func (b *benchRun) close() {
	for _, p := range b.pools {
		p.closeIdle()
	}
	b.tr.CloseIdleConnections()
}

// opID is the id of op seq of client num: run-client-seq, benchIDLen bytes.
func (b *benchRun) opID(dst []byte, num int, seq int64) []byte {
	return fmt.Appendf(dst, "%s-%04d-%010d", b.runID, num, seq)
}

// payload is the JSON entry of op seq of client num, exactly --size bytes.
func (b *benchRun) payload(num int, seq int64) []byte {
	p := make([]byte, 0, b.cfg.size)
	p = append(p, `{"k":"`...)
	p = b.opID(p, num, seq)
	p = append(p, `","v":"`...)
	p = append(p, b.pad...)
	return append(p, `"}`...)
}

// statusError is an HTTP answer other than the one the op expects.
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d", e.code) }

// errorKind names an op's failure for the errors-by-kind count.
func errorKind(err error) string {
	var se *statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return strconv.Itoa(se.code)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn refused"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// benchMaxBody bounds an answer's body.
const benchMaxBody = 16 << 20

// do sends req to target within benchRequestTimeout and reads the answer
// into *body (reusing its space). It fails unless the status is one of ok.
// Nothing is sent twice: an append that failed is counted, not repeated.
func (b *benchRun) do(ctx context.Context, target string, req *h1Request, body *[]byte, ok ...int) error {
	req.timeout = benchRequestTimeout
	resp, err := b.pools[target].do(ctx, req, *body, benchMaxBody, false)
	if err != nil {
		return err
	}
	*body = resp.body
	if !slices.Contains(ok, resp.status) {
		return &statusError{resp.status}
	}
	return nil
}

// appendOp writes op seq of client num to target: one entry, or with
// --batch a batch of them (entry j of op seq has the id of seq*batch+j).
func (b *benchRun) appendOp(ctx context.Context, body *[]byte, target string, num int, seq int64) error {
	if b.cfg.batch > 1 {
		return b.appendBatchOp(ctx, body, target, num, seq)
	}
	p := b.payload(num, seq)
	if b.cfg.system == "etcd" {
		return b.etcdPut(ctx, body, target, p[len(`{"k":"`):len(`{"k":"`)+benchIDLen], p)
	}
	req := h1Request{method: "POST", path: "/v1/log", contentType: "application/json", body: p}
	if b.cfg.idempotent {
		req.headerName, req.headerValue = "Idempotency-Key", string(p[len(`{"k":"`):len(`{"k":"`)+benchIDLen])
	}
	// 200 is the answer to a repeated Idempotency-Key: nothing appended.
	return b.do(ctx, target, &req, body, http.StatusCreated, http.StatusOK)
}

// appendBatchOp is appendOp for --batch > 1: one batch append, or one
// etcd txn of puts.
func (b *benchRun) appendBatchOp(ctx context.Context, body *[]byte, target string, num int, seq int64) error {
	n := int64(b.cfg.batch)
	idAt := len(`{"k":"`)
	if b.cfg.system == "etcd" {
		r := make([]byte, 0, 64+n*int64(40+2*b.cfg.size))
		r = append(r, `{"success":[`...)
		for j := int64(0); j < n; j++ {
			p := b.payload(num, seq*n+j)
			if j > 0 {
				r = append(r, ',')
			}
			r = append(r, `{"request_put":{"key":"`...)
			r = base64.StdEncoding.AppendEncode(r, append([]byte(benchEtcdPrefix), p[idAt:idAt+benchIDLen]...))
			r = append(r, `","value":"`...)
			r = base64.StdEncoding.AppendEncode(r, p)
			r = append(r, `"}}`...)
		}
		r = append(r, `]}`...)
		req := h1Request{method: "POST", path: "/v3/kv/txn", contentType: "application/json", body: r}
		return b.do(ctx, target, &req, body, http.StatusOK)
	}
	r := make([]byte, 0, n*int64(b.cfg.size+1))
	for j := int64(0); j < n; j++ {
		r = append(r, b.payload(num, seq*n+j)...)
		r = append(r, '\n')
	}
	req := h1Request{method: "POST", path: "/v1/log", contentType: "application/x-ndjson", body: r}
	if b.cfg.idempotent {
		req.headerName, req.headerValue = "Idempotency-Key", string(r[idAt:idAt+benchIDLen])
	}
	return b.do(ctx, target, &req, body, http.StatusCreated, http.StatusOK)
}

// etcdPut writes key (under benchEtcdPrefix) = value through etcd's JSON
// gateway, which wants both base64-encoded.
func (b *benchRun) etcdPut(ctx context.Context, body *[]byte, target string, id, value []byte) error {
	r := make([]byte, 0, 32+base64.StdEncoding.EncodedLen(len(benchEtcdPrefix)+len(id))+base64.StdEncoding.EncodedLen(len(value)))
	r = append(r, `{"key":"`...)
	r = base64.StdEncoding.AppendEncode(r, append([]byte(benchEtcdPrefix), id...))
	r = append(r, `","value":"`...)
	r = base64.StdEncoding.AppendEncode(r, value)
	r = append(r, `"}`...)
	req := h1Request{method: "POST", path: "/v3/kv/put", contentType: "application/json", body: r}
	return b.do(ctx, target, &req, body, http.StatusOK)
}

// readOp is one linearizable read: the log's newest entry on paxoslog,
// the client's own key on etcd.
func (b *benchRun) readOp(ctx context.Context, c *benchClient, target string) error {
	var req h1Request
	if b.cfg.system == "etcd" {
		req = h1Request{method: "POST", path: "/v3/kv/range", contentType: "application/json", body: b.etcdReads[c.num]}
	} else {
		req = h1Request{method: "GET", path: "/v1/log?limit=1&from=" + strconv.FormatUint(max(c.recent, 1), 10)}
	}
	if err := b.do(ctx, target, &req, &c.body, http.StatusOK); err != nil {
		return err
	}
	if b.cfg.system == "paxoslog" {
		var r struct {
			Last uint64 `json:"last"`
		}
		if json.Unmarshal(c.body, &r) == nil && r.Last > 0 {
			c.recent = r.Last
		}
	}
	return nil
}

// lastIndex asks target for the log's last index.
func (b *benchRun) lastIndex(ctx context.Context, target string) (uint64, error) {
	var body []byte
	if err := b.do(ctx, target, &h1Request{method: "GET", path: "/v1/status"}, &body, http.StatusOK); err != nil {
		return 0, fmt.Errorf("status from %s: %w", target, err)
	}
	var st struct {
		Last uint64 `json:"last"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, fmt.Errorf("status from %s: %w", target, err)
	}
	return st.Last, nil
}

// setup prepares what the workload needs before the clock starts: a
// non-empty log or the keys to read, and the open feeds.
func (b *benchRun) setup(ctx context.Context, clients []*benchClient) error {
	target := b.cfg.targets[0]
	switch {
	case b.cfg.workload == "read" && b.cfg.system == "etcd":
		b.etcdReads = make([][]byte, len(clients))
		var body []byte
		for i, c := range clients {
			id := b.opID(nil, c.num, 0)
			if err := b.etcdPut(ctx, &body, target, id, b.payload(c.num, 0)); err != nil {
				return fmt.Errorf("writing the key to read to %s: %w", target, err)
			}
			key := base64.StdEncoding.EncodeToString(append([]byte(benchEtcdPrefix), id...))
			b.etcdReads[i] = fmt.Appendf(nil, `{"key":%q,"serializable":false}`, key)
		}
	case b.cfg.workload == "read":
		last, err := b.lastIndex(ctx, target)
		if err != nil {
			return err
		}
		if last == 0 {
			var body []byte
			if err := b.appendOp(ctx, &body, target, 0, 0); err != nil {
				return fmt.Errorf("seeding an empty log at %s: %w", target, err)
			}
			last = 1
		}
		for _, c := range clients {
			c.recent = last
		}
	case b.cfg.workload == "feed":
		last, err := b.lastIndex(ctx, target)
		if err != nil {
			return err
		}
		b.sentAt = make([]atomic.Int64, benchRingSize)
		for _, c := range clients {
			if c.stream, err = b.openFeed(ctx, b.cfg.targets[c.num%len(b.cfg.targets)], last+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// openFeed opens GET /v1/feed?from=from as NDJSON.
func (b *benchRun) openFeed(ctx context.Context, target string, from uint64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+"/v1/feed?from="+strconv.FormatUint(from, 10), nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.stream.Do(req)
	if err != nil {
		return nil, fmt.Errorf("feed from %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("feed from %s: %w", target, &statusError{resp.StatusCode})
	}
	return resp, nil
}

// runBench runs the configured load and returns what it measured.
func runBench(ctx context.Context, cfg *benchConfig, stderr io.Writer) (*benchResult, error) {
	interrupted := ctx
	ctx, cancel := context.WithTimeout(ctx, benchMaxTime)
	defer cancel()
	b, err := newBenchRun(cfg)
	if err != nil {
		return nil, err
	}
	defer b.close()

	clients := make([]*benchClient, cfg.clients)
	for i := range clients {
		clients[i] = &benchClient{num: i, errs: map[string]int64{}}
	}
	defer func() {
		for _, c := range clients {
			if c.stream != nil {
				c.stream.Body.Close()
			}
		}
	}()
	if err := b.setup(ctx, clients); err != nil {
		return nil, err
	}

	b.start = time.Now()
	b.measureStart = b.start.Add(cfg.warmup)
	b.lastOK.Store(int64(cfg.warmup))
	if cfg.count == 0 {
		b.end = b.measureStart.Add(cfg.duration)
	}
	progressDone := make(chan struct{})
	var progress sync.WaitGroup
	progress.Add(1)
	go func() { defer progress.Done(); b.progress(stderr, progressDone) }()

	var wg sync.WaitGroup
	if cfg.workload == "feed" {
		actx, stopAppends := context.WithCancel(ctx)
		defer stopAppends()
		wg.Add(1)
		go func() { defer wg.Done(); b.appendAtRate(actx) }()
		var feeds sync.WaitGroup
		for _, c := range clients {
			feeds.Add(1)
			go func() { defer feeds.Done(); b.feedClient(ctx, c) }()
		}
		feeds.Wait()
		stopAppends() // count mode: enough deliveries; duration mode: already done
	} else {
		for _, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); b.loadClient(ctx, c) }()
		}
	}
	wg.Wait()
	finished := time.Now()
	close(progressDone)
	progress.Wait()

	elapsed := finished.Sub(b.measureStart)
	if !b.end.IsZero() && finished.After(b.end) {
		elapsed = b.end.Sub(b.measureStart)
	}
	res := &benchResult{
		Workload: cfg.workload, System: cfg.system, Clients: cfg.clients, Targets: cfg.targets,
		Size: cfg.size, DurationS: math.Round(max(elapsed.Seconds(), 0)*1000) / 1000,
		ErrorsByKind: map[string]int64{},
		Interrupted:  interrupted.Err() != nil,
		Capped:       interrupted.Err() == nil && (ctx.Err() != nil || b.claimed.Load() > benchMaxOps),
	}
	var h benchHistogram
	for _, c := range clients {
		h.merge(&c.hist)
		for k, n := range c.errs {
			res.ErrorsByKind[k] += n
		}
	}
	if cfg.workload == "feed" {
		res.Rate, res.Appends = cfg.rate, b.appends.Load()
		for k, n := range b.appendErrs {
			res.ErrorsByKind[k] += n
		}
	}
	for _, n := range res.ErrorsByKind {
		res.Errors += n
	}
	res.Ops = int64(h.n)
	res.Batch = cfg.batch
	if elapsed > 0 {
		res.OpsPerS = math.Round(float64(res.Ops)/elapsed.Seconds()*10) / 10
		res.EntriesPerS = math.Round(float64(res.Ops)*float64(cfg.batch)/elapsed.Seconds()*10) / 10
	}
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	res.P50, res.P90, res.P99, res.Max = ms(h.quantile(0.50)), ms(h.quantile(0.90)), ms(h.quantile(0.99)), ms(time.Duration(h.max))
	if cfg.workload != "feed" && res.Ops > 0 {
		res.MaxGap = ms(time.Duration(b.maxGap.Load()))
	}
	return res, nil
}

// claim decides whether an op starting at now is measured and whether the
// client should stop instead: past the end, or past --count (or
// benchMaxOps) measured ops.
func (b *benchRun) claim(now time.Time) (measured, stop bool) {
	if now.Before(b.measureStart) {
		return false, false
	}
	if !b.end.IsZero() && !now.Before(b.end) {
		return true, true
	}
	return true, b.claimed.Add(1) > b.limit
}

// loadClient runs append or read ops back to back until the run ends.
func (b *benchRun) loadClient(ctx context.Context, c *benchClient) {
	targets := b.cfg.targets
	for k := c.num; ; k++ {
		now := time.Now()
		measured, stop := b.claim(now)
		if stop || ctx.Err() != nil {
			return
		}
		target := targets[k%len(targets)]
		var err error
		if b.cfg.workload == "read" {
			err = b.readOp(ctx, c, target)
		} else {
			err = b.appendOp(ctx, &c.body, target, c.num, c.seq)
		}
		c.seq++
		done := time.Now()
		if ctx.Err() != nil {
			return // cut short by the cap or a signal: not a result
		}
		if err != nil {
			if measured {
				c.errs[errorKind(err)]++
				b.errs.Add(1)
			}
			var se *statusError
			if !errors.As(err, &se) {
				pause(ctx, 10*time.Millisecond) // don't spin on a dead target
			}
			continue
		}
		if measured {
			c.hist.record(done.Sub(now))
			b.ops.Add(1)
			b.noteSuccess(done)
		}
	}
}

// noteSuccess records that an op succeeded at t, for the longest gap.
func (b *benchRun) noteSuccess(t time.Time) {
	at := max(int64(t.Sub(b.start)), int64(b.measureStart.Sub(b.start)))
	for {
		prev := b.lastOK.Load()
		if at <= prev {
			return
		}
		if b.lastOK.CompareAndSwap(prev, at) {
			for gap := at - prev; ; {
				old := b.maxGap.Load()
				if gap <= old || b.maxGap.CompareAndSwap(old, gap) {
					return
				}
			}
		}
	}
}

// pause waits for d or the end of ctx.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// appendAtRate is the feed workload's writer: it hands append seq 0, 1, ...
// to benchAppenders workers at --rate per second, without bursts to catch
// up, until the end of the run (duration mode) or ctx (count mode), then
// publishes lastAcked and closes appendDone.
func (b *benchRun) appendAtRate(ctx context.Context) {
	defer close(b.appendDone)
	jobs := make(chan int64)
	var wg sync.WaitGroup
	for range benchAppenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body []byte
			for seq := range jobs {
				b.appendOne(ctx, &body, seq)
			}
		}()
	}
	interval := time.Duration(float64(time.Second) / b.cfg.rate)
	t := time.NewTimer(0)
	defer t.Stop()
	next := time.Now()
loop:
	for seq := int64(0); ; seq++ {
		if d := time.Until(next); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				break loop
			}
		}
		if !b.end.IsZero() && !time.Now().Before(b.end) {
			break
		}
		select {
		case jobs <- seq:
			b.appendSeq.Store(seq + 1)
		case <-ctx.Done():
			break loop
		}
		next = next.Add(interval)
		if now := time.Now(); now.Sub(next) > benchMaxCatchUp {
			next = now // far behind (workers busy): keep the rate, don't burst
		}
	}
	close(jobs)
	wg.Wait()
	b.lastAcked = b.ackedIndex.Load()
}

// appendOne sends feed append seq and notes when it was sent and whether
// it was acknowledged.
func (b *benchRun) appendOne(ctx context.Context, body *[]byte, seq int64) {
	sent := time.Now()
	b.sentAt[seq%benchRingSize].Store(int64(sent.Sub(b.start)))
	target := b.cfg.targets[int(seq%int64(len(b.cfg.targets)))]
	err := b.appendOp(ctx, body, target, benchAppenderClient, seq)
	if ctx.Err() != nil {
		return
	}
	measured := !sent.Before(b.measureStart)
	if err != nil {
		if measured {
			b.appendMu.Lock()
			b.appendErrs[errorKind(err)]++
			b.appendMu.Unlock()
			b.errs.Add(1)
		}
		return
	}
	if measured {
		b.appends.Add(1)
	}
	i, ok := benchLineIndex(*body) // {"index":i}
	for ok {
		m := b.ackedIndex.Load()
		if i <= m || b.ackedIndex.CompareAndSwap(m, i) {
			return
		}
	}
}

// feedClient reads its feed and times each of this run's appends from
// send to delivery. Duration mode: it stops once it has read past the log
// index of every acknowledged append (or benchFeedDrain after the appends
// ended, which counts a timeout). Count mode: once --count deliveries are
// claimed. A cut stream counts an error and is reopened after the last
// index read.
func (b *benchRun) feedClient(ctx context.Context, c *benchClient) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var seen atomic.Uint64 // the last log index read
	var drainTimedOut atomic.Bool
	var watcher sync.WaitGroup
	watcher.Add(1)
	go func() {
		defer watcher.Done()
		select {
		case <-b.appendDone:
		case <-rctx.Done():
			return
		}
		if seen.Load() >= b.lastAcked {
			cancel()
			return
		}
		t := time.NewTimer(benchFeedDrain)
		defer t.Stop()
		select {
		case <-t.C:
			drainTimedOut.Store(true)
			cancel()
		case <-rctx.Done():
		}
	}()
	defer watcher.Wait()
	defer cancel()

	target := b.cfg.targets[c.num%len(b.cfg.targets)]
	prefix := fmt.Appendf(nil, `"k":"%s-%04d-`, b.runID, benchAppenderClient)
	resp := c.stream
	c.stream = nil
	for {
		if resp == nil {
			var err error
			if resp, err = b.openFeed(rctx, target, seen.Load()+1); err != nil {
				if rctx.Err() != nil {
					break
				}
				b.feedError(c, err)
				pause(rctx, 100*time.Millisecond)
				continue
			}
		}
		// Closing the body is what unblocks a read when rctx ends.
		body := resp.Body
		resp = nil
		stop := context.AfterFunc(rctx, func() { body.Close() })
		done, err := b.readFeed(c, body, prefix, &seen)
		stop()
		body.Close()
		if done || rctx.Err() != nil {
			break
		}
		b.feedError(c, err)
	}
	if drainTimedOut.Load() && ctx.Err() == nil {
		c.errs["timeout"]++
		b.errs.Add(1)
	}
}

// readFeed reads NDJSON lines until it is done (count reached, or read
// past every acknowledged append) or the stream fails. seen is the last
// index read.
func (b *benchRun) readFeed(c *benchClient, body io.Reader, prefix []byte, seen *atomic.Uint64) (done bool, err error) {
	r := bufio.NewReaderSize(body, b.cfg.size+4096)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return false, err
		}
		now := time.Now()
		if i, ok := benchLineIndex(line); ok {
			seen.Store(i)
		}
		if k := bytes.Index(line, prefix); k >= 0 && len(line) >= k+len(prefix)+10 {
			// One of this run's appends: time it.
			seq, err := strconv.ParseInt(string(line[k+len(prefix):k+len(prefix)+10]), 10, 64)
			switch {
			case err != nil:
			case b.appendSeq.Load()-seq >= benchRingSize/2:
				b.feedError(c, errors.New("feed fell too far behind to time"))
			default:
				sent := b.start.Add(time.Duration(b.sentAt[seq%benchRingSize].Load()))
				if sent.Before(b.measureStart) {
					break // sent during warmup
				}
				if b.claimed.Add(1) > b.limit {
					return true, nil
				}
				c.hist.record(now.Sub(sent))
				b.ops.Add(1)
			}
		}
		select {
		case <-b.appendDone:
			if seen.Load() >= b.lastAcked {
				return true, nil
			}
		default:
		}
	}
}

// benchLineIndex reads the index off a feed line {"index":N,...}.
func benchLineIndex(line []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"index":`))
	if !ok {
		return 0, false
	}
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	i, err := strconv.ParseUint(string(rest[:n]), 10, 64)
	return i, err == nil
}

// feedError counts a feed failure, if the run is measuring.
func (b *benchRun) feedError(c *benchClient, err error) {
	if time.Now().Before(b.measureStart) {
		return
	}
	c.errs[errorKind(err)]++
	b.errs.Add(1)
}

// progress writes one line a second to w until done: rewritten in place
// with \r on a terminal, one line each otherwise. Once measuring, the
// lines fall on whole seconds after measureStart.
func (b *benchRun) progress(w io.Writer, done <-chan struct{}) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	next := b.start
	advance := func() {
		warm := next.Before(b.measureStart)
		next = next.Add(time.Second)
		if warm && !next.Before(b.measureStart) {
			next = b.measureStart.Add(time.Second)
		}
	}
	advance()
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	var prev int64
	for {
		select {
		case <-done:
			if tty {
				fmt.Fprintln(w)
			}
			return
		case now := <-t.C:
			ops := b.ops.Load()
			var line string
			if now.Before(b.measureStart) {
				line = fmt.Sprintf("bench: warming up, %.1fs left", b.measureStart.Sub(now).Seconds())
			} else {
				line = fmt.Sprintf("bench: %4.0fs  ops %9d  ops/s %8d  errors %d",
					now.Sub(b.measureStart).Seconds(), ops, ops-prev, b.errs.Load())
			}
			prev = ops
			if tty {
				fmt.Fprintf(w, "\r%-70s", line)
			} else {
				fmt.Fprintln(w, line)
			}
			advance()
			t.Reset(time.Until(next))
		}
	}
}
