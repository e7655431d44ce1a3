package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tidwall/gjson"
)

// http.go: the client API under /v1, the peer endpoints under /paxos, and
// the HTTP Transport.

// maxPeerBody bounds a peer request body.
const maxPeerBody = 256 << 20

// maxKeyBytes bounds an Idempotency-Key.
const maxKeyBytes = 128

// peerKeyHeader carries the cluster key on peer requests.
const peerKeyHeader = "Authorization"

// apiError is an error with the HTTP status to answer it with.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

// server is the HTTP face of one node.
type server struct {
	n            *Node
	key          string
	sseHeartbeat time.Duration
	shutdownCtx  context.Context
}

// handlerOptions configure newHandler.
type handlerOptions struct {
	// ClusterKey, if set, is required on every peer request.
	ClusterKey string
	// SSEHeartbeat is how often an idle Server-Sent Events feed gets a
	// comment line (default 15s).
	SSEHeartbeat time.Duration
	// Shutdown, when done, ends every open feed (http.Server.Shutdown
	// waits for streaming responses otherwise).
	Shutdown context.Context
	// PeerCerts makes every peer request show a client certificate that
	// the TLS server verified (--tls-ca: mutual TLS), on top of the key.
	PeerCerts bool
}

// newHandler builds the echo instance serving n.
func newHandler(n *Node, o handlerOptions) *echo.Echo {
	if o.SSEHeartbeat <= 0 {
		o.SSEHeartbeat = 15 * time.Second
	}
	if o.Shutdown == nil {
		o.Shutdown = context.Background()
	}
	s := &server{n: n, key: o.ClusterKey, sseHeartbeat: o.SSEHeartbeat, shutdownCtx: o.Shutdown}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError

	e.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{})))
	addUI(e)

	v1 := e.Group("/v1")
	v1.POST("/log", s.appendEntry)
	v1.GET("/log", s.readRange)
	v1.GET("/log/:index", s.readOne)
	v1.GET("/feed", s.feed)
	v1.GET("/status", func(c echo.Context) error { return c.JSON(http.StatusOK, n.Status()) })
	v1.GET("/members", func(c echo.Context) error { return c.JSON(http.StatusOK, n.Members()) })

	admin := v1.Group("/admin", s.requireKey)
	admin.POST("/compact", s.compact)
	admin.POST("/members", s.addMember)
	admin.DELETE("/members/:id", s.removeMember)

	peerAuth := []echo.MiddlewareFunc{s.requireKey}
	if o.PeerCerts {
		peerAuth = []echo.MiddlewareFunc{requirePeerCert, s.requireKey}
	}
	peers := e.Group("/paxos", peerAuth...)
	for _, m := range []string{methodPrepare, methodAccept, methodLearn, methodCatchup, methodForward, methodReadIndex, methodTimeoutNow, methodHello, methodRecords, methodSums, methodReconfig} {
		peers.POST("/"+m, s.peer(m))
	}
	peers.GET("/stream", s.peerStream)
	return e
}

// handleError renders every error as {"error": "..."} with its status.
func (s *server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := errorStatus(err)
	switch code {
	case http.StatusServiceUnavailable:
		c.Response().Header().Set("Retry-After", "1")
	case http.StatusGone:
		first, _ := s.n.learner.Bounds()
		c.JSON(code, map[string]any{"error": msg, "first": first})
		return
	}
	if c.Request().Method == http.MethodHead {
		c.NoContent(code)
		return
	}
	c.JSON(code, map[string]string{"error": msg})
}

// errorStatus is the HTTP status that answers err, and its message.
func errorStatus(err error) (int, string) {
	var ae *apiError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
		return ae.code, err.Error()
	case errors.As(err, &he):
		return he.Code, fmt.Sprint(he.Message)
	case errors.Is(err, ErrNoQuorum), errors.Is(err, ErrStopped), errors.Is(err, ErrRecovering), errors.Is(err, ErrDiscovering),
		errors.Is(err, ErrDamaged), errors.Is(err, ErrNotMember), errors.Is(err, errNotVoter), errors.Is(err, ErrNotLeader):
		return http.StatusServiceUnavailable, err.Error()
	case errors.Is(err, ErrCompacted):
		return http.StatusGone, err.Error()
	case errors.Is(err, ErrPastEnd):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, err.Error()
	case errors.Is(err, context.Canceled):
		return 499, err.Error() // client went away; nobody reads this
	}
	return http.StatusInternalServerError, err.Error()
}

// readBody reads at most limit bytes, answering 413 past it. A body
// whose length is declared is read into a slice of exactly that size
// (readSized): entries keep pointing into it until the acceptor's next
// checkpoint, and io.ReadAll's 512-byte start would keep five times a
// small entry and allocate five times a large batch on the way.
func readBody(c echo.Context, limit int) ([]byte, error) {
	r := c.Request()
	if n := r.ContentLength; n >= 0 && n <= int64(limit) {
		body, err := readSized(r.Body, int(n))
		if err != nil {
			return nil, badRequest("reading body: %v", err)
		}
		return body, nil // net/http refuses a body longer than its Content-Length
	}
	if r.ContentLength > int64(limit) {
		return nil, &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body is larger than the limit of %d bytes", limit)}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return nil, badRequest("reading body: %v", err)
	}
	if len(body) > limit {
		return nil, &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body is larger than the limit of %d bytes", limit)}
	}
	return body, nil
}

// jsonSpace is the whitespace JSON allows around a value (RFC 8259); any
// other character there (a form feed, a no-break space) makes the body
// not exactly one JSON value.
const jsonSpace = " \t\r\n"

// isNDJSON reports whether a Content-Type names a batch:
// application/x-ndjson, with or without parameters.
func isNDJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/x-ndjson")
}

// appendEntry: POST /v1/log with one JSON value, or a batch of them.
func (s *server) appendEntry(c echo.Context) error {
	if isNDJSON(c.Request().Header.Get(echo.HeaderContentType)) {
		return s.appendBatch(c)
	}
	body, err := readBody(c, s.n.cfg.MaxEntryBytes)
	if err != nil {
		return err
	}
	body = bytes.Trim(body, jsonSpace)
	if len(body) == 0 {
		return badRequest("body is empty: send exactly one JSON value")
	}
	if !gjson.ValidBytes(body) {
		return badRequest("body is not exactly one valid JSON value")
	}
	key, err := idempotencyKey(c)
	if err != nil {
		return err
	}
	a, err := s.n.Append(c.Request().Context(), body, key)
	if err != nil {
		return err
	}
	idx := strconv.AppendUint(nil, uint64(a.Index), 10)
	c.Response().Header()["Location"] = []string{"/v1/log/" + string(idx)} // canonical already
	if a.Duplicate {
		// The same key is already in the log: nothing was appended.
		return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, append(append([]byte(`{"index":`), idx...), `,"duplicate":true}`...))
	}
	return c.Blob(http.StatusCreated, echo.MIMEApplicationJSON, append(append([]byte(`{"index":`), idx...), '}'))
}

// idempotencyKey returns the request's Idempotency-Key ("" for none).
func idempotencyKey(c echo.Context) (string, error) {
	key := c.Request().Header.Get("Idempotency-Key")
	if len(key) > maxKeyBytes {
		return "", badRequest("Idempotency-Key is longer than %d bytes", maxKeyBytes)
	}
	return key, nil
}

// appendBatch: POST /v1/log with application/x-ndjson, one JSON value a
// line, all appended at consecutive indices or none. Every line is
// checked before anything is submitted, so a bad one changes nothing.
func (s *server) appendBatch(c echo.Context) error {
	cfg := s.n.cfg
	body, err := readBody(c, cfg.MaxBatchBytes)
	if err != nil {
		return err
	}
	vals, err := splitBatch(body, cfg.MaxBatchEntries, cfg.MaxEntryBytes)
	if err != nil {
		return err
	}
	key, err := idempotencyKey(c)
	if err != nil {
		return err
	}
	a, err := s.n.AppendBatch(c.Request().Context(), vals, key)
	if err != nil {
		return err
	}
	first := strconv.AppendUint(nil, uint64(a.Index), 10)
	c.Response().Header()["Location"] = []string{"/v1/log/" + string(first)}
	b := append(append([]byte(`{"first":`), first...), `,"last":`...)
	b = strconv.AppendUint(b, uint64(a.Last), 10)
	if a.Duplicate {
		return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, append(b, `,"duplicate":true}`...))
	}
	return c.Blob(http.StatusCreated, echo.MIMEApplicationJSON, append(b, '}'))
}

// splitBatch cuts an ndjson body into its values, sharing its memory:
// one JSON value a line, lines counted from 1, blank ones (and so a
// final newline) skipped, a CR before the LF dropped with the rest of
// the space around a value.
func splitBatch(body []byte, maxEntries, maxEntryBytes int) ([][]byte, error) {
	var vals [][]byte
	for line := 1; len(body) > 0; line++ {
		var v []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			v, body = body[:i], body[i+1:]
		} else {
			v, body = body, nil
		}
		v = bytes.Trim(v, jsonSpace)
		if len(v) == 0 {
			continue
		}
		if len(v) > maxEntryBytes {
			return nil, &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("line %d: entry is larger than the limit of %d bytes", line, maxEntryBytes)}
		}
		if !gjson.ValidBytes(v) {
			return nil, badRequest("line %d is not exactly one valid JSON value", line)
		}
		if len(vals) == maxEntries {
			return nil, &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("line %d: a batch holds at most %d entries", line, maxEntries)}
		}
		vals = append(vals, v[:len(v):len(v)])
	}
	if len(vals) == 0 {
		return nil, badRequest("batch is empty: send one JSON value a line")
	}
	return vals, nil
}

// parseIndex parses a positive integer parameter.
func parseIndex(name, v string) (Index, error) {
	i, err := strconv.ParseUint(v, 10, 64)
	if err != nil || i == 0 {
		return 0, badRequest("%s must be a positive integer, got %q", name, v)
	}
	return Index(i), nil
}

// parseStale reads the stale=true|false query parameter.
func parseStale(c echo.Context) (bool, error) {
	v := c.QueryParam("stale")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest("stale must be true or false, got %q", v)
	}
	return b, nil
}

// readOne: GET /v1/log/<i>, from local state.
func (s *server) readOne(c echo.Context) error {
	i, err := parseIndex("index", c.Param("index"))
	if err != nil {
		return err
	}
	stale, err := parseStale(c)
	if err != nil {
		return err
	}
	e, err := s.n.learner.Get(i)
	if errors.Is(err, ErrPastEnd) && !stale {
		// Maybe chosen but not yet learned here: catch up, then look again.
		if err := s.n.ReadBarrier(c.Request().Context()); err != nil {
			return err
		}
		e, err = s.n.learner.Get(i)
	}
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, e.appendJSON(nil))
}

// readRange: GET /v1/log?from=F&limit=L[&stale=true]. Linearizable unless
// stale: the node first confirms it holds every entry chosen before now.
func (s *server) readRange(c echo.Context) error {
	const defaultLimit, maxLimit = 100, 1000
	q := c.QueryParams()
	stale, err := parseStale(c)
	if err != nil {
		return err
	}
	limit := defaultLimit
	if v := q.Get("limit"); v != "" {
		l, err := strconv.Atoi(v)
		if err != nil || l < 1 || l > maxLimit {
			return badRequest("limit must be an integer from 1 to %d, got %q", maxLimit, v)
		}
		limit = l
	}
	var from Index
	if v := q.Get("from"); v != "" {
		f, err := parseIndex("from", v)
		if err != nil {
			return err
		}
		from = f
	}
	if !stale {
		if err := s.n.ReadBarrier(c.Request().Context()); err != nil {
			return err
		}
	}
	first, last := s.n.learner.Bounds()
	if from == 0 {
		from = first
	}
	entries, err := s.n.learner.Range(from, limit)
	if err != nil {
		return err
	}
	b := []byte(`{"entries":[`)
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendJSON(b)
	}
	b = fmt.Appendf(b, `],"first":%d,"last":%d}`, first, last)
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
}

// compact: POST /v1/admin/compact?before=i drops this node's entries
// below i (the last entry stays) and answers the first retained index.
func (s *server) compact(c echo.Context) error {
	if s.key == "" {
		return errAdminOff
	}
	before, err := parseIndex("before", c.QueryParam("before"))
	if err != nil {
		return err
	}
	if _, last := s.n.learner.Bounds(); before > last+1 {
		return badRequest("before must be at most last+1 = %d, got %d", last+1, before)
	}
	first, err := s.n.learner.compactBefore(before)
	if err != nil {
		s.n.fatal(err)
		return err
	}
	return c.JSON(http.StatusOK, map[string]Index{"first": first})
}

// errAdminOff answers an admin call on a node without a cluster key.
var errAdminOff = &apiError{http.StatusForbidden, "admin endpoints are off: start the node with --cluster-key to use them"}

// addMember: POST /v1/admin/members {"id": N, "url": "http://host:port"}
// adds a member as a non-voter (it becomes a voter once caught up) and
// answers the membership once the change is chosen.
func (s *server) addMember(c echo.Context) error {
	if s.key == "" {
		return errAdminOff
	}
	body, err := readBody(c, 64<<10)
	if err != nil {
		return err
	}
	var req struct {
		ID  *int64 `json:"id"`
		URL string `json:"url"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return badRequest("body must be {\"id\": <positive integer>, \"url\": \"http://host:port\"}: %v", err)
	}
	if req.ID == nil || *req.ID < 1 || *req.ID >= 1<<31 {
		return badRequest("id must be an integer from 1 to %d", 1<<31-1)
	}
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return badRequest("url must look like http://host:port, got %q", req.URL)
	}
	mr, err := s.n.Reconfig(c.Request().Context(), ReconfigReq{From: s.n.cfg.ID, Add: &member{ID: NodeID(*req.ID), URL: strings.TrimRight(u.String(), "/")}})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, mr)
}

// removeMember: DELETE /v1/admin/members/<id> removes a member and
// answers the membership once the change is chosen.
func (s *server) removeMember(c echo.Context) error {
	if s.key == "" {
		return errAdminOff
	}
	id, err := strconv.ParseUint(c.Param("id"), 10, 31)
	if err != nil || id == 0 {
		return badRequest("member id must be a positive integer, got %q", c.Param("id"))
	}
	mr, err := s.n.Reconfig(c.Request().Context(), ReconfigReq{From: s.n.cfg.ID, Remove: NodeID(id)})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, mr)
}

// requireKey refuses peer requests without the cluster key (401).
func (s *server) requireKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.key == "" {
			return next(c)
		}
		got, ok := strings.CutPrefix(c.Request().Header.Get(peerKeyHeader), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.key)) != 1 {
			return ErrUnauthorized
		}
		return next(c)
	}
}

// errNoPeerCert answers a peer request without a verified client
// certificate when peers use mutual TLS.
var errNoPeerCert = &apiError{http.StatusUnauthorized, "peer requests need a client certificate signed by --tls-ca"}

// requirePeerCert refuses peer requests (401) that did not come over TLS
// with a client certificate verified against --tls-ca. The TLS server
// asks for one but lets clients without one through, for /v1.
func requirePeerCert(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if st := c.Request().TLS; st == nil || len(st.VerifiedChains) == 0 {
			return errNoPeerCert
		}
		return next(c)
	}
}

// peer serves one Paxos message endpoint.
func (s *server) peer(method string) echo.HandlerFunc {
	return func(c echo.Context) error {
		body, err := readBody(c, maxPeerBody)
		if err != nil {
			return err
		}
		out, err := s.n.handle(c.Request().Context(), c.Request().Header.Get(clusterHeader), method, body)
		if err != nil {
			return err
		}
		return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, out)
	}
}

// httpTransport sends peer messages as HTTP POSTs to /paxos/<method>, on
// connections of its own (h1conn.go), or through net/http for a peer
// that an HTTP proxy from the environment applies to.
type httpTransport struct {
	client  *http.Client
	key     string
	tlsConf *tls.Config
	set     atomic.Pointer[peerSet] // replaced whole when the members change
	// cluster is the identity this node declares on every request
	// (clusterHeader); "" until known.
	cluster atomic.Pointer[string]
}

// peerSet is where the transport reaches each member. It never changes
// once made.
type peerSet struct {
	urls  map[NodeID]string    // base URL per member
	pools map[NodeID]*peerPool // no entry: through client
}

// setCluster sets the identity the transport declares, and closes the
// idle peer streams, which declared the old one as they opened.
func (t *httpTransport) setCluster(c string) {
	t.cluster.Store(&c)
	t.closeIdle()
}

func (t *httpTransport) clusterID() string {
	if c := t.cluster.Load(); c != nil {
		return *c
	}
	return ""
}

// newHTTPTransport is the peer transport without TLS settings of its own:
// http:// peers, or https:// ones verified against the system roots.
func newHTTPTransport(peers map[NodeID]string, key string) *httpTransport {
	return newPeerTransport(peers, key, nil)
}

// newPeerTransport is the peer transport; tlsConf (nil: the defaults)
// verifies https:// peers and, with mutual TLS, holds this node's client
// certificate. Peer traffic stays on HTTP/1.1 with a pool of keep-alive
// connections per peer, as without TLS.
func newPeerTransport(peers map[NodeID]string, key string, tlsConf *tls.Config) *httpTransport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	tr.MaxIdleConns = 1024
	tr.IdleConnTimeout = 90 * time.Second
	if tlsConf != nil {
		tr.TLSClientConfig = tlsConf.Clone()
		tr.ForceAttemptHTTP2 = false
	}
	t := &httpTransport{client: &http.Client{Transport: tr}, key: key, tlsConf: tlsConf}
	t.setPeers(peers)
	return t
}

// setPeers makes urls where the transport reaches the members from now on
// (the membership changed): a member whose URL stays keeps its pool.
func (t *httpTransport) setPeers(urls map[NodeID]string) {
	old := t.set.Load()
	s := &peerSet{urls: make(map[NodeID]string, len(urls)), pools: make(map[NodeID]*peerPool)}
	tr := t.client.Transport.(*http.Transport)
	for id, base := range urls {
		s.urls[id] = base
		if old != nil && old.urls[id] == base {
			if p := old.pools[id]; p != nil {
				s.pools[id] = p
			}
			continue
		}
		if req, err := http.NewRequest(http.MethodPost, base, nil); err == nil {
			if proxy, err := tr.Proxy(req); err == nil && proxy != nil {
				continue // through net/http and its proxy
			}
		}
		if pool, err := newPeerPool(base, t.key, t.tlsConf, t.clusterID); err == nil {
			s.pools[id] = pool
		}
	}
	t.set.Store(s)
	if old != nil {
		for id, p := range old.pools {
			if s.pools[id] != p {
				p.closeIdle()
			}
		}
	}
}

// Call implements Transport.
func (t *httpTransport) Call(ctx context.Context, to NodeID, method string, body []byte) ([]byte, error) {
	set := t.set.Load()
	base, ok := set.urls[to]
	if !ok {
		return nil, fmt.Errorf("no address for node %d", to)
	}
	var status int
	var out []byte
	if pool := set.pools[to]; pool != nil {
		var err error
		if status, out, err = pool.call(ctx, method, body); err != nil {
			return nil, err
		}
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/paxos/"+method, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", peerContentType(body))
		if t.key != "" {
			req.Header.Set(peerKeyHeader, "Bearer "+t.key)
		}
		if c := t.clusterID(); c != "" {
			req.Header.Set(clusterHeader, c)
		}
		resp, err := t.client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if out, err = io.ReadAll(io.LimitReader(resp.Body, maxPeerBody)); err != nil {
			return nil, err
		}
		status = resp.StatusCode
	}
	if status != http.StatusOK {
		msg := gjson.GetBytes(out, "error").String()
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		return nil, fmt.Errorf("peer %d answered %d: %s", to, status, msg)
	}
	return out, nil
}

// closeIdle closes the idle peer connections.
func (t *httpTransport) closeIdle() {
	for _, pool := range t.set.Load().pools {
		pool.closeIdle()
	}
	t.client.CloseIdleConnections()
}
