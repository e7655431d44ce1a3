package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/tidwall/gjson"
)

// feed.go: GET /v1/feed, the live feed that makes paxoslog a total-order
// multicast. Every subscriber reads the client log from disk at its own
// pace (learner.follow) and sleeps on the learner's Notify channel when it
// has caught up, so a subscriber costs a goroutine and a write buffer, and
// a slow one never holds up an append: there is no per-subscriber queue to
// fill. One that cannot take a write within feedWriteTimeout is cut off; it
// resumes from the last index it saw.

const (
	// feedBatch is how many entries a subscriber reads before flushing.
	feedBatch = 256
	// feedWriteTimeout cuts off a subscriber that takes no bytes for this long.
	feedWriteTimeout = 30 * time.Second
)

// follow calls emit with every entry from index from on, in order, in
// batches, waiting for new entries when caught up, until ctx ends, the node
// stops (nil), emit fails, or the entries it needs are no longer retained
// (ErrCompacted). When idleEvery > 0 and nothing new arrives for that long,
// it calls idle.
func (l *Learner) follow(ctx context.Context, from Index, idleEvery time.Duration,
	emit func([]LogEntry) error, idle func() error) error {
	next := from
	var idleC <-chan time.Time
	var t *time.Timer
	if idleEvery > 0 {
		t = time.NewTimer(idleEvery)
		defer t.Stop()
		idleC = t.C
	}
	for {
		if !l.n.isMember() {
			return ErrNotMember // a removed node's feeds end
		}
		wake := l.Notify() // taken before reading the bounds: no missed wake-ups
		first, last := l.Bounds()
		if next < first {
			return ErrCompacted
		}
		damaged := false
		if next <= last {
			n := min(uint64(last-next+1), feedBatch)
			batch := make([]LogEntry, 0, n)
			for i := next; i < next+Index(n); i++ {
				e, err := l.Get(i)
				if errors.Is(err, ErrDamaged) {
					damaged = true // repaired from peers, then read again (repair.go)
					break
				}
				if err != nil {
					select {
					case <-l.n.stopped:
						return nil // the node is going away under the read
					default:
					}
					return err
				}
				batch = append(batch, e)
			}
			if len(batch) > 0 {
				if err := emit(batch); err != nil {
					return err
				}
				next += Index(len(batch))
				if t != nil {
					t.Reset(idleEvery)
				}
			}
			if !damaged {
				continue
			}
		}
		select {
		case <-wake:
		case <-idleC:
			if err := idle(); err != nil {
				return err
			}
			t.Reset(idleEvery)
		case <-ctx.Done():
			return nil
		case <-l.n.stopped:
			return nil
		}
	}
}

// matcher is a compiled match= condition: an OR of ANDs of clauses, each
// clause a gjson query evaluated on its own (gjson's own queries take one
// comparison only).
type matcher struct {
	anyOf [][]string // anyOf[i] holds the "#(clause)" queries of one && group
	buf   []byte
}

// compileMatch checks a gjson condition and returns a matcher for it; an
// empty condition matches everything (nil matcher). The grammar is
//
//	cond   = and { "||" and }
//	and    = clause { "&&" clause }
//	clause = path [ op literal ]
//	op     = "==" | "!=" | "<" | "<=" | ">" | ">=" | "%" | "!%"
//
// where path is a gjson path (letters, digits and _ - . * ? @ # \) and
// literal is a JSON string, number, true, false or null; && binds tighter
// than ||. gjson evaluates each clause; the check makes sure a typo is a
// 400, not a silent empty feed.
func compileMatch(cond string) (*matcher, error) {
	if cond == "" {
		return nil, nil
	}
	m := &matcher{anyOf: [][]string{nil}}
	s := cond
	for {
		s = strings.TrimLeft(s, " ")
		start := s
		p := 0
		for p < len(s) && isPathByte(s[p]) {
			if s[p] == '\\' && p+1 < len(s) {
				p++
			}
			p++
		}
		if p == 0 {
			return nil, fmt.Errorf("match %q: expected a field path at %q", cond, s)
		}
		s = strings.TrimLeft(s[p:], " ")
		if op := matchOp(s); op != "" {
			s = strings.TrimLeft(s[len(op):], " ")
			lit, rest, err := splitLiteral(s)
			if err != nil {
				return nil, fmt.Errorf("match %q: %v", cond, err)
			}
			if strings.HasSuffix(op, "%") && !strings.HasPrefix(lit, `"`) {
				return nil, fmt.Errorf("match %q: %s needs a quoted pattern", cond, op)
			}
			s = rest
		}
		clause := strings.TrimSpace(start[:len(start)-len(s)])
		last := len(m.anyOf) - 1
		m.anyOf[last] = append(m.anyOf[last], "#("+clause+")")
		s = strings.TrimLeft(s, " ")
		switch {
		case s == "":
			return m, nil
		case strings.HasPrefix(s, "&&"):
		case strings.HasPrefix(s, "||"):
			m.anyOf = append(m.anyOf, nil)
		default:
			return nil, fmt.Errorf("match %q: expected && or || at %q", cond, s)
		}
		s = s[2:]
	}
}

func isPathByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("_-.*?@#\\", c) >= 0
}

func matchOp(s string) string {
	for _, op := range []string{"==", "!=", "<=", ">=", "!%", "<", ">", "%"} {
		if strings.HasPrefix(s, op) {
			return op
		}
	}
	return ""
}

// splitLiteral takes one JSON scalar off the front of s.
func splitLiteral(s string) (lit, rest string, err error) {
	end := 0
	if strings.HasPrefix(s, `"`) {
		end = 1
		for end < len(s) && s[end] != '"' {
			if s[end] == '\\' {
				end++
			}
			end++
		}
		end++
		if end > len(s) {
			return "", "", errors.New("unterminated string")
		}
	} else {
		for end < len(s) && s[end] != ' ' && !strings.HasPrefix(s[end:], "&&") && !strings.HasPrefix(s[end:], "||") {
			end++
		}
	}
	lit = s[:end]
	if r := gjson.Parse(lit); lit == "" || !gjson.Valid(lit) || r.IsObject() || r.IsArray() {
		return "", "", fmt.Errorf("%q is not a JSON literal: use a quoted string, a number, true, false or null", lit)
	}
	return lit, s[end:], nil
}

// match reports whether data satisfies the condition.
func (m *matcher) match(data []byte) bool {
	if m == nil {
		return true
	}
	m.buf = append(append(append(m.buf[:0], '['), data...), ']')
	for _, all := range m.anyOf {
		ok := true
		for _, q := range all {
			if !gjson.GetBytes(m.buf, q).Exists() {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// feedLine returns e as one NDJSON line's JSON: the value verbatim unless
// it spans lines, in which case it is compacted (same value, one line).
func feedLine(b []byte, e LogEntry) []byte {
	if bytes.ContainsAny(e.Data, "\r\n") {
		var c bytes.Buffer
		if json.Compact(&c, e.Data) == nil {
			e.Data = c.Bytes()
		}
	}
	return e.appendJSON(b)
}

// feed serves GET /v1/feed?from=F&match=C as NDJSON, or as Server-Sent
// Events when the client accepts text/event-stream (id: = index, resume
// with Last-Event-ID).
func (s *server) feed(c echo.Context) error {
	req := c.Request()
	sse := strings.Contains(req.Header.Get("Accept"), "text/event-stream")
	var from Index
	if v := c.QueryParam("from"); v != "" {
		f, err := parseIndex("from", v)
		if err != nil {
			return err
		}
		from = f
	}
	if v := req.Header.Get("Last-Event-ID"); v != "" && sse {
		last, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return badRequest("Last-Event-ID must be an index, got %q", v)
		}
		from = Index(last) + 1
	}
	m, err := compileMatch(c.QueryParam("match"))
	if err != nil {
		return badRequest("%v", err)
	}
	first, _ := s.n.learner.Bounds()
	if from == 0 {
		from = first
	}
	if from < first {
		return fmt.Errorf("feed from %d: %w", from, ErrCompacted)
	}

	w := c.Response()
	if sse {
		w.Header().Set(echo.HeaderContentType, "text/event-stream")
	} else {
		w.Header().Set(echo.HeaderContentType, "application/x-ndjson")
	}
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w.Writer)
	bw := bufio.NewWriterSize(w.Writer, 4096)
	flush := func() error {
		rc.SetWriteDeadline(time.Now().Add(feedWriteTimeout))
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	if err := flush(); err != nil {
		return nil
	}
	s.n.metrics.feedSubscribers.Inc()
	defer s.n.metrics.feedSubscribers.Dec()

	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(s.shutdownCtx, cancel) // end feeds on server shutdown
	defer stop()

	var line []byte
	emit := func(batch []LogEntry) error {
		for _, e := range batch {
			if !m.match(e.Data) {
				continue
			}
			line = feedLine(line[:0], e)
			if sse {
				fmt.Fprintf(bw, "id: %d\ndata: ", e.Index)
			}
			bw.Write(line)
			if sse {
				bw.WriteString("\n\n")
			} else {
				bw.WriteByte('\n')
			}
		}
		return flush()
	}
	var idleEvery time.Duration
	var idle func() error
	if sse {
		idleEvery = s.sseHeartbeat
		idle = func() error {
			bw.WriteString(": ping\n\n")
			return flush()
		}
	}
	err = s.n.learner.follow(ctx, from, idleEvery, emit, idle)
	if errors.Is(err, ErrCompacted) && sse {
		// Fell behind retention mid-stream: say so, then end the stream.
		fmt.Fprintf(bw, "event: error\ndata: {\"error\":%q}\n\n", err.Error())
		flush()
	}
	return nil // the response is under way: errors end the stream
}
