package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cli_test.go: the command-line client against real nodes on loopback.

// cliRun is one finished run of a command.
type cliRun struct {
	code           int
	stdout, stderr string
}

// runCLI runs `paxoslog args...` with stdin and waits for it.
func runCLI(t *testing.T, stdin string, args ...string) cliRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code := cliMain(ctx, args[0], args[1:], strings.NewReader(stdin), &out, &errb)
	return cliRun{code, out.String(), errb.String()}
}

// mustCLI runs a command that must succeed and returns its stdout.
func mustCLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	r := runCLI(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("paxoslog %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

func TestCLIOneNode(t *testing.T) {
	t.Parallel()
	hc := startHTTPCluster(t, 1, "sesame", nil)
	ep := "--endpoints=" + hc.urls[1]

	if got := mustCLI(t, "", "append", ep, `{"user":"ada"}`); got != "1\n" {
		t.Errorf("append VALUE printed %q, want 1", got)
	}
	if got := mustCLI(t, "  \"from stdin\"\n", "append", ep); got != "2\n" {
		t.Errorf("append from stdin printed %q, want 2", got)
	}
	if got := mustCLI(t, "{\"b\":1}\n\n{\"b\":2}\n3\n", "append", "--batch", ep, "-"); got != "3 5\n" {
		t.Errorf("append --batch printed %q, want \"3 5\"", got)
	}
	if got := mustCLI(t, "", "append", ep, "--key", "k1", "-o", "json", `{"k":1}`); got != `{"index":6}`+"\n" {
		t.Errorf("append -o json printed %q", got)
	}
	r := runCLI(t, "", "append", ep, "--key", "k1", `{"k":1}`)
	if r.code != 0 || r.stdout != "6\n" || !strings.Contains(r.stderr, "appended before") {
		t.Errorf("repeated --key: %+v, want index 6 and a note on stderr", r)
	}

	if got := mustCLI(t, "", "get", ep, "2"); got != "\"from stdin\"\n" {
		t.Errorf("get 2 printed %q", got)
	}
	if got := mustCLI(t, "", "get", "4", ep, "-o", "json"); got != `{"index":4,"data":{"b":2}}`+"\n" {
		t.Errorf("get -o json printed %q", got)
	}
	want := "1\t{\"user\":\"ada\"}\n2\t\"from stdin\"\n3\t{\"b\":1}\n4\t{\"b\":2}\n5\t3\n6\t{\"k\":1}\n"
	if got := mustCLI(t, "", "range", ep); got != want {
		t.Errorf("range printed\n%s\nwant\n%s", got, want)
	}
	if got := mustCLI(t, "", "range", ep, "--from", "5", "-o", "json"); got != "{\"index\":5,\"data\":3}\n{\"index\":6,\"data\":{\"k\":1}}\n" {
		t.Errorf("range --from 5 -o json printed %q", got)
	}

	// A range longer than one page, and a value that spans lines (one
	// line of output all the same).
	var batch strings.Builder
	for i := range 1500 {
		fmt.Fprintf(&batch, "{\"n\":%d}\n", i)
	}
	if got := mustCLI(t, batch.String(), "append", "--batch", ep); got != "7 1506\n" {
		t.Fatalf("batch of 1500 printed %q", got)
	}
	mustCLI(t, "{\n  \"multi\": true\n}", "append", ep)
	lines := strings.Split(strings.TrimSuffix(mustCLI(t, "", "range", ep, "--from", "7", "--limit", "1501"), "\n"), "\n")
	if len(lines) != 1501 || lines[0] != "7\t{\"n\":0}" || lines[1499] != "1506\t{\"n\":1499}" || lines[1500] != "1507\t{\"multi\":true}" {
		t.Errorf("range of 1501 over two pages: %d lines, first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}

	if got := mustCLI(t, "", "tail", ep, "--from", "1505", "--count", "3"); got != "1505\t{\"n\":1498}\n1506\t{\"n\":1499}\n1507\t{\"multi\":true}\n" {
		t.Errorf("tail --from 1505 --count 3 printed %q", got)
	}
	if got := mustCLI(t, "", "tail", ep, "--from", "1", "--match", "b==2", "--count", "1", "-o", "json"); got != `{"index":4,"data":{"b":2}}`+"\n" {
		t.Errorf("tail --match printed %q", got)
	}

	st := mustCLI(t, "", "status", ep)
	if !strings.Contains(st, "ENDPOINT") || !strings.Contains(st, hc.urls[1]) || !strings.Contains(st, "leader") || !strings.Contains(st, " 1507 ") {
		t.Errorf("status printed\n%s", st)
	}
	if got := mustCLI(t, "", "status", ep, "-o", "json"); !strings.HasPrefix(got, `{"id":1,`) || !strings.Contains(got, `"last":1507`) {
		t.Errorf("status -o json printed %q", got)
	}

	if got := mustCLI(t, "", "members", ep); !strings.Contains(got, "1   "+hc.urls[1]+"  true   *") {
		t.Errorf("members printed\n%s", got)
	}
	// A member that never comes up costs a one-node cluster nothing: it
	// is a non-voter until it has caught up.
	added := mustCLI(t, "", "members", "add", "2", "http://127.0.0.1:9", ep, "--cluster-key", "sesame")
	if !strings.Contains(added, "2   http://127.0.0.1:9") || !strings.Contains(added, "false") {
		t.Errorf("members add printed\n%s", added)
	}
	if got := mustCLI(t, "", "members", "remove", "2", ep, "--cluster-key", "sesame", "-o", "json"); strings.Contains(got, `"id":2`) || !strings.Contains(got, `"id":1`) {
		t.Errorf("members remove printed %q", got)
	}
}

// TestCLIRefusals: a bad command line exits 2 and sends nothing; a
// node's refusal exits 1 with its message; either way one line on
// stderr and the log is unchanged.
func TestCLIRefusals(t *testing.T) {
	t.Parallel()
	hc := startHTTPCluster(t, 1, "sesame", nil)
	ep := "--endpoints=" + hc.urls[1]
	mustCLI(t, "", "append", ep, "1")

	for _, c := range []struct {
		code int
		args []string
		want string
	}{
		{2, []string{"append", ep, "hello"}, "not exactly one valid JSON value"},
		{2, []string{"append", ep, "1", "2"}, "append takes one value"},
		{2, []string{"append", ep, "--batch", `{"a":1}`}, "--batch reads its lines from stdin"},
		{2, []string{"get", ep, "0"}, `the index must be a positive integer, got "0"`},
		{2, []string{"get", ep}, "get takes one index"},
		{2, []string{"range", ep, "--limit", "0"}, "--limit must be positive"},
		{2, []string{"range", ep, "--from", "x"}, `--from must be a positive integer, got "x"`},
		{2, []string{"tail", ep, "--count", "-1"}, "--count must not be negative"},
		{2, []string{"status", ep, "-o", "yaml"}, `-o must be text or json, got "yaml"`},
		{2, []string{"status", "--endpoints", "ftp://x"}, "must look like http://host:port"},
		{2, []string{"status", ep, "--bogus"}, "flag provided but not defined: -bogus"},
		{2, []string{"members", "add", "2", "http://127.0.0.1:9", ep}, "members add needs the cluster key"},
		{2, []string{"members", "add", "x", "http://127.0.0.1:9", ep, "--cluster-key", "k"}, "a member id is an integer"},
		{2, []string{"members", "kick", "2", ep}, "usage: paxoslog members"},
		{2, []string{"status", ep, "--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{1, []string{"get", ep, "5"}, "404 Not Found: index is past the end of the log"},
		{2, []string{"tail", ep, "--from", "1", "--match", "(("}, "--match: match"},
		{1, []string{"members", "remove", "9", ep, "--cluster-key", "sesame"}, "404 Not Found: node 9 is not a member"},
		{1, []string{"members", "remove", "1", ep, "--cluster-key", "wrong"}, "401 Unauthorized: missing or wrong cluster key"},
	} {
		r := runCLI(t, "{\"a\":1}\n", c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
			t.Errorf("paxoslog %s: exit %d, stdout %q, stderr %q; want exit %d and one line with %q",
				strings.Join(c.args, " "), r.code, r.stdout, r.stderr, c.code, c.want)
		}
	}
	if got := mustCLI(t, "", "range", ep, "-o", "json"); got != `{"index":1,"data":1}`+"\n" {
		t.Errorf("after the refusals the log is %q, want the one entry", got)
	}
}

// TestCLIEndpointsInTurn: a dead endpoint first in the list costs a
// retry, not a failure; with every endpoint dead the command gives up
// after --timeout, naming the last error.
func TestCLIEndpointsInTurn(t *testing.T) {
	hc := startHTTPCluster(t, 1, "", nil)
	dead := "http://127.0.0.1:9" // the discard port: nothing listens
	t.Setenv("PAXOSLOG_ENDPOINTS", dead+","+hc.urls[1])
	if got := mustCLI(t, "", "append", `"via env"`); got != "1\n" {
		t.Errorf("append through PAXOSLOG_ENDPOINTS printed %q", got)
	}
	start := time.Now()
	r := runCLI(t, "", "get", "1", "--endpoints", dead, "--timeout", "300ms")
	if r.code != 1 || !strings.Contains(r.stderr, "no endpoint answered within --timeout 300ms") || !strings.Contains(r.stderr, "refused") {
		t.Errorf("every endpoint dead: %+v", r)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("--timeout 300ms gave up after %v", took)
	}
}

// TestCLITailResumesAcrossFailure: tail follows the feed of one node of
// three; that node goes down mid-stream; tail goes on from the next
// endpoint and prints every entry exactly once, in order.
func TestCLITailResumesAcrossFailure(t *testing.T) {
	t.Parallel()
	hc := startHTTPCluster(t, 3, "", nil)
	eps := "--endpoints=" + hc.urls[1] + "," + hc.urls[2] + "," + hc.urls[3]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- cliMain(ctx, "tail", []string{eps, "--from", "1", "--count", "30"}, strings.NewReader(""), &out, &errb)
	}()
	for i := 1; i <= 10; i++ {
		mustCLI(t, "", "append", eps, fmt.Sprintf(`{"n":%d}`, i))
	}
	waitFor(t, 20*time.Second, "tail printing the first 10", func() bool { return strings.Count(out.String(), "\n") >= 10 })
	hc.stop(1) // the node tail is connected to: the first endpoint
	for i := 11; i <= 30; i++ {
		mustCLI(t, "", "append", eps, fmt.Sprintf(`{"n":%d}`, i))
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("tail exit %d, stderr %q", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("tail did not print 30 entries; printed\n%s\nstderr %s", out.String(), errb.String())
	}
	var want strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&want, "%d\t{\"n\":%d}\n", i, i)
	}
	if out.String() != want.String() {
		t.Errorf("tail printed\n%s\nwant\n%s", out.String(), want.String())
	}
	if !strings.Contains(errb.String(), "resuming at index 11 on "+hc.urls[2]) {
		t.Errorf("tail's stderr %q does not say where it resumed", errb.String())
	}
}

// TestMainRunsCLI: Main hands a command name to the client.
func TestMainRunsCLI(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	if code := Main(context.Background(), []string{"get", "--endpoints", "http://127.0.0.1:9", "zero"}, &stderr); code != 2 {
		t.Errorf("Main(get zero) = %d, stderr %q; want 2", code, stderr.String())
	}
	stderr.Reset()
	if code := Main(context.Background(), []string{"--help"}, &stderr); code != 0 || !strings.Contains(stderr.String(), "paxoslog tail") {
		t.Errorf("--help does not list the commands:\n%s", stderr.String())
	}
}

// TestCLIOverTLS: with --tls-ca the client trusts the nodes' CA; without
// it the system roots refuse their certificates, and it says so.
func TestCLIOverTLS(t *testing.T) {
	t.Parallel()
	tc := startTLSCluster(t, 1, "")
	ep := "--endpoints=" + tc.urls[1]
	if got := mustCLI(t, "", "append", ep, "--tls-ca", tc.ca.file, `"over tls"`); got != "1\n" {
		t.Errorf("append over TLS printed %q", got)
	}
	r := runCLI(t, "", "get", "1", ep, "--timeout", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("without --tls-ca: %+v, want exit 1 naming the certificate", r)
	}
	if r := runCLI(t, "", "get", "1", ep, "--tls-ca", "/nonexistent/ca.pem"); r.code != 2 || !strings.Contains(r.stderr, "--tls-ca /nonexistent/ca.pem: cannot read it") {
		t.Errorf("unreadable --tls-ca: %+v", r)
	}
}

// TestCLIMembersAfterLostAnswer: a fake node makes the change, then
// drops the connection without answering; the retry gets 409. The
// command sees the change in the membership, which it was not in before,
// and succeeds. A 409 for a member that was there before stays an error.
func TestCLIMembersAfterLostAnswer(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	members := `{"members":[{"id":1,"url":"http://127.0.0.1:7071","voter":true}],"leader":1}`
	posts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/v1/members":
			io.WriteString(w, members)
		case r.Method == http.MethodPost && r.URL.Path == "/v1/admin/members":
			posts++
			if posts == 1 { // made, but the answer is lost
				members = `{"members":[{"id":1,"url":"http://127.0.0.1:7071","voter":true},{"id":4,"url":"http://127.0.0.1:7074","voter":false}],"leader":1}`
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return
			}
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"error":"node 4 is a member already"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	out := mustCLI(t, "", "members", "add", "4", "http://127.0.0.1:7074", "--endpoints", srv.URL, "--cluster-key", "k")
	mu.Lock()
	n := posts
	mu.Unlock()
	if !strings.Contains(out, "4   http://127.0.0.1:7074  false") || n != 2 {
		t.Errorf("after a lost answer and a 409: %d posts, printed\n%s", n, out)
	}
	r := runCLI(t, "", "members", "add", "4", "http://127.0.0.1:7074", "--endpoints", srv.URL, "--cluster-key", "k")
	if r.code != 1 || !strings.Contains(r.stderr, "409 Conflict: node 4 is a member already") {
		t.Errorf("adding a member that was one before: %+v, want the 409", r)
	}
}

// TestCLIStuckNodes: a node that takes connections and never answers,
// one whose feed goes silent, and one that opens feeds and ends them at
// once. The first costs a try (then the next endpoint answers); the
// second a reconnect; the third makes tail give up after --timeout
// rather than spin. (Not parallel: it shortens tryLimit and feedSilence.)
func TestCLIStuckNodes(t *testing.T) {
	defer func(a, b time.Duration) { tryLimit, feedSilence = a, b }(tryLimit, feedSilence)
	tryLimit, feedSilence = 300*time.Millisecond, 300*time.Millisecond
	hc := startHTTPCluster(t, 1, "", nil)
	mustCLI(t, "", "append", "--endpoints", hc.urls[1], `"one"`)

	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	eps := "--endpoints=http://" + hung.Addr().String() + "," + hc.urls[1]
	if got := mustCLI(t, "", "get", "1", eps); got != "\"one\"\n" {
		t.Errorf("get past a hung endpoint printed %q", got)
	}

	// A feed that says 200 and then nothing at all, not even a ping.
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer silent.Close()
	r := runCLI(t, "", "tail", "--endpoints", silent.URL+","+hc.urls[1], "--from", "1", "--count", "1")
	if r.code != 0 || r.stdout != "1\t\"one\"\n" || !strings.Contains(r.stderr, "not even a heartbeat") {
		t.Errorf("tail past a silent feed: %+v", r)
	}

	// A node that opens every feed and ends it at once (as a removed one
	// does).
	var opens atomic.Int64
	ending := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		opens.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
	}))
	defer ending.Close()
	r = runCLI(t, "", "tail", "--endpoints", ending.URL, "--from", "1", "--timeout", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "no endpoint served the feed within --timeout 1s") {
		t.Errorf("tail on a node that ends every feed: %+v", r)
	}
	if n := opens.Load(); n > 50 {
		t.Errorf("tail opened the feed %d times in a second: it should back off", n)
	}
}

func TestParseInterleaved(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string // the key flag, then the positional arguments
	}{
		{[]string{"get", "5", "-o", "json"}, "|get 5"},
		{[]string{"--key", "k", "--", "-1"}, "k|-1"},
		{[]string{"--key", "--", `"x"`}, `--|"x"`},
		{[]string{"--batch", "--", "-", "--key", "k"}, "|- --key k"},
		{[]string{"-", "--key=k"}, "k|-"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		key := fs.String("key", "", "")
		fs.Bool("batch", false, "")
		fs.String("o", "", "")
		pos, err := parseInterleaved(fs, c.args)
		if got := *key + "|" + strings.Join(pos, " "); err != nil || got != c.want {
			t.Errorf("parseInterleaved(%q) = %q, %v; want %q", c.args, got, err, c.want)
		}
	}
}
