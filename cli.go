package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tidwall/gjson"
)

// cli.go: the command-line client in the same binary, as `paxoslog bench`
// is: append, get, range, tail, status and members. Each command speaks
// the client API of http.go over HTTP, to the --endpoints in turn.
//
// Exit status: 0 when the command did what it was asked, 1 when a node
// refused it or no endpoint answered in time (one line on stderr, the
// node's error message when it sent one), 2 for a bad command line,
// refused before anything is sent.

// cliCommand is one subcommand.
type cliCommand struct {
	usage   string // after "paxoslog "
	summary string
	run     func(e *cliEnv, args []string) error
	flags   func(fs *flag.FlagSet, f *cliFlags) // the command's own flags; nil: none
}

// cliFlags holds the commands' own flags, one set per run.
type cliFlags struct {
	key, from, match string
	batch, stale     bool
	limit, count     int
}

// cliCommands by name. Filled in by init so that the help text can list
// them without an initialisation cycle.
var cliCommands map[string]*cliCommand

func init() {
	cliCommands = map[string]*cliCommand{
		"append":  {usage: "append [--key K] [--batch] [VALUE | -]", summary: "append one JSON value (from the argument or stdin), or with --batch every NDJSON line of stdin as one batch; prints the index (a batch: first and last)", run: cliAppend, flags: appendFlags},
		"get":     {usage: "get [--stale] INDEX", summary: "print entry INDEX's value", run: cliGet, flags: getFlags},
		"range":   {usage: "range [--from F] [--limit L] [--stale]", summary: "print entries from F on, at most L (default 100), one a line: index, a tab, the value", run: cliRange, flags: rangeFlags},
		"tail":    {usage: "tail [--from F] [--match C] [--count N]", summary: "follow the live feed (default: entries appended from now on), resuming on another endpoint when one fails", run: cliTail, flags: tailFlags},
		"status":  {usage: "status", summary: "every endpoint's view: id, state, leader, ballot, indices, lag", run: cliStatus},
		"members": {usage: "members [add ID URL | remove ID]", summary: "list the members, or add or remove one (needs the cluster key)", run: cliMembers},
	}
}

// cliCommandNames in the order the help lists them.
var cliCommandNames = []string{"append", "get", "range", "tail", "status", "members"}

// cliEnv is what every command shares: the parsed common flags and the
// process's streams.
type cliEnv struct {
	ctx            context.Context
	stdin          io.Reader
	stdout, stderr io.Writer
	endpoints      []string
	key            string
	json           bool // -o json
	timeout        time.Duration
	client         *http.Client
	f              cliFlags
	// next is the endpoint tried first: the last one that answered.
	next int
	// deadline, when set, bounds every call of the command together
	// (members: the look before, the change, the look after).
	deadline time.Time
}

// tryLimit bounds one try at one endpoint: a node that takes the
// connection but does not answer (stopped, overloaded, cut off) costs
// this much, and the next endpoint is tried. It is above a node's
// default --request-timeout (5s), after which a node answers 503 itself.
var tryLimit = 10 * time.Second // a variable for the tests

// cliMain runs command name with args; it returns the exit status.
func cliMain(ctx context.Context, name string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := cliCommands[name]
	fs := flag.NewFlagSet("paxoslog "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoints := fs.String("endpoints", "", "comma-separated node URLs, tried in turn on failure (default: env PAXOSLOG_ENDPOINTS, else http://127.0.0.1:7070)")
	key := fs.String("cluster-key", "", "the cluster key, for members add and remove (default: env PAXOSLOG_CLUSTER_KEY)")
	output := fs.String("o", "text", "output: text or json")
	timeout := fs.Duration("timeout", 30*time.Second, "give up when no endpoint has answered for this long")
	tlsCA := fs.String("tls-ca", "", "PEM bundle of the CA(s) that sign the nodes' certificates (default: the system roots)")
	tlsCert := fs.String("tls-cert", "", "PEM client certificate to show the nodes; needs --tls-key")
	tlsKey := fs.String("tls-key", "", "PEM private key of --tls-cert")
	e := &cliEnv{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	if cmd.flags != nil {
		cmd.flags(fs, &e.f)
	}
	args, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: paxoslog %s\n\n%s.\n\nflags:\n", cmd.usage, cmd.summary)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "paxoslog %s: %v (see paxoslog %s --help)\n", name, err, name)
		return 2
	}
	e.key, e.timeout = *key, *timeout
	err = e.setup(*endpoints, *output, *tlsCA, *tlsCert, *tlsKey)
	if err == nil {
		err = cmd.run(e, args)
	}
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "paxoslog %s: %v\n", name, err)
			return 2
		}
		fmt.Fprintf(stderr, "paxoslog %s: %s\n", name, oneLine(err))
		return 1
	}
	return 0
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments (`paxoslog get 5 -o json`); "--" ends the
// flags, so a value that starts with "-" can follow it.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if endedFlags(fs, args[:len(args)-len(rest)]) {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// endedFlags says whether fs.Parse, having consumed these arguments,
// stopped at a "--" of its own rather than at a flag's value "--"
// (`--key -- VALUE`).
func endedFlags(fs *flag.FlagSet, consumed []string) bool {
	n := len(consumed)
	if n == 0 || consumed[n-1] != "--" {
		return false
	}
	if n == 1 {
		return true
	}
	prev := consumed[n-2]
	name := strings.TrimLeft(prev, "-")
	if !strings.HasPrefix(prev, "-") || strings.Contains(name, "=") || name == "" {
		return true
	}
	f := fs.Lookup(name)
	if f == nil {
		return true
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag() // a bool flag takes no value: this "--" ended the flags
}

// setup checks the common flags and builds the HTTP client.
func (e *cliEnv) setup(endpoints, output, caFile, certFile, keyFile string) error {
	switch output {
	case "text", "json":
		e.json = output == "json"
	default:
		return usagef("-o must be text or json, got %q", output)
	}
	if e.timeout <= 0 {
		return usagef("--timeout must be positive, got %v", e.timeout)
	}
	if e.key == "" {
		e.key = os.Getenv("PAXOSLOG_CLUSTER_KEY")
	}
	if endpoints == "" {
		endpoints = os.Getenv("PAXOSLOG_ENDPOINTS")
	}
	if endpoints == "" {
		endpoints = "http://127.0.0.1:7070"
	}
	for _, part := range strings.Split(endpoints, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "://") {
			part = "http://" + part
		}
		u, err := url.Parse(part)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return usagef("--endpoints entry %q: must look like http://host:port", part)
		}
		e.endpoints = append(e.endpoints, u.Scheme+"://"+u.Host)
	}
	if len(e.endpoints) == 0 {
		return usagef("--endpoints names no endpoint")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadCAPool(caFile)
		if err != nil {
			return err
		}
		tc.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		cert, err := loadKeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		tc.Certificates = []tls.Certificate{cert}
	case certFile != "" || keyFile != "":
		return usagef("--tls-cert and --tls-key go together: give both or neither")
	}
	dialer := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	e.client = &http.Client{Transport: &http.Transport{
		DialContext: dialer.DialContext, TLSClientConfig: tc, TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second,
	}}
	return nil
}

// cliReply is a node's answer.
type cliReply struct {
	endpoint string
	code     int
	body     []byte
}

// cliHTTPError is an answer the command did not want.
type cliHTTPError struct {
	endpoint string
	code     int
	msg      string
}

func (e *cliHTTPError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.endpoint, e.code, http.StatusText(e.code), e.msg)
}

// replyError turns a refusal into an error with the node's message.
func replyError(r *cliReply) *cliHTTPError {
	msg := gjson.GetBytes(r.body, "error").String()
	if msg == "" {
		msg = strings.TrimSpace(string(r.body))
	}
	if first := gjson.GetBytes(r.body, "first"); r.code == http.StatusGone && first.Exists() {
		msg += " (the first retained index is " + first.Raw + ")"
	}
	return &cliHTTPError{endpoint: r.endpoint, code: r.code, msg: msg}
}

// retryable says whether another endpoint (or the same one, a little
// later) may answer differently: no answer at all, or a node that cannot
// serve right now (no leader, no majority, recovering, not a member).
func retryable(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// request is one call to make.
type request struct {
	method, path string
	body         []byte
	header       http.Header
}

// call sends req to the endpoints in turn, starting with the last one
// that answered, until one gives an answer that is not retryable, or
// until --timeout has passed since the first try. A 2xx answer is
// returned; anything else is an error. unsure reports whether an
// earlier try may have been carried out without its answer reaching us
// (see mayHaveHappened): an append or a membership change may then have
// been made already.
func (e *cliEnv) call(req request) (r *cliReply, unsure bool, err error) {
	deadline := e.deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(e.timeout)
	}
	backoff := 50 * time.Millisecond
	var last error
	for {
		endpoint := e.endpoints[e.next]
		r, err := e.once(deadline, endpoint, req)
		switch {
		case err == nil && r.code < 300:
			return r, unsure, nil
		case err == nil && !retryable(r.code):
			return nil, unsure, replyError(r)
		case err == nil:
			last = replyError(r)
		case certificateError(err):
			return nil, unsure, certificateFailure(endpoint, err)
		case last == nil || !errors.Is(err, context.DeadlineExceeded):
			// (a try cut short by the deadline says less than the one before)
			last = fmt.Errorf("%s: %w", endpoint, err)
		}
		unsure = unsure || mayHaveHappened(r, err)
		if e.ctx.Err() != nil {
			return nil, unsure, e.ctx.Err()
		}
		if time.Now().After(deadline) {
			return nil, unsure, fmt.Errorf("no endpoint answered within --timeout %v; the last said: %w", e.timeout, last)
		}
		e.moveOn(deadline, &backoff)
	}
}

// moveOn turns to the next endpoint after a failed try; after a whole
// round of them it first waits a little, longer each round.
func (e *cliEnv) moveOn(deadline time.Time, backoff *time.Duration) {
	e.next = (e.next + 1) % len(e.endpoints)
	if e.next == 0 || len(e.endpoints) == 1 {
		pause(e.ctx, min(*backoff, time.Until(deadline)))
		*backoff = min(2**backoff, time.Second)
	}
}

// certificateFailure is a server certificate that did not verify: final,
// since every endpoint of one cluster has a certificate from the same CA.
func certificateFailure(endpoint string, err error) error {
	return fmt.Errorf("%s: %w (is --tls-ca the CA that signs the nodes' certificates?)", endpoint, cleanURLError(err))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// mayHaveHappened says whether a failed try may have been carried out
// all the same: the request may have reached a node (a connection lost
// after it was made, a try cut short), or a node says it waited for a
// majority in vain (ErrNoQuorum, or a gateway's 504) or stopped while it
// waited (ErrStopped), when the entry or change may still be chosen. A
// refused connection, and a 503 for any other reason (no leader,
// recovering, not a member), did nothing.
func mayHaveHappened(r *cliReply, err error) bool {
	if err != nil {
		var op *net.OpError
		return !(errors.As(err, &op) && op.Op == "dial")
	}
	msg := gjson.GetBytes(r.body, "error").Str
	return r.code == http.StatusGatewayTimeout || (r.code == http.StatusServiceUnavailable &&
		(strings.HasPrefix(msg, ErrNoQuorum.Error()) || strings.HasPrefix(msg, ErrStopped.Error())))
}

// once is one try at one endpoint.
func (e *cliEnv) once(deadline time.Time, endpoint string, req request) (*cliReply, error) {
	ctx, cancel := context.WithDeadline(e.ctx, minTime(deadline, time.Now().Add(tryLimit)))
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, req.method, endpoint+req.path, bytes.NewReader(req.body))
	if err != nil {
		return nil, err
	}
	for k, v := range req.header {
		hr.Header[k] = v
	}
	resp, err := e.client.Do(hr)
	if err != nil {
		return nil, cleanURLError(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &cliReply{endpoint: endpoint, code: resp.StatusCode, body: body}, nil
}

// certificateError says whether err is a server certificate that did
// not verify.
func certificateError(err error) bool {
	var ve *tls.CertificateVerificationError
	return errors.As(err, &ve)
}

// cleanURLError drops net/http's "Post \"url\": " prefix: the endpoint
// is named already.
func cleanURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// write prints one line to stdout.
func (e *cliEnv) write(line []byte) {
	e.stdout.Write(append(line, '\n'))
}

// positiveIndex parses a log index given on the command line.
func positiveIndex(what, s string) (uint64, error) {
	i, err := strconv.ParseUint(s, 10, 64)
	if err != nil || i == 0 {
		return 0, usagef("%s must be a positive integer, got %q", what, s)
	}
	return i, nil
}

func appendFlags(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.key, "key", "", "Idempotency-Key: a retry with the same key appends nothing and prints the first append's index (default: a random key, so that this command's own retries are safe)")
	fs.BoolVar(&f.batch, "batch", false, "read NDJSON from stdin and append every line as one batch, at consecutive indices, all or nothing")
}

// cliAppend: POST /v1/log. Without --key, a random Idempotency-Key makes
// the command's own retries (another endpoint after a lost answer or a
// 503) safe: a node that did append answers the retry with the same
// index.
func cliAppend(e *cliEnv, args []string) error {
	key, batch := e.f.key, e.f.batch
	var body []byte
	switch {
	case len(args) > 1:
		return usagef("append takes one value, got %d arguments (quote the value; for several, use --batch with NDJSON on stdin)", len(args))
	case batch && len(args) == 1 && args[0] != "-":
		return usagef("--batch reads its lines from stdin, not from an argument")
	case len(args) == 1 && args[0] != "-":
		body = []byte(args[0])
	default:
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		body = b
	}
	h := http.Header{}
	if batch {
		h.Set("Content-Type", "application/x-ndjson")
	} else {
		body = bytes.TrimSpace(body)
		if !json.Valid(body) {
			return usagef("the value is not exactly one valid JSON value (a string needs its quotes: '\"hello\"'; several values a line need --batch)")
		}
		h.Set("Content-Type", "application/json")
	}
	if key == "" {
		var b [16]byte
		rand.Read(b[:])
		key = "cli-" + hex.EncodeToString(b[:])
	}
	h.Set("Idempotency-Key", key)
	r, _, err := e.call(request{method: http.MethodPost, path: "/v1/log", body: body, header: h})
	if err != nil {
		return err
	}
	if e.json {
		e.write(bytes.TrimSpace(r.body))
		return nil
	}
	if batch {
		fmt.Fprintf(e.stdout, "%d %d\n", gjson.GetBytes(r.body, "first").Uint(), gjson.GetBytes(r.body, "last").Uint())
	} else {
		fmt.Fprintf(e.stdout, "%d\n", gjson.GetBytes(r.body, "index").Uint())
	}
	if e.f.key != "" && gjson.GetBytes(r.body, "duplicate").Bool() {
		fmt.Fprintf(e.stderr, "paxoslog append: key %q was appended before; nothing new was appended\n", key)
	}
	return nil
}

func getFlags(fs *flag.FlagSet, f *cliFlags) {
	fs.BoolVar(&f.stale, "stale", false, "answer from the node's own copy, without checking that it has every chosen entry")
}

// cliGet: GET /v1/log/<i>. Text output is the value as it was appended.
func cliGet(e *cliEnv, args []string) error {
	if len(args) != 1 {
		return usagef("get takes one index, got %d arguments", len(args))
	}
	i, err := positiveIndex("the index", args[0])
	if err != nil {
		return err
	}
	path := "/v1/log/" + strconv.FormatUint(i, 10)
	if e.f.stale {
		path += "?stale=true"
	}
	r, _, err := e.call(request{method: http.MethodGet, path: path})
	if err != nil {
		return err
	}
	if e.json {
		e.write(bytes.TrimSpace(r.body))
	} else {
		e.write([]byte(gjson.GetBytes(r.body, "data").Raw))
	}
	return nil
}

func rangeFlags(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.from, "from", "", "first index (default: the first retained one)")
	fs.IntVar(&f.limit, "limit", 100, "most entries to print; over 1000 takes several requests")
	fs.BoolVar(&f.stale, "stale", false, "answer from the node's own copy, without checking that it has every chosen entry")
}

// cliRange: GET /v1/log?from=F&limit=L, a page of at most 1000 at a
// time. Both outputs put one entry on a line, its value compacted:
// text as index, tab, value; json as the feed's {"index":i,"data":v}.
func cliRange(e *cliEnv, args []string) error {
	if len(args) > 0 {
		return usagef("range takes no arguments, got %q (use --from and --limit)", args[0])
	}
	if e.f.limit < 1 {
		return usagef("--limit must be positive, got %d", e.f.limit)
	}
	from, err := e.fromFlag()
	if err != nil {
		return err
	}
	w := bufio.NewWriter(e.stdout)
	defer w.Flush()
	left := e.f.limit
	for left > 0 {
		q := url.Values{"limit": {strconv.Itoa(min(left, 1000))}}
		if from > 0 {
			q.Set("from", strconv.FormatUint(from, 10))
		}
		if e.f.stale {
			q.Set("stale", "true")
		}
		r, _, err := e.call(request{method: http.MethodGet, path: "/v1/log?" + q.Encode()})
		if err != nil {
			return err
		}
		entries := gjson.GetBytes(r.body, "entries").Array()
		if len(entries) == 0 {
			return nil
		}
		for _, en := range entries {
			i := en.Get("index").Uint()
			writeEntry(w, e.json, i, []byte(en.Get("data").Raw))
			from = i + 1
		}
		left -= len(entries)
	}
	return nil
}

// fromFlag is --from as an index, 0 when it is not given.
func (e *cliEnv) fromFlag() (uint64, error) {
	if e.f.from == "" {
		return 0, nil
	}
	return positiveIndex("--from", e.f.from)
}

// writeEntry prints one entry on one line.
func writeEntry(w *bufio.Writer, asJSON bool, i uint64, data []byte) {
	var compact bytes.Buffer
	if bytes.ContainsAny(data, "\r\n") && json.Compact(&compact, data) == nil {
		data = compact.Bytes()
	}
	if asJSON {
		w.WriteString(`{"index":`)
		w.WriteString(strconv.FormatUint(i, 10))
		w.WriteString(`,"data":`)
		w.Write(data)
		w.WriteString("}\n")
		return
	}
	w.WriteString(strconv.FormatUint(i, 10))
	w.WriteByte('\t')
	w.Write(data)
	w.WriteByte('\n')
}

func tailFlags(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.from, "from", "", "first index to print (default: the next one appended; 1 for the whole log)")
	fs.StringVar(&f.match, "match", "", `print only entries whose value satisfies this gjson condition, e.g. 'type=="order"'`)
	fs.IntVar(&f.count, "count", 0, "stop after printing this many entries (0: follow until interrupted)")
}

// feedSilence is how long tail waits without a byte before it takes the
// feed for dead: the SSE feed sends a ping every 15 s while idle, so a
// node that was cut off, or a connection that died without a reset, is
// left after this long.
var feedSilence = 45 * time.Second // a variable for the tests

// cliTail follows GET /v1/feed as SSE. When the stream breaks, falls
// silent, or the node ends it (a shutdown, a removal), it opens the feed
// again from the entry after the last one printed, on the next endpoint:
// no entry is printed twice or skipped. It gives up once no endpoint has
// served it an entry, or a stream that lasted, for --timeout.
func cliTail(e *cliEnv, args []string) error {
	if len(args) > 0 {
		return usagef("tail takes no arguments, got %q (use --from)", args[0])
	}
	if e.f.count < 0 {
		return usagef("--count must not be negative, got %d", e.f.count)
	}
	if _, err := compileMatch(e.f.match); err != nil {
		return usagef("--match: %v", err)
	}
	next, err := e.fromFlag()
	if err != nil {
		return err
	}
	if next == 0 {
		// The end of the whole log, not of one node's copy, which may
		// lag: a range read is linearizable.
		r, _, err := e.call(request{method: http.MethodGet, path: "/v1/log?limit=1"})
		if err != nil {
			return err
		}
		next = gjson.GetBytes(r.body, "last").Uint() + 1
	}
	w := bufio.NewWriter(e.stdout)
	defer w.Flush()
	printed := 0
	progress := time.Now() // the last entry printed, or stream that lasted
	backoff := 50 * time.Millisecond
	for {
		q := url.Values{"from": {strconv.FormatUint(next, 10)}}
		if e.f.match != "" {
			q.Set("match", e.f.match)
		}
		body, err := e.openFeed("/v1/feed?"+q.Encode(), progress.Add(e.timeout))
		if err != nil {
			return err
		}
		endpoint, opened, before := e.endpoints[e.next], time.Now(), printed
		done, err := e.readFeed(body, w, &next, &printed)
		body.Close()
		if done || e.ctx.Err() != nil {
			return nil
		}
		why := "the node ended it"
		if err != nil {
			why = oneLine(cleanURLError(err))
		}
		if printed > before || time.Since(opened) > time.Second {
			progress, backoff = time.Now(), 50*time.Millisecond
		} else { // a node that opens feeds and ends them at once: do not spin
			pause(e.ctx, backoff)
			backoff = min(2*backoff, time.Second)
		}
		if time.Since(progress) > e.timeout {
			return fmt.Errorf("no endpoint served the feed within --timeout %v; the last, %s: %s", e.timeout, endpoint, why)
		}
		e.next = (e.next + 1) % len(e.endpoints)
		fmt.Fprintf(e.stderr, "paxoslog tail: the feed from %s stopped (%s); resuming at index %d on %s\n", endpoint, why, next, e.endpoints[e.next])
	}
}

// feedBody is an open feed; Close also ends the watchdog.
type feedBody struct {
	io.ReadCloser
	cancel context.CancelFunc
	idle   *time.Timer
}

func (b *feedBody) Close() error {
	b.idle.Stop()
	b.cancel()
	return b.ReadCloser.Close()
}

// openFeed is call for a streaming answer: the endpoints in turn until
// one opens the feed, or until deadline.
func (e *cliEnv) openFeed(path string, deadline time.Time) (*feedBody, error) {
	backoff := 50 * time.Millisecond
	for {
		endpoint := e.endpoints[e.next]
		ctx, cancel := context.WithCancel(e.ctx)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+path, nil)
		if err != nil {
			cancel()
			return nil, err
		}
		req.Header.Set("Accept", "text/event-stream")
		idle := time.AfterFunc(min(tryLimit, time.Until(deadline)), cancel) // until the answer's header
		resp, err := e.client.Do(req)
		var last error
		switch {
		case err == nil && resp.StatusCode == http.StatusOK && idle.Stop():
			idle.Reset(feedSilence)
			return &feedBody{ReadCloser: resp.Body, cancel: cancel, idle: idle}, nil
		case err == nil:
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			r := &cliReply{endpoint: endpoint, code: resp.StatusCode, body: body}
			if !retryable(r.code) && r.code != http.StatusOK {
				cancel()
				return nil, replyError(r)
			}
			last = replyError(r)
		case certificateError(err):
			cancel()
			return nil, certificateFailure(endpoint, err)
		default:
			last = fmt.Errorf("%s: %w", endpoint, cleanURLError(err))
		}
		idle.Stop()
		cancel()
		if e.ctx.Err() != nil {
			return nil, e.ctx.Err()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no endpoint served the feed within --timeout %v; the last said: %w", e.timeout, last)
		}
		e.moveOn(deadline, &backoff)
	}
}

// readFeed prints the SSE feed's entries until it ends or --count is
// reached (done). Each event's data line is the entry's JSON line; a
// ": ping" comment only says the stream is alive. Every line read puts
// off the watchdog. It moves *next past every entry it prints, and
// flushes whenever no more input is buffered, so that a quiet feed shows
// each entry at once.
func (e *cliEnv) readFeed(body *feedBody, w *bufio.Writer, next *uint64, printed *int) (done bool, err error) {
	r := bufio.NewReaderSize(body, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			body.idle.Reset(feedSilence)
			line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
			if data, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
				i := gjson.GetBytes(data, "index").Uint()
				if i >= *next { // a reconnect never repeats one; be sure
					if e.json {
						w.Write(data)
						w.WriteByte('\n')
					} else {
						writeEntry(w, false, i, []byte(gjson.GetBytes(data, "data").Raw))
					}
					*next = i + 1
					*printed++
					if e.f.count > 0 && *printed >= e.f.count {
						return true, w.Flush()
					}
				}
			}
		}
		if r.Buffered() == 0 {
			w.Flush()
		}
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			if errors.Is(err, context.Canceled) && e.ctx.Err() == nil {
				err = fmt.Errorf("nothing for %v, not even a heartbeat", feedSilence)
			}
			return false, err
		}
	}
}

// cliStatus: GET /v1/status of every endpoint, one row (or one JSON
// line) each. An endpoint that does not answer is reported on stderr and
// makes the exit status 1; the others are still shown.
func cliStatus(e *cliEnv, args []string) error {
	if len(args) > 0 {
		return usagef("status takes no arguments, got %q (use --endpoints)", args[0])
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	if !e.json {
		fmt.Fprintln(tw, "ENDPOINT\tID\tSTATE\tROLE\tLEADER\tBALLOT\tFIRST\tLAST\tCOMMIT_SLOT\tMEMBERS\tLAG_SLOTS")
	}
	failed := 0
	for _, endpoint := range e.endpoints {
		one := &cliEnv{ctx: e.ctx, endpoints: []string{endpoint}, timeout: min(e.timeout, 2*time.Second), client: e.client}
		r, _, err := one.call(request{method: http.MethodGet, path: "/v1/status"})
		if err != nil {
			fmt.Fprintf(e.stderr, "paxoslog status: %s\n", oneLine(err))
			failed++
			continue
		}
		if e.json {
			e.write(bytes.TrimSpace(r.body))
			continue
		}
		s := gjson.ParseBytes(r.body)
		role := "follower"
		switch {
		case s.Get("is_leader").Bool():
			role = "leader"
		case !s.Get("member").Bool():
			role = "not a member"
		case s.Get("recovering").Bool():
			role = "recovering"
		}
		var members, lag []string
		voters := map[string]bool{}
		for _, v := range s.Get("voters").Array() {
			voters[v.Raw] = true
		}
		for _, m := range s.Get("members").Array() {
			if voters[m.Raw] {
				members = append(members, m.Raw)
			} else {
				members = append(members, m.Raw+"(non-voter)")
			}
		}
		for _, p := range s.Get("peers").Array() {
			if s.Get("is_leader").Bool() {
				lag = append(lag, p.Get("id").Raw+":"+p.Get("lag_slots").Raw)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", endpoint, s.Get("id").Raw, s.Get("state").Str, role,
			s.Get("leader").Raw, s.Get("ballot").Str, s.Get("first").Raw, s.Get("last").Raw, s.Get("known_commit_slot").Raw,
			strings.Join(members, ","), dashIfEmpty(strings.Join(lag, ",")))
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d endpoints did not answer", failed, len(e.endpoints))
	}
	return nil
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cliMembers: GET /v1/members; members add ID URL: POST
// /v1/admin/members; members remove ID: DELETE /v1/admin/members/ID.
//
// A change that went unanswered (a lost connection, a 503 for want of a
// majority) may have been made all the same; its retry then answers 409
// (add) or 404 (remove). Only after such a try does the command look at
// the membership: if the change is there now and was not before the
// command began, it was ours, and the command succeeds.
func cliMembers(e *cliEnv, args []string) error {
	var req request
	var check func(members gjson.Result) bool // after an unanswered try: is the change made?
	switch {
	case len(args) == 0:
		req = request{method: http.MethodGet, path: "/v1/members"}
	case args[0] == "add" && len(args) == 3:
		id, err := memberID(args[1])
		if err != nil {
			return err
		}
		u, err := url.Parse(args[2])
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return usagef("the url must look like http://host:port, got %q", args[2])
		}
		body, _ := json.Marshal(map[string]any{"id": id, "url": args[2]})
		req = request{method: http.MethodPost, path: "/v1/admin/members", body: body,
			header: http.Header{"Content-Type": {"application/json"}}}
		check = func(m gjson.Result) bool {
			return m.Get(fmt.Sprintf("members.#(id==%d).url", id)).Str == strings.TrimRight(args[2], "/")
		}
	case args[0] == "remove" && len(args) == 2:
		id, err := memberID(args[1])
		if err != nil {
			return err
		}
		req = request{method: http.MethodDelete, path: fmt.Sprintf("/v1/admin/members/%d", id)}
		check = func(m gjson.Result) bool { return !m.Get(fmt.Sprintf("members.#(id==%d)", id)).Exists() }
	default:
		return usagef("usage: paxoslog members [add ID URL | remove ID], got %q", strings.Join(args, " "))
	}
	if check != nil {
		if e.key == "" {
			return usagef("members %s needs the cluster key: --cluster-key or PAXOSLOG_CLUSTER_KEY", args[0])
		}
		req.header = http.Header{"Authorization": {"Bearer " + e.key}}
		if req.body != nil {
			req.header.Set("Content-Type", "application/json")
		}
	}
	e.deadline = time.Now().Add(e.timeout)
	// madeBefore: the change was there before this command (a true 409
	// or 404), as far as the first endpoint to answer knows.
	madeBefore := true
	if check != nil {
		if m, _, err := e.call(request{method: http.MethodGet, path: "/v1/members"}); err == nil {
			madeBefore = check(gjson.ParseBytes(m.body))
		}
	}
	r, unsure, err := e.call(req)
	var he *cliHTTPError
	if err != nil && unsure && !madeBefore && errors.As(err, &he) && (he.code == http.StatusConflict || he.code == http.StatusNotFound) {
		if m, _, merr := e.call(request{method: http.MethodGet, path: "/v1/members"}); merr == nil && check(gjson.ParseBytes(m.body)) {
			r, err = m, nil
		}
	}
	if err != nil {
		return err
	}
	if e.json {
		e.write(bytes.TrimSpace(r.body))
		return nil
	}
	m := gjson.ParseBytes(r.body)
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tURL\tVOTER\tLEADER")
	leader := m.Get("leader").Raw
	for _, mem := range m.Get("members").Array() {
		mark := ""
		if mem.Get("id").Raw == leader {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", mem.Get("id").Raw, mem.Get("url").Str, mem.Get("voter").Bool(), mark)
	}
	return tw.Flush()
}

// memberID parses a member id on the command line.
func memberID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 31)
	if err != nil || id == 0 {
		return 0, usagef("a member id is an integer from 1 to %d, got %q", 1<<31-1, s)
	}
	return id, nil
}

// firstClause is a summary up to its first semicolon, for the overview.
func firstClause(s string) string {
	s, _, _ = strings.Cut(s, ";")
	return s
}
