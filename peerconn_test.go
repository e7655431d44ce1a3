package main

import (
	"context"
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
	if tr.pools[2] == nil {
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
	if n := ps.conns.Load(); n != 1 {
		t.Errorf("100 sequential calls used %d connections, want 1", n)
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
