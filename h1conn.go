package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// h1conn.go: HTTP/1.1 client connections of our own, for the two callers
// that make one small request after another as fast as they can: the peer
// transport (which upgrades them to peer streams, peerstream.go, or posts
// each Paxos message to /paxos/<method> for a peer without streams) and
// `paxoslog bench`. A call writes its request and reads the answer itself,
// on a keep-alive connection it takes from a small pool, instead of going
// through net/http's Transport, which hands every request to a writer
// goroutine and every response back from a reader goroutine. On loopback
// those four goroutine handoffs per round trip cost about 45 µs of latency
// (measured: p50 116 µs through http.Client vs 71 µs on an owned
// connection, same server), and more CPU than a small message itself: the
// load tool spent 34 µs of CPU per append through http.Client, 17 µs on
// owned connections with net/http's response parser.
//
// readResponse parses the answers. It is deliberately narrow: HTTP/1.1
// only, a body framed by Content-Length, chunked encoding or the end of
// the connection, no informational (1xx) answers; anything else is an
// error, never a guess. FuzzReadResponse holds it to net/http's parser: any
// response it accepts, http.ReadResponse accepts too, with the same status,
// body and connection reuse.
//
// A peer URL that an HTTP proxy from the environment applies to goes
// through net/http instead (see httpTransport.Call).

// connPool holds the idle connections to one server.
type connPool struct {
	addr    string      // host:port to dial
	host    string      // Host header
	path    string      // the base URL's path, without a trailing slash
	tlsConf *tls.Config // nil: plain TCP
	maxIdle int

	mu   sync.Mutex
	idle []*h1Conn
}

// h1Conn is one connection with its buffers.
type h1Conn struct {
	net.Conn
	br *bufio.Reader
	bw *bufio.Writer
	// declared is the cluster identity a peer stream declared as it
	// opened (peerstream.go); "" for other connections.
	declared string
}

// watch bounds the call about to be made on c: by the deadline dl if set,
// and by the end of ctx, which unblocks the call by moving the deadline
// into the past. The call must end with stop; if stop returns false, ctx
// ended meanwhile and c, whose deadline may be past, must not be reused.
func (c *h1Conn) watch(ctx context.Context, dl time.Time, set bool) (stop func() bool) {
	if set {
		c.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}

// h1BufSize is the size of a connection's read and write buffers; it also
// bounds one line of a response's header.
const h1BufSize = 16 << 10

// maxHeaderBytes bounds a response's status line and header together.
const maxHeaderBytes = 64 << 10

// dialTimeout bounds connecting when the call's context has no earlier
// deadline.
const dialTimeout = 5 * time.Second

// newConnPool is a pool for the server at base (http:// or https://, with
// an optional path prefix). tlsConf (nil: the defaults) verifies an
// https:// server; the connection speaks HTTP/1.1 whatever the server
// offers.
func newConnPool(base string, tlsConf *tls.Config, maxIdle int) (*connPool, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	p := &connPool{host: u.Host, path: strings.TrimRight(u.Path, "/"), maxIdle: maxIdle}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
		conf := &tls.Config{}
		if tlsConf != nil {
			conf = tlsConf.Clone()
		}
		if conf.ServerName == "" {
			conf.ServerName = u.Hostname()
		}
		conf.NextProtos = nil // HTTP/1.1 only
		p.tlsConf = conf
	default:
		return nil, fmt.Errorf("URL %q: scheme must be http or https", base)
	}
	p.addr = net.JoinHostPort(u.Hostname(), port)
	return p, nil
}

// get returns an idle connection, or dials a new one; reused tells which.
func (p *connPool) get(ctx context.Context) (c *h1Conn, reused bool, err error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c = p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, true, nil
	}
	p.mu.Unlock()
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, false, err
	}
	if p.tlsConf != nil {
		tc := tls.Client(nc, p.tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, false, err
		}
		nc = tc
	}
	return &h1Conn{Conn: nc, br: bufio.NewReaderSize(nc, h1BufSize), bw: bufio.NewWriterSize(nc, h1BufSize)}, false, nil
}

// put keeps c for the next call, or closes it if enough are idle.
func (p *connPool) put(c *h1Conn) {
	p.mu.Lock()
	if len(p.idle) < p.maxIdle {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// closeIdle closes every idle connection.
func (p *connPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// h1Request is one request to send.
type h1Request struct {
	method      string // GET or POST
	path        string // after the pool's path prefix; may carry a query
	contentType string // "": no Content-Type
	headerName  string // "": no extra header
	headerValue string
	cluster     string        // "": no clusterHeader
	body        []byte        // sent with a Content-Length unless a GET without one
	timeout     time.Duration // 0: until the context's deadline
}

// h1Response is an answer: its status and body.
type h1Response struct {
	status int
	body   []byte
}

// errNoAnswer marks a call whose connection failed before any byte of an
// answer came back.
var errNoAnswer = errors.New("connection closed before an answer")

// do sends req and reads the answer, whose body is appended to dst[:0]
// (nil: a new slice) and may not exceed maxBody bytes; retry as for
// exchange.
func (p *connPool) do(ctx context.Context, req *h1Request, dst []byte, maxBody int, retry bool) (resp h1Response, err error) {
	err = p.exchange(ctx, retry, nil, func(c *h1Conn) (keep bool, err error) {
		resp, keep, err = p.roundTrip(ctx, c, req, dst, maxBody)
		return keep, err
	})
	if err != nil {
		return h1Response{}, err
	}
	return resp, nil
}

// exchange makes one call on a pooled connection: fresh, if set, readies
// a newly dialed one; call writes the request and reads the answer, and
// reports whether the connection can carry another. A connection that was
// idle in the pool may have been closed by the server (it restarted, or a
// proxy timed it out) meanwhile; with retry, the other idle ones, likely
// closed too, are dropped and the call is made once more on a fresh
// connection. Only requests that may be repeated ask for that.
func (p *connPool) exchange(ctx context.Context, retry bool, fresh func(*h1Conn) error, call func(*h1Conn) (keep bool, err error)) error {
	for attempt := 0; ; attempt++ {
		c, reused, err := p.get(ctx)
		if err != nil {
			return err
		}
		if !reused && fresh != nil {
			if err := fresh(c); err != nil {
				c.Close()
				return err
			}
		}
		keep, err := call(c)
		if err != nil {
			c.Close()
			if retry && reused && attempt == 0 && errors.Is(err, errNoAnswer) && ctx.Err() == nil {
				p.closeIdle()
				continue
			}
			return err
		}
		if keep {
			p.put(c)
		} else {
			c.Close()
		}
		return nil
	}
}

// roundTrip writes req on c and reads its answer. keep reports whether c
// can carry another request.
func (p *connPool) roundTrip(ctx context.Context, c *h1Conn, req *h1Request, dst []byte, maxBody int) (resp h1Response, keep bool, err error) {
	dl, ok := ctx.Deadline()
	if req.timeout > 0 {
		if t := time.Now().Add(req.timeout); !ok || t.Before(dl) {
			dl, ok = t, true
		}
	}
	stop := c.watch(ctx, dl, ok)
	defer func() {
		if !stop() {
			keep = false // the deadline may be in the past by now
		}
	}()

	w := c.bw
	w.WriteString(req.method)
	w.WriteByte(' ')
	w.WriteString(p.path)
	w.WriteString(req.path)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(p.host)
	if req.contentType != "" {
		w.WriteString("\r\nContent-Type: ")
		w.WriteString(req.contentType)
	}
	if req.body != nil || req.method != "GET" {
		w.WriteString("\r\nContent-Length: ")
		w.WriteString(strconv.Itoa(len(req.body)))
	}
	if req.headerName != "" {
		w.WriteString("\r\n")
		w.WriteString(req.headerName)
		w.WriteString(": ")
		w.WriteString(req.headerValue)
	}
	if req.cluster != "" {
		w.WriteString("\r\n" + clusterHeader + ": ")
		w.WriteString(req.cluster)
	}
	w.WriteString("\r\n\r\n")
	w.Write(req.body)
	if err := w.Flush(); err != nil {
		return h1Response{}, false, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	if _, err := c.br.Peek(1); err != nil {
		return h1Response{}, false, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	resp.status, resp.body, keep, err = readResponse(c.br, dst, maxBody)
	if err != nil {
		return h1Response{}, false, err
	}
	c.SetDeadline(time.Time{})
	return resp, keep, nil
}

// errMalformed marks a response readResponse does not take.
var errMalformed = errors.New("malformed HTTP response")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
}

// readResponse reads one response to a request other than HEAD from br,
// appends its body to dst[:0] (nil: a new slice holding just the body),
// and reports whether the connection may carry another request. A body
// longer than maxBody is an error.
func readResponse(br *bufio.Reader, dst []byte, maxBody int) (status int, body []byte, keep bool, err error) {
	budget := maxHeaderBytes
	line, err := readHeaderLine(br, &budget)
	if err != nil {
		return 0, nil, false, err
	}
	// HTTP/1.1 SP 3DIGIT [SP reason]
	code, ok := bytes.CutPrefix(line, []byte("HTTP/1.1 "))
	if !ok || len(code) < 3 || (len(code) > 3 && code[3] != ' ') {
		return 0, nil, false, malformed("status line %q", line)
	}
	for _, d := range code[:3] {
		if d < '0' || d > '9' {
			return 0, nil, false, malformed("status line %q", line)
		}
		status = status*10 + int(d-'0')
	}
	if status < 200 || status > 599 {
		return 0, nil, false, malformed("status %d", status) // 1xx: never asked for
	}

	keep = true
	length := int64(-1) // Content-Length; -1: none
	chunked := false
	for {
		line, err := readHeaderLine(br, &budget)
		if err != nil {
			return 0, nil, false, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := headerField(line)
		if !ok {
			return 0, nil, false, malformed("header line %q", line)
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, ok := parseDecimal(value)
			if !ok || (length >= 0 && n != length) {
				return 0, nil, false, malformed("Content-Length %q", value)
			}
			length = n
		case asciiEqualFold(name, "Transfer-Encoding"):
			if chunked || !asciiEqualFold(value, "chunked") {
				return 0, nil, false, malformed("Transfer-Encoding %q", value)
			}
			chunked = true
		case asciiEqualFold(name, "Connection"):
			for _, tok := range bytes.Split(value, []byte(",")) {
				if asciiEqualFold(bytes.Trim(tok, " \t"), "close") {
					keep = false
				}
			}
		}
	}

	body = dst[:0]
	switch {
	case status == 204 || status == 304: // no body, whatever the header says
	case chunked: // wins over a Content-Length
		body, err = readChunked(br, body, maxBody)
	case length >= 0:
		if length > int64(maxBody) {
			return 0, nil, false, fmt.Errorf("answer of %d bytes, longer than %d", length, maxBody)
		}
		body = grow(body, int(length))
		_, err = io.ReadFull(br, body)
	default: // the body ends with the connection
		keep = false
		body, err = readAllLimited(br, body, maxBody)
	}
	if err != nil {
		return 0, nil, false, err
	}
	return status, body, keep, nil
}

// readChunked appends a chunked body, trailer included, to dst.
func readChunked(br *bufio.Reader, dst []byte, maxBody int) ([]byte, error) {
	budget := maxHeaderBytes
	for {
		line, err := readHeaderLine(br, &budget)
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, " \t")
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // a chunk extension
		}
		if len(line) == 0 || len(line) > 16 {
			return nil, malformed("chunk size %q", line)
		}
		size, err := strconv.ParseUint(string(line), 16, 64)
		if err != nil || line[0] == '+' || line[0] == '-' {
			return nil, malformed("chunk size %q", line)
		}
		if size == 0 {
			break
		}
		if size > uint64(maxBody-len(dst)) {
			return nil, fmt.Errorf("answer longer than %d bytes", maxBody)
		}
		n := len(dst)
		dst = grow(dst, n+int(size))
		if _, err := io.ReadFull(br, dst[n:]); err != nil {
			return nil, err
		}
		if crlf, err := readHeaderLine(br, &budget); err != nil || len(crlf) != 0 {
			return nil, malformed("chunk not followed by CRLF")
		}
	}
	for { // the trailer: header lines, ignored
		line, err := readHeaderLine(br, &budget)
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			return dst, nil
		}
		if _, _, ok := headerField(line); !ok {
			return nil, malformed("trailer line %q", line)
		}
	}
}

// headerField splits a header (or trailer) line into its name and its
// value without surrounding blanks; ok is false unless the name is a
// token and the value free of control bytes other than tab.
func headerField(line []byte) (name, value []byte, ok bool) {
	name, value, ok = bytes.Cut(line, []byte(":"))
	if !ok || !isToken(name) {
		return nil, nil, false
	}
	value = bytes.Trim(value, " \t")
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return nil, nil, false
		}
	}
	return name, value, true
}

// readHeaderLine returns the next CRLF-terminated line without its CRLF,
// valid until br is read again; budget is what the lines of this header
// may still take.
func readHeaderLine(br *bufio.Reader, budget *int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, malformed("header line longer than %d bytes", br.Size())
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if *budget -= len(line); *budget < 0 {
		return nil, malformed("header longer than %d bytes", maxHeaderBytes)
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, malformed("line not ended by CRLF")
	}
	return line[:len(line)-2], nil
}

// readAllLimited appends what br holds until EOF to dst.
func readAllLimited(br *bufio.Reader, dst []byte, maxBody int) ([]byte, error) {
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := br.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if len(dst) > maxBody {
			return nil, fmt.Errorf("answer longer than %d bytes", maxBody)
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// grow returns b resized to n bytes, keeping its first len(b).
func grow(b []byte, n int) []byte {
	if n <= cap(b) {
		return b[:n]
	}
	return append(b[:cap(b)], make([]byte, n-cap(b))...)
}

// parseDecimal parses a non-negative decimal of at most 18 digits.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// isToken reports whether b is a non-empty RFC 9110 token (a header name).
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// asciiEqualFold reports whether b equals s, ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// peerPool is the connection pool to one peer, with this cluster's key:
// peer streams (peerstream.go), or plain requests for a peer that does not
// take them.
type peerPool struct {
	*connPool
	auth    string        // Authorization header value; "": no key
	cluster func() string // the identity to declare (clusterHeader)
	streams *streamPool
}

// maxIdlePeerConns bounds the idle connections kept per peer; concurrent
// calls beyond it dial and close their own.
const maxIdlePeerConns = 64

func newPeerPool(base, key string, tlsConf *tls.Config, cluster func() string) (*peerPool, error) {
	if cluster == nil {
		cluster = func() string { return "" }
	}
	p, err := newConnPool(base, tlsConf, maxIdlePeerConns)
	if err != nil {
		return nil, err
	}
	s, err := newConnPool(base, tlsConf, maxIdlePeerConns)
	if err != nil {
		return nil, err
	}
	pp := &peerPool{connPool: p, streams: &streamPool{connPool: s, cluster: cluster}, cluster: cluster}
	if key != "" {
		pp.auth = "Bearer " + key
		pp.streams.auth = pp.auth
	}
	return pp, nil
}

// call sends body as a <method> message and returns the status and the
// body of the answer: on a peer stream, or as a POST to /paxos/<method>
// if the peer does not take streams. Paxos messages may be duplicated, so
// a call is repeated once when a pooled connection turns out dead (see
// connPool.do).
func (p *peerPool) call(ctx context.Context, method string, body []byte) (int, []byte, error) {
	if p.streams.on() {
		status, out, err := p.streams.call(ctx, method, body)
		if !errors.Is(err, errNoStream) {
			return status, out, err
		}
	}
	req := h1Request{method: "POST", path: "/paxos/" + method, contentType: peerContentType(body), body: body}
	if p.auth != "" {
		req.headerName, req.headerValue = peerKeyHeader, p.auth
	}
	req.cluster = p.cluster()
	// dst nil: decoded messages may share the answer's bytes, so every
	// answer gets its own slice.
	resp, err := p.do(ctx, &req, nil, maxPeerBody, true)
	return resp.status, resp.body, err
}

// closeIdle closes the idle connections, streams and plain.
func (p *peerPool) closeIdle() {
	p.streams.closeIdle()
	p.connPool.closeIdle()
}
