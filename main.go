package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oklog/run"
)

func main() {
	os.Exit(Main(context.Background(), os.Args[1:], os.Stderr))
}

// usageError is a bad flag: one line on stderr, exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// options are the parsed command line.
type options struct {
	node       Config
	listen     string
	peers      map[NodeID]string
	clusterKey string
	logLevel   slog.Level
	logJSON    bool
	tls        *tlsSetup // nil: plain HTTP
	memLimit   int64     // the Go runtime's soft memory limit: 0 none, -1 GOMEMLIMIT's
	memAuto    bool      // memLimit is the default: it grows with the dedup window's keys
}

// memoryBase is what a node's default memory limit allows besides twice
// the largest batch body and the dedup window's Idempotency-Keys (their
// buffer, which grows with the keys clients send): the rest of the dedup
// window (12 MiB), the journals' tail segments and their caches (about
// 20 MiB), accepted values until the acceptor's checkpoint and the rest
// of the heap, with room for the collector to work in. At the default
// --max-batch-bytes and before any key the default limit is 90 MiB.
const memoryBase = 58 << 20

// Main runs paxoslog with args and returns the process's exit status.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "bench" {
		return benchMain(ctx, args[1:], os.Stdout, stderr)
	}
	if len(args) > 0 && cliCommands[args[0]] != nil {
		return cliMain(ctx, args[0], args[1:], os.Stdin, os.Stdout, stderr)
	}
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "paxoslog: %v\n", err)
		return 2
	}
	if err := serve(ctx, opts, stderr); err != nil {
		fmt.Fprintf(stderr, "paxoslog: %v\n", err)
		return 1
	}
	return 0
}

// parseFlags turns the command line into options, checking everything
// that can be checked before starting.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("paxoslog", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	id := fs.Uint("id", 1, "this node's id, a positive integer, unique in the cluster")
	listen := fs.String("listen", "127.0.0.1:7070", "host:port that serves clients and peers")
	peers := fs.String("peers", "", "every member, this node included: 1=http://host:port,2=http://... (default: this node alone)")
	join := fs.String("join", "", "instead of --peers: URLs of members of a running cluster that this new node joins, http://host:port,... (it waits until added: POST /v1/admin/members)")
	data := fs.String("data", "", "where this node keeps its state (default ./paxoslog-data/<id>)")
	key := fs.String("cluster-key", "", "shared secret peers present to each other (default: env PAXOSLOG_CLUSTER_KEY)")
	maxEntry := fs.Int("max-entry-bytes", 1<<20, "largest accepted append body in bytes (for a batch: each entry)")
	maxBatchEntries := fs.Int("max-batch-entries", 10_000, fmt.Sprintf("most entries in one batch append (application/x-ndjson), at most %d", maxSlotValues))
	maxBatchBytes := fs.Int("max-batch-bytes", 16<<20, fmt.Sprintf("largest batch append body in bytes, at most %d", maxSlotBytes*4))
	heartbeat := fs.Duration("heartbeat", 50*time.Millisecond, "leader heartbeat interval")
	election := fs.Duration("election-timeout", 500*time.Millisecond, "silence before a follower campaigns (randomised up to twice this)")
	reqTimeout := fs.Duration("request-timeout", 5*time.Second, "how long an append or read waits for a majority before 503")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	slowSync := fs.Duration("slow-sync", 100*time.Millisecond, "log a warning for an fsync slower than this")
	retainEntries := fs.Int("retain-entries", 0, "keep the last this many entries (0: no limit; the last entry always stays)")
	retainAge := fs.Duration("retain-age", 0, "drop entries applied longer ago than this (0: no limit; the last entry always stays)")
	retainBytes := fs.Int64("retain-bytes", 0, "keep the client log (--data/log) under about this many bytes on disk (0: no limit; Idempotency-Keys are kept apart, in --data/dedup)")
	memLimit := fs.Int64("memory-limit", 0, "soft limit in bytes on the Go heap and runtime: the collector works harder as memory nears it (0: none; default 58 MiB plus twice --max-batch-bytes plus the dedup window's Idempotency-Keys, 90 MiB before any key at the defaults, unless GOMEMLIMIT is set)")
	tlsCert := fs.String("tls-cert", "", "PEM certificate (chain) to serve HTTPS with; needs --tls-key")
	tlsKey := fs.String("tls-key", "", "PEM private key of --tls-cert")
	tlsCA := fs.String("tls-ca", "", "PEM bundle of the CA(s) that sign every member's certificate: peers verify each other (mutual TLS)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: paxoslog %-40s %s\n", "[flags]", "run a node (flags below)")
			for _, name := range cliCommandNames {
				fmt.Fprintf(stderr, "       paxoslog %-40s %s\n", cliCommands[name].usage, firstClause(cliCommands[name].summary))
			}
			fmt.Fprintf(stderr, "       paxoslog %-40s %s\n\npaxoslog COMMAND --help tells more.\n\nflags of a node:\n", "bench [flags]", "the load tool")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, usagef("%v (see --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if *id == 0 || *id >= 1<<31 {
		return nil, usagef("--id must be an integer from 1 to %d, got %d", 1<<31-1, *id)
	}
	o := &options{listen: *listen, clusterKey: *key}
	if o.clusterKey == "" {
		o.clusterKey = os.Getenv("PAXOSLOG_CLUSTER_KEY")
	}
	o.node = Config{
		ID: NodeID(*id), DataDir: *data, MaxEntryBytes: *maxEntry,
		MaxBatchEntries: *maxBatchEntries, MaxBatchBytes: *maxBatchBytes,
		HeartbeatInterval: *heartbeat, ElectionTimeout: *election, RequestTimeout: *reqTimeout,
		RetainEntries: *retainEntries, RetainAge: *retainAge, RetainBytes: *retainBytes,
	}
	if *retainEntries < 0 || *retainAge < 0 || *retainBytes < 0 {
		return nil, usagef("--retain-entries, --retain-age and --retain-bytes must not be negative")
	}
	if _, port, err := net.SplitHostPort(*listen); err != nil {
		return nil, usagef("--listen must be host:port, got %q", *listen)
	} else if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && port != "0") {
		return nil, usagef("--listen port must be a number from 0 to 65535, got %q", port)
	}
	if *maxEntry < 1 {
		return nil, usagef("--max-entry-bytes must be positive, got %d", *maxEntry)
	}
	if *maxBatchEntries < 1 || *maxBatchEntries > maxSlotValues {
		return nil, usagef("--max-batch-entries must be an integer from 1 to %d, got %d", maxSlotValues, *maxBatchEntries)
	}
	if *maxBatchBytes < 1 || *maxBatchBytes > maxSlotBytes*4 {
		return nil, usagef("--max-batch-bytes must be an integer from 1 to %d, got %d", maxSlotBytes*4, *maxBatchBytes)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case *memLimit < 0:
		return nil, usagef("--memory-limit must not be negative, got %d", *memLimit)
	case set["memory-limit"]:
		o.memLimit = *memLimit
	case os.Getenv("GOMEMLIMIT") != "":
		o.memLimit = -1
	default:
		o.memLimit = memoryBase + 2*int64(*maxBatchBytes)
		o.memAuto = true
	}
	if *heartbeat <= 0 || *election <= *heartbeat || *reqTimeout <= 0 {
		return nil, usagef("need 0 < --heartbeat < --election-timeout and a positive --request-timeout")
	}
	switch *logFormat {
	case "text", "json":
		o.logJSON = *logFormat == "json"
	default:
		return nil, usagef("--log-format must be text or json, got %q", *logFormat)
	}
	if *slowSync <= 0 {
		return nil, usagef("--slow-sync must be positive, got %v", *slowSync)
	}
	o.node.SlowSync = *slowSync
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, usagef("--log-level must be debug, info, warn or error, got %q", *logLevel)
	}
	t, err := loadTLS(*tlsCert, *tlsKey, *tlsCA)
	if err != nil {
		return nil, err
	}
	o.tls = t
	if *join != "" {
		if *peers != "" {
			return nil, usagef("--join and --peers cannot go together: --join for a node that joins a running cluster, --peers for one that starts with it")
		}
		urls, err := parseJoin(*join)
		if err != nil {
			return nil, err
		}
		o.node.JoinURLs = map[NodeID]string{}
		for i, u := range urls {
			id := joinID(i)
			o.node.Join = append(o.node.Join, id)
			o.node.JoinURLs[id] = u
		}
		if err := checkPeerSchemes(o.node.JoinURLs, o.tls); err != nil {
			return nil, err
		}
		o.peers = map[NodeID]string{}
	} else if *peers == "" {
		scheme := "http://"
		if o.tls != nil {
			scheme = "https://"
		}
		o.peers = map[NodeID]string{o.node.ID: scheme + *listen}
	} else {
		p, err := parsePeers(*peers)
		if err != nil {
			return nil, err
		}
		if _, ok := p[o.node.ID]; !ok {
			return nil, usagef("--peers does not list this node's own id %d", o.node.ID)
		}
		o.peers = p
	}
	if err := checkPeerSchemes(o.peers, o.tls); err != nil {
		return nil, err
	}
	for id := range o.peers {
		o.node.Members = append(o.node.Members, id)
	}
	o.node.PeerURLs = o.peers
	sort.Slice(o.node.Members, func(i, j int) bool { return o.node.Members[i] < o.node.Members[j] })
	if o.node.DataDir == "" {
		o.node.DataDir = filepath.Join("paxoslog-data", strconv.Itoa(int(o.node.ID)))
	}
	if err := checkDataDir(o.node.DataDir); err != nil {
		return nil, err
	}
	return o, nil
}

// parsePeers parses "1=http://host:port,2=http://...".
func parsePeers(s string) (map[NodeID]string, error) {
	out := make(map[NodeID]string)
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, usagef("--peers entry %q is not id=url", part)
		}
		id, err := strconv.ParseUint(strings.TrimSpace(k), 10, 31)
		if err != nil || id == 0 {
			return nil, usagef("--peers entry %q: the id must be a positive integer", part)
		}
		u, err := url.Parse(strings.TrimSpace(v))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("--peers entry %q: the url must look like http://host:port", part)
		}
		if _, dup := out[NodeID(id)]; dup {
			return nil, usagef("--peers lists id %d twice", id)
		}
		out[NodeID(id)] = strings.TrimRight(u.String(), "/")
	}
	return out, nil
}

// joinID is the transport id of the i-th --join URL: above every member
// id (those stay below 2^31), so the two never meet.
func joinID(i int) NodeID { return NodeID(1<<31 + i) }

// parseJoin parses "http://host:port,http://...".
func parseJoin(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		u, err := url.Parse(part)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("--join entry %q: the url must look like http://host:port", part)
		}
		out = append(out, strings.TrimRight(u.String(), "/"))
	}
	return out, nil
}

// checkDataDir makes sure the data directory exists and is writable.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return usagef("--data %s: cannot create it: %v", dir, err)
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return usagef("--data %s: not writable: %v", dir, err)
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	if _, err := os.ReadDir(dir); err != nil {
		return usagef("--data %s: not readable: %v", dir, err)
	}
	return nil
}

// serve runs the node, its HTTP server and the signal handler in one
// oklog/run group until one of them ends.
func serve(ctx context.Context, o *options, stderr io.Writer) error {
	var handler slog.Handler = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel})
	if o.logJSON {
		handler = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: o.logLevel})
	}
	logger := slog.New(handler)
	o.node.Logger = logger
	switch {
	case o.memLimit > 0:
		debug.SetMemoryLimit(o.memLimit)
	case o.memLimit == 0:
		debug.SetMemoryLimit(math.MaxInt64)
	}
	var peerTLS *tls.Config
	if o.tls != nil {
		peerTLS = o.tls.clientConfig()
	}
	transport := newPeerTransport(o.peers, o.clusterKey, peerTLS)
	defer transport.closeIdle()
	node, err := NewNode(o.node, transport)
	if err != nil {
		return err
	}
	defer node.Close()
	if o.memAuto {
		node.learner.watchDedupKeys(func(keys int) { debug.SetMemoryLimit(o.memLimit + int64(keys)) })
	}
	transport.setCluster(node.ClusterID())
	node.onIdentity = func() { transport.setCluster(node.ClusterID()) }
	transport.setPeers(node.peerURLs()) // the membership recorded in --data may name others than --peers
	node.onMembership = func(*membership) { transport.setPeers(node.peerURLs()) }
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	shutdown, endFeeds := context.WithCancel(context.Background())
	defer endFeeds()
	srv := &http.Server{
		Handler:           newHandler(node, handlerOptions{ClusterKey: o.clusterKey, Shutdown: shutdown, PeerCerts: o.tls.mutual()}),
		ReadHeaderTimeout: 10 * time.Second,
		// Failed TLS handshakes (a peer with a certificate from another
		// CA, say) are logged here.
		ErrorLog: slog.NewLogLogger(handler, slog.LevelWarn),
	}
	if o.tls != nil {
		srv.TLSConfig = o.tls.serverConfig()
	}
	srv.RegisterOnShutdown(endFeeds)
	var memLimit any = "none"
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		memLimit = fmt.Sprintf("%dMiB", l>>20)
	}
	logger.Info("paxoslog serving", "id", o.node.ID, "listen", ln.Addr().String(), "tls", o.tls.String(), "members", len(o.peers), "data", o.node.DataDir,
		"memory_limit", memLimit)

	// Interrupts run in this order: the node hands leadership over while
	// the HTTP server still serves peers and clients, then HTTP stops.
	var g run.Group
	{
		nctx, cancel := context.WithCancel(ctx)
		g.Add(func() error {
			if err := node.Run(nctx); err != nil {
				return fmt.Errorf("node stopped: %w", err)
			}
			return nil
		}, func(error) {
			// A planned stop: hand leadership over and let in-flight
			// appends finish before the node stops.
			sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
			node.Shutdown(sctx)
			scancel()
			cancel()
		})
	}
	{
		g.Add(func() error {
			serveLn := srv.Serve
			if srv.TLSConfig != nil {
				// The certificate is in TLSConfig already.
				serveLn = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
			}
			if err := serveLn(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http: %w", err)
			}
			return nil
		}, func(error) {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			srv.Close()
		})
	}
	g.Add(run.SignalHandler(ctx, os.Interrupt, syscall.SIGTERM))
	err = g.Run()
	if errors.Is(err, run.ErrSignal) || ctx.Err() != nil {
		// err is nil when the node was first to notice ctx end.
		reason := err
		if !errors.Is(err, run.ErrSignal) {
			reason = context.Cause(ctx)
		}
		logger.Info("shutting down", "reason", reason.Error())
		return nil
	}
	return err
}
