package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/tidwall/gjson"
)

// peerstream.go: Paxos messages between nodes on upgraded connections.
//
// A node's peer transport opens each connection to a peer with one HTTP
// request, GET /paxos/stream with "Upgrade: paxoslog-peer/1" and the
// cluster key (and over mutual TLS its certificate), which passes the
// same checks as every /paxos request. The peer answers 101 Switching
// Protocols and from then on the connection carries framed messages, one
// call at a time: the caller writes a request frame and reads the answer
// frame, and the connection goes back to the pool.
//
//	request: method length (1 byte), method, body length (4 bytes, big endian), body
//	answer:  status (2 bytes), body length (4 bytes), body
//
// The body is what a POST to /paxos/<method> carries, the answer what it
// would return; status is the HTTP status that request would get, with
// the same {"error": ...} body. On a follower a plain HTTP request per
// message cost as much CPU as the work it carried: parsing the request,
// routing, the response header, and net/http's background read goroutine
// started and stopped on every request (on the test machine 15-20% of a
// follower's CPU at one client). A peer that does not know the upgrade
// (it answers 404 or 405) gets plain POSTs for a minute, then is asked
// again.

// peerStreamProto names the protocol in the Upgrade headers.
const peerStreamProto = "paxoslog-peer/1"

// peerStreamIdle is how long a peer stream may wait for its next request
// before the serving side closes it. The calling side keeps at most
// maxIdlePeerConns idle streams per peer and closes the rest.
const peerStreamIdle = 10 * time.Minute

// errNoStream marks a peer that does not take the upgrade.
var errNoStream = errors.New("peer does not take peer streams")

// writeStreamRequest writes one request frame to w.
func writeStreamRequest(w *bufio.Writer, method string, body []byte) error {
	if len(method) == 0 || len(method) > 255 {
		return fmt.Errorf("method %q: length must be 1 to 255", method)
	}
	if len(body) > maxPeerBody {
		return fmt.Errorf("message of %d bytes is over the limit of %d", len(body), maxPeerBody)
	}
	var hdr [4]byte
	w.WriteByte(byte(len(method)))
	w.WriteString(method)
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	w.Write(hdr[:])
	w.Write(body)
	return w.Flush()
}

// readStreamRequest reads one request frame. io.EOF means the peer closed
// the stream between requests.
func readStreamRequest(r *bufio.Reader) (method string, body []byte, err error) {
	n, err := r.ReadByte()
	if err != nil {
		return "", nil, err // io.EOF between frames is a clean end
	}
	if n == 0 {
		return "", nil, errors.New("peer stream: empty method")
	}
	m := make([]byte, n)
	if _, err := io.ReadFull(r, m); err != nil {
		return "", nil, unexpectedEOF(err)
	}
	body, err = readStreamBody(r)
	return string(m), body, err
}

// writeStreamAnswer writes one answer frame to w.
func writeStreamAnswer(w *bufio.Writer, status int, body []byte) error {
	var hdr [6]byte
	binary.BigEndian.PutUint16(hdr[:2], uint16(status))
	binary.BigEndian.PutUint32(hdr[2:], uint32(len(body)))
	w.Write(hdr[:])
	w.Write(body)
	return w.Flush()
}

// readStreamAnswer reads one answer frame.
func readStreamAnswer(r *bufio.Reader) (status int, body []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	status = int(binary.BigEndian.Uint16(hdr[:]))
	if status < 100 || status > 599 {
		return 0, nil, fmt.Errorf("peer stream: status %d", status)
	}
	body, err = readStreamBody(r)
	return status, body, err
}

// readStreamBody reads a body length and the body, in a slice of its own
// (decoded messages may keep pointing into it).
func readStreamBody(r *bufio.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, unexpectedEOF(err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxPeerBody {
		return nil, fmt.Errorf("peer stream: message of %d bytes is over the limit of %d", n, maxPeerBody)
	}
	body, err := readSized(r, int(n))
	return body, unexpectedEOF(err)
}

// readSized reads exactly n bytes into a slice of exactly n bytes. A
// large body grows as it arrives, from 1 MiB, so that a length alone
// allocates little, to exactly n: accepted values point into the body
// until the acceptor's next checkpoint, and slack capacity would stay
// pinned with them.
func readSized(r io.Reader, n int) ([]byte, error) {
	body := make([]byte, min(n, 1<<20))
	for got := 0; ; {
		m, err := io.ReadFull(r, body[got:])
		got += m
		if err != nil {
			return nil, err
		}
		if got == n {
			return body, nil
		}
		grown := make([]byte, min(n, 2*len(body)))
		copy(grown, body)
		body = grown
	}
}

// unexpectedEOF turns an EOF inside a frame into io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// peerStream serves GET /paxos/stream: it takes over the connection and
// answers framed messages until the peer closes it, it idles for
// peerStreamIdle, a frame is malformed, or the server shuts down.
func (s *server) peerStream(c echo.Context) error {
	r := c.Request()
	if !strings.EqualFold(r.Header.Get("Upgrade"), peerStreamProto) || !headerHasToken(r.Header.Values("Connection"), "upgrade") {
		return badRequest("GET /paxos/stream needs the headers Connection: Upgrade and Upgrade: %s", peerStreamProto)
	}
	if r.ProtoMajor != 1 {
		return badRequest("peer streams need HTTP/1.1")
	}
	conn, rw, err := http.NewResponseController(c.Response().Writer).Hijack()
	if err != nil {
		return fmt.Errorf("peer stream: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(s.shutdownCtx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Time{}) // the server's own deadlines are for HTTP requests
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + peerStreamProto + "\r\n\r\n")
	if err := rw.Flush(); err != nil {
		return nil
	}
	s.servePeerStream(r.Context(), r.Header.Get(clusterHeader), conn, rw.Reader, rw.Writer)
	return nil
}

// servePeerStream answers request frames read from r on w until the
// stream ends. Every message on it is from a node of cluster (declared as
// the stream opened) and checked as such. The connection's deadline, for
// reading the next request and writing its answer, is pushed back at most
// every half of peerStreamIdle, not on every message (each push is a
// timer update).
func (s *server) servePeerStream(ctx context.Context, cluster string, conn net.Conn, r *bufio.Reader, w *bufio.Writer) {
	var deadline time.Time
	for {
		if now := time.Now(); deadline.Sub(now) < peerStreamIdle/2 {
			deadline = now.Add(peerStreamIdle)
			conn.SetDeadline(deadline)
		}
		method, body, err := readStreamRequest(r)
		if err != nil {
			if err != io.EOF && !errors.Is(err, net.ErrClosed) {
				s.n.log.Debug("peer stream ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
			return
		}
		out, err := s.n.handle(ctx, cluster, method, body)
		status := http.StatusOK
		if err != nil {
			var msg string
			status, msg = errorStatus(err)
			out, _ = json.Marshal(map[string]string{"error": msg})
		}
		if err := writeStreamAnswer(w, status, out); err != nil {
			return
		}
		if errors.Is(err, ErrStopped) {
			return // a stopped node takes no more; the peer redials
		}
	}
}

// headerHasToken reports whether a comma-separated header holds token,
// ignoring case.
func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// streamPool holds a peer's upgraded connections.
type streamPool struct {
	*connPool
	auth     string        // Authorization header value; "": no key
	cluster  func() string // the identity to declare as a stream opens
	offUntil atomic.Int64  // Unix nanoseconds: till then the peer gets plain requests
}

// streamRetry is how long a peer that refused the upgrade gets plain
// requests before the next connection asks again (it may have been
// upgraded meanwhile).
const streamRetry = time.Minute

// on reports whether calls should try a stream.
func (p *streamPool) on() bool { return time.Now().UnixNano() >= p.offUntil.Load() }

// call sends one message on a stream and returns the answer's status and
// body. errNoStream means the peer does not take streams. As with plain
// requests, a call is sent once more on a fresh connection when a pooled
// one turns out dead (Paxos messages may be duplicated).
func (p *streamPool) call(ctx context.Context, method string, body []byte) (status int, out []byte, err error) {
	upgrade := func(c *h1Conn) error { return p.upgrade(ctx, c) }
	err = p.exchange(ctx, true, upgrade, func(c *h1Conn) (keep bool, err error) {
		status, out, keep, err = p.roundTrip(ctx, c, method, body)
		// A stream that declared another identity than this node's now
		// (it opened before the node learned it) is not reused.
		return keep && c.declared == p.cluster(), err
	})
	if err != nil {
		return 0, nil, err
	}
	return status, out, nil
}

// upgrade turns a fresh connection into a peer stream.
func (p *streamPool) upgrade(ctx context.Context, c *h1Conn) error {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	w := c.bw
	w.WriteString("GET ")
	w.WriteString(p.path)
	w.WriteString("/paxos/stream HTTP/1.1\r\nHost: ")
	w.WriteString(p.host)
	w.WriteString("\r\nConnection: Upgrade\r\nUpgrade: " + peerStreamProto + "\r\n")
	if p.auth != "" {
		w.WriteString(peerKeyHeader + ": " + p.auth + "\r\n")
	}
	c.declared = p.cluster()
	if c.declared != "" {
		w.WriteString(clusterHeader + ": " + c.declared + "\r\n")
	}
	w.WriteString("\r\n")
	if err := w.Flush(); err != nil {
		return err
	}
	head, err := c.br.Peek(len("HTTP/1.1 101 "))
	if err != nil {
		return fmt.Errorf("upgrade to a peer stream: %w", unexpectedEOF(err))
	}
	if string(head) != "HTTP/1.1 101 " {
		// Not switching: an ordinary answer. Read it for its status and
		// message; the connection is not reused.
		status, out, _, err := readResponse(c.br, nil, 64<<10)
		if err != nil {
			return fmt.Errorf("upgrade to a peer stream: %w", err)
		}
		if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
			p.offUntil.Store(time.Now().Add(streamRetry).UnixNano())
			return errNoStream
		}
		msg := gjson.GetBytes(out, "error").String()
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		return fmt.Errorf("peer answered %d: %s", status, msg)
	}
	budget := maxHeaderBytes
	for {
		line, err := readHeaderLine(c.br, &budget)
		if err != nil {
			return fmt.Errorf("upgrade to a peer stream: %w", err)
		}
		if len(line) == 0 {
			return nil
		}
	}
}

// roundTrip writes one request frame on c and reads its answer. keep
// reports whether c can carry another call.
func (p *streamPool) roundTrip(ctx context.Context, c *h1Conn, method string, body []byte) (status int, out []byte, keep bool, err error) {
	// No deadline of the connection's own: the context's deadline ends it
	// through its own timer, which watch hears of, and setting and
	// clearing one more on every message would cost two timer updates.
	stop := c.watch(ctx, time.Time{}, false)
	defer func() {
		if !stop() {
			keep = false // the deadline may be in the past by now
		}
	}()
	if err := writeStreamRequest(c.bw, method, body); err != nil {
		return 0, nil, false, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	if _, err := c.br.Peek(1); err != nil {
		return 0, nil, false, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	if status, out, err = readStreamAnswer(c.br); err != nil {
		return 0, nil, false, err
	}
	return status, out, true, nil
}
