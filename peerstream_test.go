package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPeerStreamFrames: frames read back as written; a truncated frame,
// an empty method and a length over the limit are errors, not guesses.
func TestPeerStreamFrames(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	bodies := [][]byte{nil, []byte(`{"a":1}`), bytes.Repeat([]byte{0, 1, 2}, 70000)}
	for i, b := range bodies {
		if err := writeStreamRequest(w, fmt.Sprint("m", i), b); err != nil {
			t.Fatal(err)
		}
		if err := writeStreamAnswer(w, 200+i, b); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(bytes.NewReader(buf.Bytes()))
	for i, b := range bodies {
		m, got, err := readStreamRequest(r)
		if err != nil || m != fmt.Sprint("m", i) || !bytes.Equal(got, b) {
			t.Fatalf("request %d: %q, %d bytes, %v", i, m, len(got), err)
		}
		status, got, err := readStreamAnswer(r)
		if err != nil || status != 200+i || !bytes.Equal(got, b) {
			t.Fatalf("answer %d: %d, %d bytes, %v", i, status, len(got), err)
		}
	}
	if _, _, err := readStreamRequest(r); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}

	if err := writeStreamRequest(w, "", nil); err == nil {
		t.Error("wrote a request without a method")
	}
	if err := writeStreamRequest(w, "accept", make([]byte, maxPeerBody+1)); err == nil {
		t.Error("wrote a body over the limit")
	}
	whole := func() []byte {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		writeStreamRequest(bw, "accept", []byte("0123456789"))
		return b.Bytes()
	}()
	big := func() []byte {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		writeStreamRequest(bw, "accept", bytes.Repeat([]byte("x"), 100<<10))
		return b.Bytes()
	}()
	for _, cut := range []int{len(big) - 1, len(big) / 2, 12} {
		if _, _, err := readStreamRequest(bufio.NewReader(bytes.NewReader(big[:cut]))); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("large request cut after %d of %d bytes: %v, want io.ErrUnexpectedEOF", cut, len(big), err)
		}
	}
	for cut := 1; cut < len(whole); cut++ {
		_, _, err := readStreamRequest(bufio.NewReader(bytes.NewReader(whole[:cut])))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("request cut after %d of %d bytes: %v, want io.ErrUnexpectedEOF", cut, len(whole), err)
		}
	}
	bad := map[string][]byte{
		"empty method":  {0, 0, 0, 0, 0},
		"huge body":     append([]byte{1, 'a'}, 0xff, 0xff, 0xff, 0xff),
		"status 0":      {0, 0, 0, 0, 0, 0},
		"answer > max":  {0, 200, 0xff, 0xff, 0xff, 0xff},
		"answer cut":    {0, 200, 0, 0, 0, 9, 'x'},
		"status 65535!": {0xff, 0xff, 0, 0, 0, 0},
	}
	for name, frame := range bad {
		var err error
		if strings.HasPrefix(name, "empty") || strings.HasPrefix(name, "huge") {
			_, _, err = readStreamRequest(bufio.NewReader(bytes.NewReader(frame)))
		} else {
			_, _, err = readStreamAnswer(bufio.NewReader(bytes.NewReader(frame)))
		}
		if err == nil {
			t.Errorf("%s: read without an error", name)
		}
	}
}

// TestPeerStreamCarriesClusterTraffic: nodes behind real HTTP servers
// talk over peer streams (no plain request is needed), and the stream
// endpoint checks what every peer endpoint checks.
func TestPeerStreamCarriesClusterTraffic(t *testing.T) {
	hc := startHTTPCluster(t, 3, "sekrit", nil)
	leader := waitHTTPLeader(t, hc, 5*time.Second)
	for i := range 20 {
		if r := do(t, "POST", hc.urls[leader]+"/v1/log", fmt.Sprintf(`{"n":%d}`, i), nil); r.code != http.StatusCreated {
			t.Fatalf("append %d: %d %s", i, r.code, r.raw)
		}
	}
	checkStreamsOnly(t, hc.trs)
	pool := hc.trs[leader].set.Load().pools[otherThan(leader)].streams
	waitFor(t, 5*time.Second, "an idle stream from the leader to a follower", func() bool {
		pool.mu.Lock()
		defer pool.mu.Unlock()
		return len(pool.idle) > 0 // none while a call is on each
	})

	addr := strings.TrimPrefix(hc.urls[otherThan(leader)], "http://")
	upgrade := func(auth, upgradeTo string) (net.Conn, *bufio.Reader, int) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /paxos/stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: %s\r\n", upgradeTo)
		if auth != "" {
			fmt.Fprintf(c, "Authorization: Bearer %s\r\n", auth)
		}
		io.WriteString(c, "\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c, br, resp.StatusCode
	}
	if _, _, code := upgrade("", peerStreamProto); code != http.StatusUnauthorized {
		t.Errorf("upgrade without the key: %d, want 401", code)
	}
	if _, _, code := upgrade("wrong", peerStreamProto); code != http.StatusUnauthorized {
		t.Errorf("upgrade with a wrong key: %d, want 401", code)
	}
	if _, _, code := upgrade("sekrit", "websocket"); code != http.StatusBadRequest {
		t.Errorf("upgrade to another protocol: %d, want 400", code)
	}
	c, br, code := upgrade("sekrit", peerStreamProto)
	if code != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade with the key: %d, want 101", code)
	}
	bw := bufio.NewWriter(c)
	writeStreamRequest(bw, "nosuch", []byte(`{}`))
	if status, body, err := readStreamAnswer(br); err != nil || status != http.StatusNotFound || !strings.Contains(string(body), `"error"`) {
		t.Errorf("unknown method: %d %s %v, want 404 with an error body", status, body, err)
	}
	writeStreamRequest(bw, methodLearn, []byte(`{"From":9,"Ballot":{"Round":0,"Node":0},"Commit":0}`))
	if status, body, err := readStreamAnswer(br); err != nil || status != http.StatusOK {
		t.Errorf("learn: %d %s %v, want 200", status, body, err)
	}
	io.WriteString(c, "\x00garbage")
	if _, err := br.ReadByte(); err == nil {
		t.Error("a malformed frame did not end the stream")
	}
}

// TestPeerStreamRedialsAfterPeerRestart: streams to a peer that restarts
// are dead; the next call goes through on a new one.
func TestPeerStreamRedialsAfterPeerRestart(t *testing.T) {
	hc := startHTTPCluster(t, 3, "", nil)
	leader := waitHTTPLeader(t, hc, 5*time.Second)
	to := otherThan(leader)
	tr := hc.trs[leader]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tr.Call(ctx, to, methodLearn, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// Close the serving side of every stream: what a restart does to them.
	pool := tr.set.Load().pools[to].streams
	pool.mu.Lock()
	for _, c := range pool.idle {
		c.Conn.(*net.TCPConn).CloseRead()
	}
	n := len(pool.idle)
	pool.mu.Unlock()
	if n == 0 {
		t.Fatal("no idle stream after a call")
	}
	if _, err := tr.Call(ctx, to, methodLearn, []byte(`{}`)); err != nil {
		t.Fatalf("call after the streams died: %v", err)
	}
}

// waitHTTPLeader returns the node of hc that leads, once one does.
func waitHTTPLeader(t *testing.T, hc *httpCluster, within time.Duration) NodeID {
	t.Helper()
	var leader NodeID
	waitFor(t, within, "a leader", func() bool {
		for id, n := range hc.nodes {
			if _, _, l := n.proposer.leaderInfo(); l {
				leader = id
				return true
			}
		}
		return false
	})
	return leader
}

// otherThan is a member of a three-node cluster other than id.
func otherThan(id NodeID) NodeID { return id%3 + 1 }

// checkStreamsOnly fails t if a transport of trs has turned streams off
// for a peer, or holds a plain connection to one.
func checkStreamsOnly(t *testing.T, trs map[NodeID]*httpTransport) {
	t.Helper()
	for id, tr := range trs {
		for to, pool := range tr.set.Load().pools {
			if !pool.streams.on() {
				t.Errorf("node %d: streams to %d off", id, to)
			}
			pool.mu.Lock()
			plain := len(pool.idle)
			pool.mu.Unlock()
			if plain != 0 {
				t.Errorf("node %d: %d plain connections to %d, want none", id, plain, to)
			}
		}
	}
}

// FuzzReadStreamRequest: whatever the bytes, reading request frames ends
// in an error or in frames that, written again, give back exactly the
// bytes they were read from.
func FuzzReadStreamRequest(f *testing.F) {
	var seed bytes.Buffer
	bw := bufio.NewWriter(&seed)
	writeStreamRequest(bw, methodAccept, []byte{1, 2, 3})
	writeStreamRequest(bw, methodLearn, nil)
	f.Add(seed.Bytes())
	f.Add([]byte{0})
	f.Add([]byte{3, 'a', 'b', 'c', 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		var again bytes.Buffer
		w := bufio.NewWriter(&again)
		for {
			method, body, err := readStreamRequest(r)
			if err == io.EOF {
				if !bytes.Equal(again.Bytes(), data) {
					t.Fatalf("frames read from %x write back as %x", data, again.Bytes())
				}
				return
			}
			if err != nil {
				return
			}
			if err := writeStreamRequest(w, method, body); err != nil {
				t.Fatalf("a frame read back (%q, %d bytes) does not write: %v", method, len(body), err)
			}
		}
	})
}

// TestPeerStreamContextEndsCall: a peer that takes the upgrade and then
// never answers holds a call only until its context ends, by deadline or
// by cancellation, and that connection is not used again.
func TestPeerStreamContextEndsCall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			t.Cleanup(func() { c.Close() })
			go func() {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+peerStreamProto+"\r\n\r\n")
				io.Copy(io.Discard, br) // takes requests, answers none
			}()
		}
	}()
	tr := newHTTPTransport(map[NodeID]string{2: "http://" + ln.Addr().String()}, "")
	defer tr.closeIdle()
	for i, mk := range []func() (context.Context, context.CancelFunc){
		func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		},
		func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		},
	} {
		ctx, cancel := mk()
		start := time.Now()
		_, err := tr.Call(ctx, 2, methodLearn, []byte(`{}`))
		cancel()
		if err == nil {
			t.Fatalf("call %d: answered by a peer that never answers", i)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("call %d: ended after %v, its context after 100ms", i, d)
		}
		if n := conns.Load(); n != int32(i+1) {
			t.Fatalf("call %d: %d connections, want %d (a cut-off stream is not reused)", i, n, i+1)
		}
	}
}

// TestReadStreamBodySizes: a frame's body reads back whole at every size
// around the thresholds, takes exactly its length in memory (accepted
// values pin it), and a frame cut short is io.ErrUnexpectedEOF.
func TestReadStreamBodySizes(t *testing.T) {
	for _, n := range []int{0, 1, 64 << 10, 64<<10 + 1, 1 << 20, 1<<20 + 1, 3<<20 + 5} {
		want := bytes.Repeat([]byte{byte(n), 7, 9}, n/3+1)[:n]
		frame := binary.BigEndian.AppendUint32(nil, uint32(n))
		frame = append(frame, want...)
		got, err := readStreamBody(bufio.NewReader(bytes.NewReader(frame)))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: got %d bytes, %v", n, len(got), err)
		}
		if cap(got) != n {
			t.Errorf("%d bytes: capacity %d", n, cap(got))
		}
		if n > 0 {
			_, err := readStreamBody(bufio.NewReader(bytes.NewReader(frame[:len(frame)-1])))
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%d bytes cut short by one: %v, want io.ErrUnexpectedEOF", n, err)
			}
		}
	}
}
