package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// cluster_test.go: an in-process cluster whose peer messages pass through
// a network the test controls, and whose nodes crash and restart on their
// own data directories. The checks every scenario ends with live here too.

// testSeed returns the seed for a randomised test, from PAXOSLOG_SEED if
// set, and logs it so a failure can be replayed.
func testSeed(t *testing.T) int64 {
	t.Helper()
	seed := time.Now().UnixNano()
	if s := os.Getenv("PAXOSLOG_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("PAXOSLOG_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay: PAXOSLOG_SEED=%d go test -race -run '^%s$' .)", seed, seed, t.Name())
	return seed
}

// faults are the network's misbehaviour, all off by default.
type faults struct {
	Drop     float64       // chance a request, or its reply, is lost
	Dup      float64       // chance a request is delivered twice
	MaxDelay time.Duration // each delivery waits up to this long (reorders)
}

// sendHook can intercept a message before delivery; returning false drops it.
type sendHook func(from, to NodeID, method string, body []byte) bool

// memNet delivers peer messages between in-process nodes.
type memNet struct {
	mu     sync.Mutex
	rng    *rand.Rand
	nodes  map[NodeID]*Node
	cut    map[[2]NodeID]bool
	slow   map[NodeID]time.Duration // extra delay on every message to or from a node
	faults faults
	hook   sendHook
}

func newMemNet(seed int64) *memNet {
	return &memNet{rng: rand.New(rand.NewSource(seed)), nodes: map[NodeID]*Node{}, cut: map[[2]NodeID]bool{},
		slow: map[NodeID]time.Duration{}}
}

type memTransport struct {
	net  *memNet
	from NodeID
}

var errUnreachable = errors.New("unreachable")

func (t memTransport) Call(ctx context.Context, to NodeID, method string, body []byte) ([]byte, error) {
	m := t.net
	m.mu.Lock()
	src, dst := m.nodes[t.from], m.nodes[to]
	blocked := src == nil || dst == nil || m.cut[[2]NodeID{t.from, to}]
	f, hook := m.faults, m.hook
	dropReq := f.Drop > 0 && m.rng.Float64() < f.Drop
	dropResp := f.Drop > 0 && m.rng.Float64() < f.Drop
	dup := f.Dup > 0 && m.rng.Float64() < f.Dup
	var delay time.Duration
	if f.MaxDelay > 0 {
		delay = time.Duration(m.rng.Int63n(int64(f.MaxDelay)))
	}
	delay += m.slow[t.from] + m.slow[to]
	m.mu.Unlock()
	if blocked || dropReq {
		return nil, errUnreachable
	}
	if hook != nil && !hook(t.from, to, method, body) {
		return nil, errUnreachable
	}
	if delay > 0 {
		select {
		case <-time.After(delay): // message latency, not synchronisation
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	cluster := src.ClusterID()
	if dup {
		go dst.Handle(context.Background(), cluster, method, body)
	}
	out, err := dst.Handle(ctx, cluster, method, body)
	m.mu.Lock()
	lost := m.cut[[2]NodeID{to, t.from}] || m.nodes[t.from] == nil
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if lost || dropResp {
		return nil, errUnreachable
	}
	return out, nil
}

func (m *memNet) setFaults(f faults) {
	m.mu.Lock()
	m.faults = f
	m.mu.Unlock()
}

func (m *memNet) setHook(h sendHook) {
	m.mu.Lock()
	m.hook = h
	m.mu.Unlock()
}

// partition cuts every link between the groups; nodes in no group keep
// their links.
func (m *memNet) partition(groups ...[]NodeID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, a := range groups {
		for j, b := range groups {
			if i == j {
				continue
			}
			for _, x := range a {
				for _, y := range b {
					m.cut[[2]NodeID{x, y}] = true
				}
			}
		}
	}
}

// randomPartition cuts the members into two random non-empty groups.
func (c *testCluster) randomPartition(rng *rand.Rand) {
	perm := rng.Perm(len(c.members))
	cut := 1 + rng.Intn(len(c.members)-1)
	var a, b []NodeID
	for i, p := range perm {
		if i < cut {
			a = append(a, c.members[p])
		} else {
			b = append(b, c.members[p])
		}
	}
	c.net.heal()
	c.net.partition(a, b)
}

func (m *memNet) heal() {
	m.mu.Lock()
	m.cut = map[[2]NodeID]bool{}
	m.mu.Unlock()
}

// setSlow delays every message to or from id by d (0 to undo).
func (m *memNet) setSlow(id NodeID, d time.Duration) {
	m.mu.Lock()
	m.slow[id] = d
	m.mu.Unlock()
}

// testNode is a running node of a testCluster.
type testNode struct {
	node   *Node
	cancel context.CancelFunc
	done   chan error
}

// testCluster is a cluster in one process.
type testCluster struct {
	t       *testing.T
	net     *memNet
	members []NodeID // every node started, members or not (joiners added later)
	// founders are the members the cluster started with: the --peers
	// every node but a joiner is started with, as an operator would.
	founders []NodeID
	dirs     map[NodeID]string
	seed     int64
	cfg      Config // template

	life map[NodeID]*sync.Mutex // held while a node starts or crashes

	mu      sync.Mutex
	joiners map[NodeID]bool // added after the start: they join (Config.Join)
	nodes   map[NodeID]*testNode
	acked   map[string]Index  // data -> index acknowledged to a client
	armed   map[NodeID]string // crash the node at this acceptor hook point
	// atPoint, if set, runs each time a node's acceptor reaches a hook
	// point ("written", "synced"), before armed is looked at: a test
	// may hold the acceptor there.
	atPoint func(id NodeID, point string)
	boots   int

	memMu  sync.Mutex
	chosen map[Slot]*membership // every membership a node adopted, by the slot that chose it

	histMu  sync.Mutex
	history map[Index]string // every entry any node applied, by index (retention drops none of it)
	histBy  map[Index]NodeID
}

// recordApplied notes that node id applied data at index i: every node
// must apply the same entry at every index (L2), whatever it retains.
func (c *testCluster) recordApplied(id NodeID, i Index, data []byte) {
	c.histMu.Lock()
	defer c.histMu.Unlock()
	if prev, ok := c.history[i]; ok && prev != string(data) {
		c.t.Errorf("index %d: node %d applied %s, node %d applied %s", i, id, data, c.histBy[i], prev)
		return
	}
	c.history[i], c.histBy[i] = string(data), id
}

// fullLog is the log every node applied, from index 1, entries that
// retention dropped since included.
func (c *testCluster) fullLog() []string {
	c.t.Helper()
	c.histMu.Lock()
	defer c.histMu.Unlock()
	out := make([]string, len(c.history))
	for i, d := range c.history {
		if i < 1 || int(i) > len(out) {
			c.t.Fatalf("the applied log has a hole: index %d of %d", i, len(out))
		}
		out[i-1] = d
	}
	return out
}

func testConfig() Config {
	var logger *slog.Logger
	if v := os.Getenv("PAXOSLOG_TEST_LOG"); v != "" { // debug, info, warn or error
		var level slog.Level
		level.UnmarshalText([]byte(v))
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	return Config{
		Logger:            logger,
		HeartbeatInterval: 10 * time.Millisecond,
		ElectionTimeout:   80 * time.Millisecond,
		RequestTimeout:    3 * time.Second,
		CheckInterval:     100 * time.Millisecond,
	}
}

func newTestCluster(t *testing.T, size int, seed int64) *testCluster {
	t.Helper()
	return newTestClusterWith(t, size, seed, nil)
}

// newTestClusterWith is newTestCluster with a change to the nodes' Config.
func newTestClusterWith(t *testing.T, size int, seed int64, tweak func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{
		t: t, net: newMemNet(seed), dirs: map[NodeID]string{}, seed: seed, cfg: testConfig(),
		nodes: map[NodeID]*testNode{}, acked: map[string]Index{}, joiners: map[NodeID]bool{},
		life: map[NodeID]*sync.Mutex{}, armed: map[NodeID]string{}, chosen: map[Slot]*membership{},
		history: map[Index]string{}, histBy: map[Index]NodeID{},
	}
	if tweak != nil {
		tweak(&c.cfg)
	}
	base := t.TempDir()
	for i := 1; i <= size; i++ {
		id := NodeID(i)
		c.members = append(c.members, id)
		c.dirs[id] = filepath.Join(base, fmt.Sprint(i))
		c.life[id] = new(sync.Mutex)
	}
	c.founders = append([]NodeID(nil), c.members...)
	for _, id := range c.members {
		c.start(id)
	}
	t.Cleanup(c.stopAll)
	return c
}

// start opens and runs node id on its data directory, unless it runs.
func (c *testCluster) start(id NodeID) {
	c.t.Helper()
	c.life[id].Lock()
	defer c.life[id].Unlock()
	if c.node(id) != nil {
		return
	}
	// A blank --data (a lost disk) is started, as an operator would,
	// with the members of now: a founder's --peers may name only members
	// that were removed since. Otherwise the recorded membership wins
	// over --peers, which stay the founders.
	var current []NodeID
	if _, err := os.Stat(filepath.Join(c.dirs[id], identityFile)); err != nil {
		if m := c.latestMembership(); m.Slot > 0 && slices.Contains(m.ids(), id) {
			current = m.ids()
		}
	}
	cfg := c.cfg
	c.mu.Lock()
	cfg.ID, cfg.Members, cfg.DataDir = id, append([]NodeID(nil), c.founders...), c.dirs[id]
	if current != nil {
		cfg.Members = current
	}
	if c.joiners[id] {
		cfg.Members = nil
		for _, o := range c.members {
			if o != id {
				cfg.Join = append(cfg.Join, o)
			}
		}
	}
	c.boots++
	cfg.Seed = c.seed*1000 + int64(c.boots)
	c.mu.Unlock()
	n, err := NewNode(cfg, memTransport{net: c.net, from: id})
	if err != nil {
		c.t.Fatalf("start node %d: %v", id, err)
	}
	n.onMembership = func(m *membership) { c.recordMembership(id, m) }
	n.onApply = func(i Index, data []byte) { c.recordApplied(id, i, data) }
	n.acceptor.hook = func(point string) error {
		c.mu.Lock()
		at := c.atPoint
		c.mu.Unlock()
		if at != nil {
			at(id, point)
		}
		c.mu.Lock()
		fire := c.armed[id] == point
		if fire {
			delete(c.armed, id)
		}
		c.mu.Unlock()
		if !fire {
			return nil
		}
		go c.crash(id)
		return fmt.Errorf("node %d crashed at %q: %w", id, point, errInjected)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{node: n, cancel: cancel, done: make(chan error, 1)}
	c.mu.Lock()
	c.nodes[id] = tn
	c.mu.Unlock()
	c.net.mu.Lock()
	c.net.nodes[id] = n
	c.net.mu.Unlock()
	go func() { tn.done <- n.Run(ctx) }()
}

// arm makes node id crash the next time its acceptor reaches point
// ("written": journaled, not yet synced; "synced": before the reply).
func (c *testCluster) arm(id NodeID, point string) {
	c.mu.Lock()
	c.armed[id] = point
	c.mu.Unlock()
}

// crash kills node id as a power cut would: unsynced writes are lost.
func (c *testCluster) crash(id NodeID) {
	c.life[id].Lock()
	defer c.life[id].Unlock()
	c.mu.Lock()
	tn := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if tn == nil {
		return
	}
	c.net.mu.Lock()
	delete(c.net.nodes, id)
	c.net.mu.Unlock()
	tn.cancel()
	if err := <-tn.done; err != nil {
		c.t.Logf("node %d stopped with: %v", id, err)
	}
	if err := tn.node.crash(); err != nil {
		c.t.Errorf("crash node %d: %v", id, err)
	}
}

func (c *testCluster) restart(id NodeID) {
	c.t.Helper()
	c.crash(id)
	c.start(id)
}

func (c *testCluster) stopAll() {
	for _, id := range c.members {
		c.life[id].Lock()
		c.mu.Lock()
		tn := c.nodes[id]
		delete(c.nodes, id)
		c.mu.Unlock()
		if tn != nil {
			c.net.mu.Lock()
			delete(c.net.nodes, id)
			c.net.mu.Unlock()
			tn.cancel()
			<-tn.done
			tn.node.Close()
		}
		c.life[id].Unlock()
	}
}

func (c *testCluster) node(id NodeID) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tn := c.nodes[id]; tn != nil {
		return tn.node
	}
	return nil
}

func (c *testCluster) live() []NodeID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []NodeID
	for _, id := range c.members {
		if c.nodes[id] != nil {
			out = append(out, id)
		}
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond) // polling interval of a condition wait
	}
}

// leader waits until the live nodes agree on one leader that leads.
func (c *testCluster) leader(d time.Duration) NodeID {
	c.t.Helper()
	var leader NodeID
	waitFor(c.t, d, "a leader", func() bool {
		leader = 0
		for _, id := range c.live() {
			n := c.node(id)
			if n == nil {
				continue
			}
			if _, _, leading := n.proposer.leaderInfo(); leading {
				leader = id
			}
		}
		return leader != 0
	})
	return leader
}

// appendTo appends data through node id, recording the ack.
func (c *testCluster) appendTo(ctx context.Context, id NodeID, data string) (Index, error) {
	a, err := c.appendKeyed(ctx, id, data, "")
	return a.Index, err
}

// appendKeyed appends data with an idempotency key through node id,
// recording the ack; an acknowledged data must always get one index.
func (c *testCluster) appendKeyed(ctx context.Context, id NodeID, data, key string) (Applied, error) {
	n := c.node(id)
	if n == nil {
		return Applied{}, errUnreachable
	}
	a, err := n.Append(ctx, []byte(data), key)
	idx := a.Index
	if err == nil {
		c.mu.Lock()
		if prev, ok := c.acked[data]; ok && prev != idx {
			c.mu.Unlock()
			return a, fmt.Errorf("%s acknowledged twice: at %d and %d", data, prev, idx)
		}
		c.acked[data] = idx
		c.mu.Unlock()
	}
	return a, err
}

// mustAppend appends through id and fails the test on error.
func (c *testCluster) mustAppend(id NodeID, data string) Index {
	c.t.Helper()
	idx, err := c.appendTo(context.Background(), id, data)
	if err != nil {
		c.t.Fatalf("append %s via %d: %v", data, id, err)
	}
	return idx
}

// logOf returns the data strings of a node's retained log, from its first
// retained index (retention may move it while this reads: then it reads
// again).
func logOf(t *testing.T, n *Node) []string {
	t.Helper()
	_, out := retainedLog(t, n)
	return out
}

// retainedLog returns a node's first retained index and the entries from it.
func retainedLog(t *testing.T, n *Node) (Index, []string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		first, last := n.learner.Bounds()
		var out []string
		var err error
		for i := first; i <= last && err == nil; i++ {
			var e LogEntry
			if e, err = n.learner.Get(i); err == nil {
				out = append(out, string(e.Data))
			}
		}
		if err == nil {
			return first, out
		}
		if !errors.Is(err, ErrCompacted) || attempt > 100 {
			t.Fatalf("node %d: reading %d..%d: %v", n.cfg.ID, first, last, err)
		}
	}
}

// check waits for the live nodes to converge, then asserts the log
// invariants: every node holds the same entry at every index, indices are
// dense, every acknowledged append is at its index exactly once.
func (c *testCluster) check() {
	c.t.Helper()
	live := c.live()
	if len(live) == 0 {
		c.t.Fatal("no live nodes to check")
	}
	// A leader that has recovered every slot its first round found: after
	// a restart of every node, what was chosen but not yet learned
	// anywhere is known chosen only once a leader has recovered it.
	waitFor(c.t, 20*time.Second, "a leader that has recovered its predecessors' slots", func() bool {
		for _, id := range live {
			if n := c.node(id); n != nil && n.proposer.recoveredLeader() {
				return true
			}
		}
		return false
	})
	// Converge: every live node applies up to the highest commit any knows.
	waitFor(c.t, 20*time.Second, "live nodes to converge", func() bool {
		var target Slot
		for _, id := range live {
			if n := c.node(id); n != nil {
				target = max(target, n.learner.KnownCommit())
			}
		}
		for _, id := range live {
			if n := c.node(id); n == nil || n.learner.Applied() < target {
				return false
			}
		}
		return true
	})
	// Every node's retained range [first, last], compared index by index
	// (retention may leave nodes with different first indices).
	ref := map[Index]string{}
	refFrom := map[Index]NodeID{}
	var maxLast Index
	for _, id := range live {
		first, entries := retainedLog(c.t, c.node(id))
		for k, d := range entries {
			i := first + Index(k)
			if prev, ok := ref[i]; ok && prev != d {
				c.t.Fatalf("index %d: node %d has %s, node %d has %s", i, id, d, refFrom[i], prev)
			}
			ref[i], refFrom[i] = d, id
			maxLast = max(maxLast, i)
		}
	}
	for _, id := range live {
		if n := c.node(id); n != nil {
			if a := n.check.alarm(); a != nil {
				c.t.Fatalf("node %d raised a replica alarm over logs that agree: %+v", id, *a)
			}
		}
	}
	seen := map[string]Index{}
	for i, d := range ref {
		if j, dup := seen[d]; dup {
			c.t.Fatalf("%s is in the log twice: at %d and %d", d, j, i)
		}
		seen[d] = i
	}
	c.histMu.Lock()
	for i, d := range ref {
		if h, ok := c.history[i]; ok && h != d {
			c.t.Fatalf("index %d holds %s, but %s was applied there", i, d, h)
		}
	}
	for i, d := range c.history { // entries retention dropped are checked too
		if j, dup := seen[d]; dup && j != i {
			c.t.Fatalf("%s was applied at %d and at %d", d, j, i)
		}
		seen[d] = i
	}
	c.histMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for d, idx := range c.acked {
		got, ok := ref[idx]
		if !ok {
			c.histMu.Lock()
			got, ok = c.history[idx]
			c.histMu.Unlock()
		}
		if idx > maxLast || !ok || got != d {
			c.t.Fatalf("acknowledged %s at %d, the log (to %d) holds %q there", d, idx, maxLast, got)
		}
	}
	c.t.Logf("checked %d live nodes: %d entries, %d acknowledged appends", len(live), maxLast, len(c.acked))
}

// load runs clients appending through random live nodes until stop is
// closed, counting acknowledgements.
type load struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	acks  int
	fails int
	spans [][2]time.Time // start and end of each acknowledged append
}

// firstAckSince returns the end of the earliest-ending acknowledged append
// that started after t.
func (l *load) firstAckSince(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var best time.Time
	for _, s := range l.spans {
		if s[0].After(t) && (best.IsZero() || s[1].Before(best)) {
			best = s[1]
		}
	}
	return best, !best.IsZero()
}

func (c *testCluster) startLoad(clients int) *load {
	l := &load{stop: make(chan struct{})}
	for w := 0; w < clients; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewSource(c.seed + int64(w)))
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				live := c.live()
				if len(live) == 0 {
					time.Sleep(time.Millisecond) // nobody to talk to yet
					continue
				}
				id := live[rng.Intn(len(live))]
				data, _ := json.Marshal(map[string]int{"w": w, "i": i})
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				start := time.Now()
				_, err := c.appendTo(ctx, id, string(data))
				cancel()
				l.mu.Lock()
				if err == nil {
					l.acks++
					l.spans = append(l.spans, [2]time.Time{start, time.Now()})
				} else {
					l.fails++
				}
				l.mu.Unlock()
				if err != nil && !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrStopped) && !errors.Is(err, ErrRecovering) &&
					!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, errUnreachable) {
					c.t.Errorf("append: %v", err)
				}
			}
		}()
	}
	return l
}

func (l *load) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acks
}

func (l *load) halt() (acks, fails int) {
	close(l.stop)
	l.wg.Wait()
	return l.acks, l.fails
}

// recoveredLeader reports whether this node leads and has had chosen
// every slot its first round recovered.
func (p *Proposer) recoveredLeader() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ls != nil && p.ls.commit >= p.ls.recoverTo
}
