package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// peerServer is a plain net/http server on loopback that counts the
// connections it accepted and echoes what a peer call sent.
type peerServer struct {
	ln    net.Listener
	srv   *http.Server
	conns atomic.Int64
	block chan struct{} // non-nil: /paxos/slow waits on it
}

func startPeerServer(t *testing.T, addr string) *peerServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ps := &peerServer{ln: ln, block: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /base/paxos/{method}", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.PathValue("method") {
		case "slow":
			select {
			case <-ps.block:
			case <-r.Context().Done():
			}
		case "fail":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":"not now"}`)
			return
		}
		fmt.Fprintf(w, "%s|%s|%s|%s", r.PathValue("method"), r.Header.Get("Content-Type"), r.Header.Get(peerKeyHeader), body)
	})
	ps.srv = &http.Server{Handler: mux, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			ps.conns.Add(1)
		}
	}}
	go ps.srv.Serve(ln)
	t.Cleanup(func() { ps.srv.Close() })
	return ps
}

func TestPeerTransportReusesConnections(t *testing.T) {
	ps := startPeerServer(t, "127.0.0.1:0")
	tr := newHTTPTransport(map[NodeID]string{2: "http://" + ps.ln.Addr().String() + "/base/"}, "sekrit")
	defer tr.closeIdle()
	if tr.set.Load().pools[2] == nil {
		t.Fatal("no connection pool for a plain http peer")
	}
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		body := fmt.Sprintf(`{"n":%d}`, i)
		out, err := tr.Call(ctx, 2, "learn", []byte(body))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		want := "learn|application/json|Bearer sekrit|" + body
		if string(out) != want {
			t.Fatalf("call %d: answer %q, want %q", i, out, want)
		}
	}
	// This server does not take peer streams (as a node before them): one
	// connection for the refused upgrade, one for all the plain requests.
	if n := ps.conns.Load(); n != 2 {
		t.Errorf("100 sequential calls used %d connections, want 2", n)
	}
	if tr.set.Load().pools[2].streams.on() {
		t.Error("streams still on for a peer that refused the upgrade")
	}
	// After streamRetry the next call asks again (one more connection),
	// and is answered all the same.
	tr.set.Load().pools[2].streams.offUntil.Store(time.Now().UnixNano())
	if out, err := tr.Call(ctx, 2, "learn", []byte(`{}`)); err != nil || !strings.HasPrefix(string(out), "learn|") {
		t.Fatalf("call after the retry period: %q, %v", out, err)
	}
	if n := ps.conns.Load(); n != 3 || tr.set.Load().pools[2].streams.on() {
		t.Errorf("after the retry period: %d connections (want 3), streams on %v (want off)", n, tr.set.Load().pools[2].streams.on())
	}
	bin, _ := AcceptReq{From: 1}.MarshalBinary()
	out, err := tr.Call(ctx, 2, "accept", bin)
	if err != nil || !strings.HasPrefix(string(out), "accept|application/octet-stream|") {
		t.Errorf("binary body: %q, %v", out, err)
	}
	if _, err := tr.Call(ctx, 2, "fail", []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "503: not now") {
		t.Errorf("a 503 answer: err %v, want one naming 503 and the message", err)
	}
	if _, err := tr.Call(ctx, 3, "learn", []byte(`{}`)); err == nil {
		t.Error("a call to an unknown node succeeded")
	}
}

// TestPeerTransportAfterPeerRestart: every pooled connection goes stale
// when the peer restarts; the next calls must still get through.
func TestPeerTransportAfterPeerRestart(t *testing.T) {
	ps := startPeerServer(t, "127.0.0.1:0")
	addr := ps.ln.Addr().String()
	tr := newHTTPTransport(map[NodeID]string{2: "http://" + addr + "/base"}, "")
	defer tr.closeIdle()
	ctx := context.Background()
	// Several calls at once leave several connections idle in the pool.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tr.Call(ctx, 2, "learn", []byte(`{}`)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	ps.srv.Close()
	ps2 := startPeerServer(t, addr)
	for i := 0; i < 10; i++ {
		if _, err := tr.Call(ctx, 2, "learn", []byte(`{}`)); err != nil {
			t.Fatalf("call %d after the peer restarted: %v", i, err)
		}
	}
	if n := ps2.conns.Load(); n != 1 {
		t.Errorf("10 calls after the restart used %d connections, want 1", n)
	}
}

// TestPeerTransportContextEndsCall: a call whose context ends while the
// peer holds the answer returns at once, and its connection is not reused
// for another call's answer.
func TestPeerTransportContextEndsCall(t *testing.T) {
	ps := startPeerServer(t, "127.0.0.1:0")
	tr := newHTTPTransport(map[NodeID]string{2: "http://" + ps.ln.Addr().String() + "/base"}, "")
	defer tr.closeIdle()
	for _, mk := range []func() (context.Context, context.CancelFunc){
		func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		},
		func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		},
	} {
		ctx, cancel := mk()
		start := time.Now()
		_, err := tr.Call(ctx, 2, "slow", []byte(`{}`))
		cancel()
		if err == nil {
			t.Fatal("a call the peer never answered succeeded")
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("call took %v after its context ended", d)
		}
		// A cut-off connection must not go back to the pool: a call on it
		// would wait behind the held request, or read its answer.
		next, cancelNext := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := tr.Call(next, 2, "learn", []byte(`{"after":1}`))
		cancelNext()
		if err != nil || string(out) != `learn|application/json||{"after":1}` {
			t.Fatalf("next call: %q, %v", out, err)
		}
	}
	close(ps.block)
}

// h1Good are responses readResponse must take, with what it must make of
// them.
var h1Good = []struct {
	name, in string
	status   int
	body     string
	keep     bool
	rest     string // what is left for the next response
}{
	{"content length", "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"index\":7}", 201, `{"index":7}`, true, ""},
	{"no reason, next response behind", "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200", 200, "ok", true, "HTTP/1.1 200"},
	{"chunked with extension and trailer", "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5;x=y\r\nhello\r\n6 \r\n world\r\n0\r\nX-Sum: 1\r\n\r\n", 200, "hello world", true, ""},
	{"chunked wins over length", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", 200, "ab", true, ""},
	{"connection close", "HTTP/1.1 503 Service Unavailable\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", 503, "", false, ""},
	{"until EOF", "HTTP/1.1 200 OK\r\n\r\nall of it", 200, "all of it", false, ""},
	{"no content", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204, "", true, ""},
	{"repeated equal length", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 200, "x", true, ""},
}

// h1Bad are responses readResponse must refuse.
var h1Bad = []struct{ name, in string }{
	{"empty", ""},
	{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"},
	{"informational", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
	{"two-digit status", "HTTP/1.1 20 OK\r\n\r\n"},
	{"status glued to reason", "HTTP/1.1 200OK\r\n\r\n"},
	{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
	{"space in name", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"},
	{"continuation line", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"},
	{"control byte in value", "HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n"},
	{"lengths differ", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"},
	{"signed length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx"},
	{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"},
	{"gzip encoding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"},
	{"two transfer encodings", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
	{"chunk without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n"},
	{"chunked cut short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"},
	{"too long", "HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n" + strings.Repeat("x", 65)},
	{"too long chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + strings.Repeat("x", 64) + "\r\n1\r\nx\r\n0\r\n\r\n"},
	{"too long until EOF", "HTTP/1.1 200 OK\r\n\r\n" + strings.Repeat("x", 65)},
	{"header line over the buffer", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("x", h1BufSize) + "\r\n\r\n"},
	{"header over its bound", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: "+strings.Repeat("x", 1000)+"\r\n", maxHeaderBytes/1000+1) + "\r\n"},
}

const h1TestMaxBody = 64

func TestReadResponse(t *testing.T) {
	for _, tc := range h1Good {
		br := bufio.NewReaderSize(strings.NewReader(tc.in), h1BufSize)
		status, body, keep, err := readResponse(br, []byte("left over"), h1TestMaxBody)
		rest, _ := io.ReadAll(br)
		if err != nil || status != tc.status || string(body) != tc.body || keep != tc.keep || string(rest) != tc.rest {
			t.Errorf("%s: got %d %q keep=%v rest %q err %v; want %d %q keep=%v rest %q",
				tc.name, status, body, keep, rest, err, tc.status, tc.body, tc.keep, tc.rest)
		}
	}
	for _, tc := range h1Bad {
		br := bufio.NewReaderSize(strings.NewReader(tc.in), h1BufSize)
		if status, body, _, err := readResponse(br, nil, h1TestMaxBody); err == nil {
			t.Errorf("%s: accepted as %d %q", tc.name, status, body)
		}
	}
}

// TestReadResponseFromNetHTTP: what a net/http server writes, small and
// large, length-framed and chunked, reads back intact.
func TestReadResponseFromNetHTTP(t *testing.T) {
	for _, size := range []int{0, 1, 100, 4000, 100_000} {
		for _, flush := range []bool{false, true} {
			out := h1Capture(t, size, flush)
			br := bufio.NewReaderSize(bytes.NewReader(out), h1BufSize)
			status, body, keep, err := readResponse(br, nil, 1<<20)
			if err != nil || status != http.StatusCreated || !keep || !bytes.Equal(body, h1Body(size)) {
				t.Errorf("size %d flush %v: %d keep=%v len %d err %v", size, flush, status, keep, len(body), err)
			}
		}
	}
}

func h1Body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

// h1Capture returns the bytes a net/http server sends for one response of
// size bytes; with flush the handler flushes before it ends (chunked).
func h1Capture(t testing.TB, size int, flush bool) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write(h1Body(size))
		if flush {
			w.(http.Flusher).Flush()
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	// Two answers: keep the first, as much as net/http reads of it.
	r := bytes.NewReader(all)
	br := bufio.NewReader(r)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	return all[:len(all)-r.Len()-br.Buffered()]
}

// FuzzReadResponse holds readResponse to net/http's parser: whatever it
// accepts, http.ReadResponse accepts too, with the same status and body,
// the same verdict on reusing the connection, and the same bytes left for
// the next response.
func FuzzReadResponse(f *testing.F) {
	for _, tc := range h1Good {
		f.Add([]byte(tc.in))
	}
	for _, tc := range h1Bad {
		f.Add([]byte(tc.in))
	}
	for _, size := range []int{3, 300} {
		f.Add(h1Capture(f, size, false))
		f.Add(h1Capture(f, size, true))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), h1BufSize)
		status, body, keep, err := readResponse(br, nil, 1<<20)
		if err != nil {
			return
		}
		rest, _ := io.ReadAll(br)
		sbr := bufio.NewReader(bytes.NewReader(in))
		resp, err := http.ReadResponse(sbr, nil)
		if err != nil {
			t.Fatalf("net/http refuses what readResponse took as %d %q: %v", status, body, err)
		}
		sbody, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("net/http cannot read the body readResponse read as %q: %v", body, err)
		}
		srest, _ := io.ReadAll(sbr)
		if resp.StatusCode != status || !bytes.Equal(sbody, body) || resp.Close == keep {
			t.Fatalf("readResponse: %d %q keep=%v; net/http: %d %q close=%v", status, body, keep, resp.StatusCode, sbody, resp.Close)
		}
		if keep && !bytes.Equal(rest, srest) {
			t.Fatalf("left for the next response: %q; net/http: %q", rest, srest)
		}
	})
}

// TestConnPoolRefusesMalformedAnswer: a server that answers something
// readResponse does not take gets an error, and its connection is not
// reused.
func TestConnPoolRefusesMalformedAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if req.URL.Path == "/bad" {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
					} else {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					}
				}
			}()
		}
	}()
	p, err := newConnPool("http://"+ln.Addr().String(), nil, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeIdle()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.do(ctx, &h1Request{method: "GET", path: "/bad"}, nil, 1<<10, true); !errors.Is(err, errMalformed) {
		t.Fatalf("malformed answer: err %v", err)
	}
	for i := 0; i < 3; i++ {
		resp, err := p.do(ctx, &h1Request{method: "POST", path: "/good", body: []byte("x")}, nil, 1<<10, false)
		if err != nil || resp.status != 200 || string(resp.body) != "ok" {
			t.Fatalf("call %d: %+v %v", i, resp, err)
		}
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("connections: %d, want 2 (the refused one closed, then one reused)", n)
	}
}
