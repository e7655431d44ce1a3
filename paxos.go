package main

import (
	"context"
	"crypto/rand"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// paxos.go holds what the roles share: ballots, slots and indices, the
// messages, the Transport, and the Node that wires one acceptor, one
// proposer and one learner together.
//
// Vocabulary (one word per concept, as in the paper):
//   - Slot: one Paxos instance; slots 1, 2, 3, … are decided in order of use.
//   - Value: what a slot decides: a batch of client entries, or a no-op (no
//     entries). A value is Chosen once a majority of acceptors accepted it
//     under one ballot.
//   - Index: the client-visible position of an entry: dense, from 1, no
//     holes. Chosen slots are applied in slot order; each entry of a slot's
//     value takes the next index; a no-op takes a slot and no index.

// NodeID identifies a member of the cluster; ids are positive.
type NodeID uint32

// Slot numbers a Paxos instance.
type Slot uint64

// Index numbers an entry of the client log.
type Index uint64

// Ballot is a proposal number N.ID: ordered by Round, then by Node, so two
// proposers never share one. The zero Ballot is below every real one.
type Ballot struct {
	Round uint64 `json:"r"`
	Node  NodeID `json:"n"`
}

// Less reports whether b orders before o.
func (b Ballot) Less(o Ballot) bool {
	if b.Round != o.Round {
		return b.Round < o.Round
	}
	return b.Node < o.Node
}

// IsZero reports whether b is the zero ballot.
func (b Ballot) IsZero() bool { return b == Ballot{} }

func (b Ballot) String() string { return fmt.Sprintf("%d.%d", b.Round, b.Node) }

// EntryID names one client append for deduplication: the node that took it
// plus random bits. The learner applies an entry whose id was applied within
// the last Config.DedupWindow indices as a duplicate (it gets no new index), which
// makes it safe for nodes to resend pending entries after a leader change.
type EntryID [16]byte

func (id EntryID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText encodes the id as hex.
func (id EntryID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hex id.
func (id *EntryID) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(id) {
		return fmt.Errorf("entry id: want %d hex digits, got %d", 2*len(id), len(b))
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// entryIDs makes entry ids: the node id, 64 random bits drawn once per
// process, and a counter, so ids are unique across nodes and restarts
// without a system call per append.
type entryIDs struct {
	node  NodeID
	boot  uint64
	count atomic.Uint32
}

func newEntryIDs(node NodeID) *entryIDs {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on supported platforms
	}
	return &entryIDs{node: node, boot: binary.BigEndian.Uint64(b[:])}
}

func (g *entryIDs) next() EntryID {
	var id EntryID
	binary.BigEndian.PutUint32(id[:4], uint32(g.node))
	binary.BigEndian.PutUint64(id[4:12], g.boot)
	binary.BigEndian.PutUint32(id[12:], g.count.Add(1))
	return id
}

// Entry is one client append: an id for deduplication and the JSON value,
// carried as the exact bytes the client sent, end to end (base64 inside
// peer messages, raw in the client log), so a read returns them unchanged.
//
// A batch append is one Entry too: Data is its first value and More the
// rest. It is queued, forwarded, proposed, deduplicated and awaited as a
// unit, inside one slot's value, so its values are chosen together or
// not at all and get consecutive indices (the learner gives an entry
// 1+len(More) of them at once: applyLocked).
type Entry struct {
	ID   EntryID  `json:"id"`
	Key  string   `json:"k,omitempty"` // the client's Idempotency-Key, if any
	Data []byte   `json:"d"`
	More [][]byte `json:"m,omitempty"` // a batch's values after the first
}

// values is how many indices e takes: one per value.
func (e Entry) values() int { return 1 + len(e.More) }

// size is the bytes of e's values and key.
func (e Entry) size() int {
	n := len(e.Key) + len(e.Data)
	for _, d := range e.More {
		n += len(d)
	}
	return n
}

// System entries are entries of the log's own, not a client's: they take
// a slot's place in its value, and no index. Their ids begin with four
// 0xff bytes, which no client entry's can (its first four bytes are a
// node id, below 2^31). The one kind so far is the genesis entry, whose
// data {"genesis":"<id>","members":[...]} names the cluster's identity
// and its first membership (recovery.go, membership.go).
var systemIDPrefix = [4]byte{0xff, 0xff, 0xff, 0xff}

// isSystem reports whether e is a system entry.
func (e Entry) isSystem() bool { return [4]byte(e.ID[:4]) == systemIDPrefix }

// systemEntry is a system entry with the data v.
func systemEntry(v membersValue) Entry {
	var e Entry
	copy(e.ID[:], systemIDPrefix[:])
	binary.BigEndian.PutUint64(e.ID[4:12], randomUint64())
	e.Data, _ = json.Marshal(v)
	return e
}

// genesisEntry is the system entry that gives the cluster the identity id
// and its first membership, m.
func genesisEntry(id string, m *membership) Entry {
	return systemEntry(membersValue{Genesis: id, Members: m.Members})
}

// genesisOf returns the identity a genesis entry names ("" if e is none).
func genesisOf(e Entry) string {
	v, _ := decodeSystem(e)
	return v.Genesis
}

// holdsGenesis reports whether any of the values holds a genesis entry.
func holdsGenesis(vals map[Slot]SlotValue) bool {
	for _, sv := range vals {
		for _, e := range sv.Value.Entries {
			if genesisOf(e) != "" {
				return true
			}
		}
	}
	return false
}

// identity is what deduplication compares: the Idempotency-Key if the
// client gave one, else the entry id.
func (e Entry) identity() string {
	if e.Key != "" {
		return "k" + e.Key
	}
	return "i" + string(e.ID[:])
}

// Value is what one slot decides. No entries means a no-op.
type Value struct {
	Entries []Entry `json:"e,omitempty"`
}

// IsNoop reports whether v fills a slot without producing an index.
func (v Value) IsNoop() bool { return len(v.Entries) == 0 }

// SlotValue is a value for a slot, with the ballot it was accepted at where
// that matters.
type SlotValue struct {
	Slot   Slot   `json:"s"`
	Ballot Ballot `json:"b"`
	Value  Value  `json:"v"`
}

// The peer messages. Each has its own /paxos/<method> endpoint; the reply
// types are the responses of those calls.
const (
	methodPrepare    = "prepare"
	methodAccept     = "accept"
	methodLearn      = "learn"
	methodCatchup    = "catchup"
	methodForward    = "forward"
	methodReadIndex  = "readindex"
	methodTimeoutNow = "timeoutnow"
)

// PrepareReq is phase 1a for every slot from From on.
type PrepareReq struct {
	From   NodeID `json:"from"`
	Ballot Ballot `json:"b"`
	Slot   Slot   `json:"slot"`
	// Binary asks for the promise in the binary form (codec.go): the
	// values it reports carry entry data (batches: megabytes), which
	// JSON would base64 and scan. Builds before it answer JSON.
	Binary bool `json:"binary,omitempty"`
}

func (m PrepareReq) String() string {
	return fmt.Sprintf("prepare{%s from %d slot>=%d}", m.Ballot, m.From, m.Slot)
}

// Promise is phase 1b. OK means the acceptor promised Ballot; Promised is
// its promise after the call either way. Accepted lists every (ballot,
// value) it accepted for a slot >= the prepare's slot. Floor is the last
// slot whose acceptor state was dropped because it is chosen and stored:
// the proposer must learn slots up to Floor before it leads.
type Promise struct {
	OK       bool        `json:"ok"`
	Promised Ballot      `json:"promised"`
	Floor    Slot        `json:"floor"`
	Accepted []SlotValue `json:"accepted,omitempty"`
	// Removed: refused because the sender was removed from the
	// membership; Commit is the responder's commit point then, for the
	// sender to catch up to and learn of its removal.
	Removed bool `json:"removed,omitempty"`
	Commit  Slot `json:"commit,omitempty"`
}

func (m Promise) String() string {
	return fmt.Sprintf("promise{ok=%v %s floor=%d accepted=%d}", m.OK, m.Promised, m.Floor, len(m.Accepted))
}

// AcceptReq is phase 2a for one or more slots, all under Ballot. Commit
// piggybacks the leader's knowledge: every slot <= Commit is chosen.
type AcceptReq struct {
	From   NodeID      `json:"from"`
	Ballot Ballot      `json:"b"`
	Values []SlotValue `json:"values"`
	Commit Slot        `json:"commit"`
}

func (m AcceptReq) String() string {
	return fmt.Sprintf("accept{%s from %d slots=%d commit=%d}", m.Ballot, m.From, len(m.Values), m.Commit)
}

// Accepted is phase 2b. OK means every slot of the request was accepted
// and synced.
type Accepted struct {
	OK       bool   `json:"ok"`
	Promised Ballot `json:"promised"`
}

func (m Accepted) String() string { return fmt.Sprintf("accepted{ok=%v %s}", m.OK, m.Promised) }

// LearnReq tells a peer that every slot <= Commit is chosen. It doubles as
// the leader's heartbeat.
type LearnReq struct {
	From   NodeID `json:"from"`
	Ballot Ballot `json:"b"`
	Commit Slot   `json:"commit"`
}

func (m LearnReq) String() string {
	return fmt.Sprintf("learn{%s from %d commit=%d}", m.Ballot, m.From, m.Commit)
}

// LearnResp: OK means the peer has promised nothing above the sender's
// ballot, which is what a leader needs to confirm it still leads.
type LearnResp struct {
	OK       bool   `json:"ok"`
	Promised Ballot `json:"promised"`
	Applied  Slot   `json:"applied"`
	// Joined: the peer serves as a member (a joining node that is not in
	// its membership yet, or is rebuilding, is not caught up however far
	// it applied).
	Joined bool `json:"joined,omitempty"`
}

// CatchupReq asks for the chosen values of slots Slot, Slot+1, …; Index
// is the next client index the requester lacks.
type CatchupReq struct {
	From  NodeID `json:"from"`
	Slot  Slot   `json:"slot"`
	Index Index  `json:"index"`
	Max   int    `json:"max"`
	// Binary asks for the reply in the binary form (codec.go); builds
	// before it answer JSON, which the reply's decoder takes too.
	Binary bool `json:"binary,omitempty"`
}

// CatchupResp carries chosen values for slots in [req.Slot, Through]; a
// slot in that range that is not listed was a no-op. Compacted says the
// peer no longer holds what the requester needs: it should continue from
// the peer's first retained index First, whose slot is FirstSlot.
type CatchupResp struct {
	// Cluster is the responder's cluster identity. Memberships are the
	// membership that governs the first slot asked for and every one
	// chosen up to the last slot the requester applies with this reply:
	// system entries are not in the client log the responder serves
	// values from, so they reach a node that catches up past them this
	// way, and it goes by the membership its applied prefix sets (M1).
	Cluster     string        `json:"cluster,omitempty"`
	Memberships []*membership `json:"memberships,omitempty"`
	Values      []SlotValue   `json:"values,omitempty"`
	Through     Slot          `json:"through"`
	Compacted   bool          `json:"compacted,omitempty"`
	First       Index         `json:"first,omitempty"`
	FirstSlot   Slot          `json:"first_slot,omitempty"`
	// With Compacted: the responder's dedup state for the window below
	// First, the records (dedup.go) of indices DedupFrom..First-1, and
	// its applied slot then, through which the requester must take values
	// only from logs (D3).
	DedupFrom    Index    `json:"dedup_from,omitempty"`
	Dedup        [][]byte `json:"dedup,omitempty"`
	DedupThrough Slot     `json:"dedup_through,omitempty"`
}

// ForwardReq hands client entries taken by a follower to the leader.
type ForwardReq struct {
	From    NodeID  `json:"from"`
	Entries []Entry `json:"entries"`
}

// ForwardResp: OK means the leader queued the entries. Otherwise Leader is
// the sender's best guess of who leads (0 if unknown).
type ForwardResp struct {
	OK     bool   `json:"ok"`
	Leader NodeID `json:"leader"`
}

// ReadIndexReq asks the leader for a slot that covers every value chosen
// before the request arrived.
type ReadIndexReq struct {
	From NodeID `json:"from"`
}

// ReadIndexResp: every value chosen before the request is in a slot <= Slot.
type ReadIndexResp struct {
	OK     bool   `json:"ok"`
	Slot   Slot   `json:"slot"`
	Leader NodeID `json:"leader"`
}

// TimeoutNowReq asks a peer to campaign now: the leader is handing off.
type TimeoutNowReq struct {
	From NodeID `json:"from"`
}

// TimeoutNowResp acknowledges a TimeoutNowReq.
type TimeoutNowResp struct {
	OK bool `json:"ok"`
}

// Transport carries a request from one node to another and returns the
// reply. Implementations: the HTTP transport (http.go) and the tests' fault
// injecting in-memory network. A nil error means the peer handled the
// request and body is its reply.
type Transport interface {
	Call(ctx context.Context, to NodeID, method string, body []byte) ([]byte, error)
}

// Sentinel errors. Each says what the caller may assume.
var (
	// ErrNoQuorum: no majority answered in time. The outcome of an append
	// is unknown: it may still be chosen later.
	ErrNoQuorum = errors.New("no majority answered in time")
	// ErrStopped: the node is shutting down; nothing more will be done.
	ErrStopped = errors.New("node is shutting down")
	// ErrNotLeader: the request needs the leader and this node is not it.
	ErrNotLeader = errors.New("not the leader")
	// ErrCompacted: the index is below the first retained one.
	ErrCompacted = errors.New("index is below the first retained index")
	// ErrPastEnd: the index is past the end of the log.
	ErrPastEnd = errors.New("index is past the end of the log")
	// ErrUnauthorized: a peer request without the cluster key.
	ErrUnauthorized = errors.New("missing or wrong cluster key")
)

// quorum counts acknowledgements of voters by sender, so a duplicated
// reply counts once and a non-voter's not at all.
type quorum struct {
	need   int
	voters []NodeID
	acks   map[NodeID]bool
}

func newQuorum(voters []NodeID) *quorum {
	return &quorum{need: len(voters)/2 + 1, voters: voters, acks: make(map[NodeID]bool, len(voters))}
}

// Add records an ack from id and reports whether a majority has acked.
func (q *quorum) Add(id NodeID) bool {
	for _, v := range q.voters {
		if v == id {
			q.acks[id] = true
			break
		}
	}
	return len(q.acks) >= q.need
}

// Reached reports whether a majority has acked.
func (q *quorum) Reached() bool { return len(q.acks) >= q.need }

// Has reports whether id has acked.
func (q *quorum) Has(id NodeID) bool { return q.acks[id] }

// OneShort reports whether one more ack would make a majority.
func (q *quorum) OneShort() bool { return len(q.acks)+1 == q.need }

// Config is what a Node needs to run.
type Config struct {
	ID      NodeID
	Members []NodeID // every member, this node included (the membership recorded in the data wins)
	// PeerURLs is this node's view of the members' URLs (--peers), put
	// in the first membership it proposes; nil in tests.
	PeerURLs map[NodeID]string
	// Join, for a node that joins a running cluster (--join), are the
	// transport ids to ask for the membership (recovery.go: join).
	Join          []NodeID
	JoinURLs      map[NodeID]string // where the Join ids are (the transport's; none in tests)
	DataDir       string
	MaxEntryBytes int
	// A batch append (application/x-ndjson) holds at most MaxBatchEntries
	// entries (default 10,000) in at most MaxBatchBytes of body (default
	// 16 MiB), each entry within MaxEntryBytes.
	MaxBatchEntries int
	MaxBatchBytes   int

	HeartbeatInterval time.Duration // leader's learn/heartbeat period
	ElectionTimeout   time.Duration // silence before a follower campaigns; randomised in [T, 2T)
	RequestTimeout    time.Duration // how long an append or read waits for a majority
	MaxBatch          int           // entries per slot at most
	MaxInflight       int           // slots in phase 2 at once
	CheckpointEvery   int           // acceptor records between journal compactions

	// Retention of the client log (0: no limit). The last entry always
	// stays; the dedup window is kept apart from the entries (dedup.go).
	RetainEntries     int
	RetainAge         time.Duration
	RetainBytes       int64
	RetentionInterval time.Duration // how often retention runs (default 5s)
	// DedupWindow is the dedup window in indices; it must be equal on
	// every node (default 2^18). Tests shrink it.
	DedupWindow int
	// SegmentBytes is the client log's segment file size, and the dedup
	// journal's up to dedupSegmentBytes (default 4 MiB, so retention
	// frees space in small steps; the acceptor's is 4 MiB too). Each
	// journal holds its tail segment and one more in memory (wal.go).
	SegmentBytes int

	SlowSync time.Duration // an fsync slower than this is logged as a warning (default 100ms)
	// ScrubInterval is the pause between scrubs, which read every closed
	// segment file of both journals for damage (default 10m; repair.go).
	ScrubInterval time.Duration
	// CheckInterval is how often this node compares its log with each
	// peer's (default 10s; check.go).
	CheckInterval time.Duration

	Logger *slog.Logger
	// Seed seeds the node's election jitter; 0 picks one at random.
	Seed int64
}

func (c *Config) setDefaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 50 * time.Millisecond
	}
	if c.ElectionTimeout <= 0 {
		c.ElectionTimeout = 500 * time.Millisecond
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 16
	}
	if c.DedupWindow <= 0 {
		c.DedupWindow = defaultDedupWindow
	}
	c.DedupWindow = min(c.DedupWindow, maxDedupWindow)
	if c.SlowSync <= 0 {
		c.SlowSync = 100 * time.Millisecond
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = 5 * time.Second
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = 10 * time.Second
	}
	if c.ScrubInterval <= 0 {
		c.ScrubInterval = 10 * time.Minute
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 4096
	}
	if c.MaxEntryBytes <= 0 {
		c.MaxEntryBytes = 1 << 20
	}
	if c.MaxBatchEntries <= 0 {
		c.MaxBatchEntries = 10_000
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 16 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.Members) == 0 {
		c.Members = []NodeID{c.ID}
	}
}

// Node is one member: an acceptor, a proposer and a learner over one data
// directory. Its methods are safe for concurrent use.
type Node struct {
	cfg       Config
	log       *slog.Logger
	transport Transport
	metrics   *metrics
	ids       *entryIDs

	acceptor *Acceptor
	learner  *Learner
	proposer *Proposer
	workers  workers // runs the leader's accept calls

	stopOnce sync.Once
	stopped  chan struct{} // closed when the node stops taking work
	fatalMu  sync.Mutex
	fatalErr error
	fatalCh  chan struct{} // closed on the first fatal error

	// Identity and recovery (recovery.go).
	started       time.Time    // when NewNode ran
	phaseNow      atomic.Int32 // a phase: serving, discovering or recovering
	idMu          sync.Mutex   // protects identity
	identity      identity     // as IDENTITY holds it
	foreignLogged atomic.Int64 // when a message from another cluster was last logged (Unix ns)
	servingOnce   sync.Once
	servingCh     chan struct{} // closed once the node serves
	// onIdentity, if set, runs once the node learns the cluster's
	// identity (the HTTP transport re-opens its peer streams).
	onIdentity func()
	// onMembership, if set, runs when the membership changes (the HTTP
	// transport learns the new members' URLs).
	onMembership func(*membership)
	// onApply, if set (tests), hears of every entry this node applies,
	// with its index, under the learner's lock.
	onApply func(Index, []byte)

	check replicaCheck // check.go

	mem atomic.Pointer[membership] // the membership this node goes by (membership.go)
}

// NewNode opens the node's state under cfg.DataDir. It does not start any
// goroutine; Run does.
func NewNode(cfg Config, tr Transport) (*Node, error) {
	cfg.setDefaults()
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.ID),
		transport: tr,
		stopped:   make(chan struct{}),
		fatalCh:   make(chan struct{}),
		servingCh: make(chan struct{}),
		check:     replicaCheck{alarms: map[NodeID]ReplicaAlarm{}},
	}
	n.metrics = newMetrics(n)
	n.ids = newEntryIDs(cfg.ID)
	syncObserver := func(journal string) func(time.Duration) {
		return func(d time.Duration) {
			n.metrics.fsync.WithLabelValues(journal).Observe(d.Seconds())
			if d >= cfg.SlowSync {
				n.log.Warn("slow fsync", "journal", journal, "duration", d)
			}
		}
	}
	n.started = time.Now()
	// A damaged acceptor journal is a forgotten promise: say so in
	// IDENTITY before the damaged records are dropped, so that a crash
	// right after cannot bring the node back voting with them gone.
	onDamage := func(what string) error {
		n.log.Error("acceptor journal is damaged: this node forgot promises or acceptances and rebuilds them from its peers before it votes",
			"file", "acceptor", "damage", what)
		id, err := readIdentity(cfg.DataDir)
		if err != nil {
			id = identity{Node: cfg.ID}
		}
		if id.Node != cfg.ID {
			return fmt.Errorf("--data %s belongs to node %d, not to node %d: check --id and --data", cfg.DataDir, id.Node, cfg.ID)
		}
		id.State, id.Nonce = "recovering", 0
		return writeIdentity(cfg.DataDir, id)
	}
	acc, err := openAcceptor(filepath.Join(cfg.DataDir, "acceptor"), syncObserver("acceptor"), onDamage)
	if err != nil {
		return nil, err
	}
	fi, known := acc.FloorIndex()
	floor := learnerFloor{acc.Floor(), fi, known}
	if id, err := readIdentity(cfg.DataDir); err == nil && id.Applied > floor.slot {
		floor = learnerFloor{id.Applied, id.AppliedIndex, true} // applied when it recorded a membership
	}
	lrn, err := openLearner(n, filepath.Join(cfg.DataDir, "log"), floor, syncObserver("log"))
	if err != nil {
		acc.close()
		return nil, err
	}
	n.acceptor, n.learner = acc, lrn
	accFirst, accLast := acc.journal.Bounds()
	_, logLast := lrn.journal.Bounds()
	ph, err := n.startPhase(acc.damaged, accFirst > accLast, acc.voted(), logLast == 0)
	if err == nil && ph == phaseRecovering {
		err = acc.forget() // what it holds is incomplete or untrusted
	}
	if err != nil {
		lrn.close()
		acc.close()
		return nil, err
	}
	n.mem.Store(n.startMembership())
	n.metrics.members.Set(float64(len(n.config().ids())))
	n.metrics.voters.Set(float64(len(n.config().voters())))
	n.setPhase(ph)
	if ph == phaseRecovering {
		n.metrics.recovering.Set(1)
	}
	n.proposer = newProposer(n)
	first, last := lrn.Bounds()
	n.metrics.firstIndex.Set(float64(first))
	n.metrics.lastIndex.Set(float64(last))
	n.metrics.appliedSlot.Set(float64(lrn.Applied()))
	n.metrics.commitSlot.Set(float64(lrn.KnownCommit()))
	n.metrics.ballotRound.Set(float64(acc.Promised().Round))
	return n, nil
}

// relPath names a file under the data directory by its path there, for
// messages ("log/00000000000000000001").
func (n *Node) relPath(path string) string {
	if rel, err := filepath.Rel(n.cfg.DataDir, path); err == nil {
		return rel
	}
	return path
}

// quorumSize is the number of voters that make a majority.
func (n *Node) quorumSize() int { return n.config().quorum() }

// Run runs the node's loops until ctx ends or a fatal error, then stops the
// node. It returns the fatal error, if any.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	loops := []func(context.Context){n.proposer.run, n.learner.run, n.acceptor.run(n), n.learner.repairLoop, n.checkLoop}
	switch n.phase() {
	case phaseDiscovering:
		loops = append(loops, n.discover)
	case phaseRecovering:
		loops = append(loops, n.rebuild, n.checkPeers)
	default:
		loops = append(loops, n.checkPeers)
	}
	for _, f := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	select {
	case <-ctx.Done():
	case <-n.fatalCh:
	}
	n.stop()
	cancel()
	wg.Wait()
	n.workers.close()
	return n.Fatal()
}

// workers runs short tasks on goroutines that outlive them: a parked
// worker is handed the next task instead of a goroutine being started for
// it. The leader sends every accept message from one. A fresh goroutine
// per message grew its stack two or three times over on each append, as
// the call descends into the connection and the journal: runtime.morestack
// was 8% of a leader's CPU at one client. A worker keeps its grown stack
// (until a GC shrinks it). Idle workers are reused last-in first-out, so
// the few that a steady load needs stay warm, and at most maxIdleWorkers
// wait; close ends them.
type workers struct {
	mu     sync.Mutex
	idle   []chan func() // one per parked worker; a nil task ends it
	closed bool
}

// maxIdleWorkers bounds the parked workers; a burst beyond it ends the
// extra ones as they finish.
const maxIdleWorkers = 256

// Go runs f on an idle worker, or on a new one.
func (w *workers) Go(f func()) {
	w.mu.Lock()
	if k := len(w.idle); k > 0 {
		ch := w.idle[k-1]
		w.idle = w.idle[:k-1]
		w.mu.Unlock()
		ch <- f // buffered: a parked worker is waiting for it
		return
	}
	w.mu.Unlock()
	go w.work(f)
}

func (w *workers) work(f func()) {
	ch := make(chan func(), 1)
	for f != nil {
		f()
		w.mu.Lock()
		if w.closed || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		f = <-ch
	}
}

// close ends the idle workers, and each busy one once its task is done.
// Go still works afterwards, on goroutines that end with their task.
func (w *workers) close() {
	w.mu.Lock()
	w.closed = true
	idle := w.idle
	w.idle = nil
	w.mu.Unlock()
	for _, ch := range idle {
		close(ch)
	}
}

// stop makes every blocked caller return ErrStopped.
func (n *Node) stop() {
	n.stopOnce.Do(func() { close(n.stopped) })
}

// Close releases the node's files. Call it after Run has returned.
func (n *Node) Close() error {
	n.stop()
	return errors.Join(n.learner.close(), n.acceptor.close())
}

// crash drops every write that was not synced and releases the files, as
// a power loss would. For tests, after Run has returned.
func (n *Node) crash() error {
	n.stop()
	return errors.Join(n.learner.crash(), n.acceptor.journal.crash())
}

// fatal records an error the node cannot go on after (a storage error,
// which a restart recovers from; or one that needs the operator, which
// says so): the node stops.
func (n *Node) fatal(err error) {
	select {
	case <-n.stopped:
		if errors.Is(err, errJournalClosed) {
			return // late work of a stopping node, not a storage failure
		}
	default:
	}
	n.fatalMu.Lock()
	defer n.fatalMu.Unlock()
	if n.fatalErr == nil {
		n.fatalErr = err
		n.log.Error("stopping", "err", err)
		close(n.fatalCh)
	}
}

// storageFailed stops the node after an acceptor error, unless a test
// injected it.
func (n *Node) storageFailed(err error) {
	if !errors.Is(err, errInjected) {
		n.fatal(err)
	}
}

// Fatal returns the error that stopped the node, if any.
func (n *Node) Fatal() error {
	n.fatalMu.Lock()
	defer n.fatalMu.Unlock()
	return n.fatalErr
}

// call sends a request to a member and decodes its reply. Calls to this
// node itself skip the transport.
func (n *Node) call(ctx context.Context, to NodeID, method string, req, resp any) error {
	return n.callEncoded(ctx, to, method, req, nil, resp)
}

// callEncoded is call with req already encoded as body (nil: encode it
// here), so a message sent to every member is encoded once.
func (n *Node) callEncoded(ctx context.Context, to NodeID, method string, req any, body []byte, resp any) error {
	if to == n.cfg.ID {
		if handled, err := n.callSelf(req, resp); handled {
			return err
		}
	}
	var err error
	if m, ok := req.(encoding.BinaryMarshaler); ok && body == nil {
		if body, err = m.MarshalBinary(); err != nil {
			return fmt.Errorf("%s to %d: encode: %w", method, to, err)
		}
	}
	if body == nil {
		if body, err = json.Marshal(req); err != nil {
			return fmt.Errorf("%s to %d: encode: %w", method, to, err)
		}
	}
	var out []byte
	if to == n.cfg.ID {
		out, err = n.Handle(ctx, n.ClusterID(), method, body)
	} else {
		start := time.Now()
		out, err = n.transport.Call(ctx, to, method, body)
		if err == nil {
			n.metrics.peerLatency.WithLabelValues(strconv.Itoa(int(to)), method).Observe(time.Since(start).Seconds())
		}
	}
	if err != nil {
		n.metrics.peerErrors.WithLabelValues(strconv.Itoa(int(to)), method).Inc()
		return fmt.Errorf("%s to %d: %w", method, to, err)
	}
	if u, ok := resp.(encoding.BinaryUnmarshaler); ok {
		err = u.UnmarshalBinary(out) // a reply that may come in the binary form (catch-up)
	} else {
		err = json.Unmarshal(out, resp)
	}
	if err != nil {
		return fmt.Errorf("%s to %d: decode reply: %w", method, to, err)
	}
	return nil
}

// callSelf hands a message to this node's own roles without encoding it
// (the leader is one of its own acceptors). It reports false for messages
// it does not take this way. Values are shared, not copied: nothing
// changes a Value once it has been proposed.
func (n *Node) callSelf(req, resp any) (bool, error) {
	select {
	case <-n.stopped:
		return true, ErrStopped
	default:
	}
	var err error
	switch r := req.(type) {
	case AcceptReq:
		*resp.(*Accepted), err = n.onAccept(r)
	case PrepareReq:
		*resp.(*Promise), err = n.onPrepare(r)
	case LearnReq:
		*resp.(*LearnResp) = n.onLearn(r)
	default:
		return false, nil
	}
	return true, err
}

// Handle serves one peer request from a node of cluster (its identity,
// "" if it does not know it); it is what the in-memory transport calls.
func (n *Node) Handle(ctx context.Context, cluster, method string, body []byte) ([]byte, error) {
	return n.handle(ctx, cluster, method, body)
}

// handle serves one peer request and returns the reply. A message that
// names another cluster is refused, unless it asks who this node is
// (hello).
func (n *Node) handle(ctx context.Context, cluster, method string, body []byte) (out []byte, err error) {
	select {
	case <-n.stopped:
		return nil, ErrStopped
	default:
	}
	if method != methodHello {
		if err := n.checkCluster(cluster, method); err != nil {
			return nil, err
		}
	}
	var resp any
	switch method {
	case methodHello:
		var req HelloReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp = n.onHello(req)
		}
	case methodPrepare:
		var req PrepareReq
		if err = json.Unmarshal(body, &req); err == nil {
			var pr Promise
			pr, err = n.onPrepare(req)
			if err == nil && req.Binary {
				out, err = pr.MarshalBinary()
				return out, err
			}
			if err == nil && valuesHaveBatch(pr.Accepted) {
				err = errBatchForOldBuild // it would drop the batch's later entries
			}
			resp = pr
		}
	case methodAccept:
		var req AcceptReq
		if err = req.UnmarshalBinary(body); err == nil {
			resp, err = n.onAccept(req)
		}
	case methodLearn:
		var req LearnReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp = n.onLearn(req)
		}
	case methodCatchup:
		var req CatchupReq
		if err = json.Unmarshal(body, &req); err == nil {
			var r CatchupResp
			r, err = n.learner.readChosen(req.Slot, req.Index, req.Max)
			r.Cluster = n.ClusterID()
			upTo := r.Through
			if r.Compacted {
				upTo = max(upTo, r.FirstSlot-1)
			}
			r.Memberships = n.membershipsFor(req.Slot, upTo)
			if err == nil && req.Binary {
				out, err = r.MarshalBinary()
				return out, err
			}
			if err == nil && valuesHaveBatch(r.Values) {
				err = errBatchForOldBuild
			}
			resp = r
		}
	case methodReconfig:
		var req ReconfigReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp = n.onReconfig(ctx, req)
		}
	case methodSums:
		var req SumsReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp = n.learner.serveSums(req)
		}
	case methodRecords:
		var req RecordsReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp, err = n.learner.readRecords(req)
		}
	case methodForward:
		var req ForwardReq
		if err = req.UnmarshalBinary(body); err == nil {
			resp = n.proposer.onForward(req)
		}
	case methodTimeoutNow:
		var req TimeoutNowReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp = n.proposer.onTimeoutNow(req)
		}
	case methodReadIndex:
		var req ReadIndexReq
		if err = json.Unmarshal(body, &req); err == nil {
			resp, err = n.proposer.readIndex(ctx)
		}
	default:
		return nil, &apiError{404, fmt.Sprintf("unknown peer method %q", method)}
	}
	if err != nil {
		return nil, err
	}
	out, err = json.Marshal(resp)
	return out, err
}

// errBatchForOldBuild refuses a JSON reply that would carry a batch: a
// build before batch appends asks for JSON, and would read a batch as
// its first entry alone (the JSON form's "m" is unknown to it), losing
// the rest. It fails loudly instead, until it is upgraded.
var errBatchForOldBuild = errors.New("the reply holds a batch append, which this peer's build cannot read: upgrade it")

// onPrepare handles phase 1a. A node that does not serve (it is blank,
// or rebuilding a memory it lost) promises nothing (recovery.go).
func (n *Node) onPrepare(req PrepareReq) (Promise, error) {
	if err := n.notServingErr(); err != nil {
		return Promise{}, err
	}
	if !n.config().isVoter(n.cfg.ID) {
		return Promise{}, errNotVoter // a non-voter never votes (M5); a removed member no more
	}
	if n.config().wasRemoved(req.From) {
		// A removed member that does not know it yet (it was down, or
		// started after the change) must not unseat the leader with a
		// higher ballot: it leads nothing. It is told to catch up, and
		// so learns of its removal.
		return Promise{Removed: true, Commit: n.learner.KnownCommit()}, nil
	}
	p, err := n.acceptor.Prepare(req.Ballot, req.Slot)
	if err != nil {
		n.storageFailed(err)
		return Promise{}, err
	}
	if p.OK {
		n.metrics.ballotRound.Set(float64(req.Ballot.Round))
		n.proposer.promisedTo(req.Ballot)
	} else {
		n.proposer.observe(req.Ballot)
	}
	return p, nil
}

// onAccept handles phase 2a. The commit the message carries is learned
// in a goroutine of its own, while the acceptor journals and fsyncs the
// new values: applying chosen slots to the client log is then neither on
// the leader's path to a majority nor behind this node's fsync. Under
// load the next accept carries each commit advance, and this node's
// clients (whose appends it forwarded) wait for it: learned only once the
// acceptance is on disk, each of their appends would wait an fsync more
// than the leader's clients do.
//
// Learning before accepting is safe: the commit is chosen whatever
// happens to this accept (as for a learn message), and the learner
// applies a slot from the acceptor only if the acceptor holds a value of
// exactly req.Ballot for it (drainLocked, valueExactly), which is the
// value that ballot's leader proposed and counted chosen; the slots below
// req.Commit are in earlier accepts, never in this one, and any slot whose
// value is not here yet is caught up from a peer.
func (n *Node) onAccept(req AcceptReq) (Accepted, error) {
	if err := n.notServingErr(); err != nil {
		return Accepted{}, err // it accepts nothing until it serves (recovery.go)
	}
	if !n.config().isVoter(n.cfg.ID) {
		// Not a voter (yet: it may not have applied its promotion): it
		// accepts nothing, but learns the commit the accept carries.
		n.learner.noteCommit(req.Ballot, req.Commit, req.From)
		return Accepted{}, errNotVoter
	}
	if req.Commit > 0 && !n.learner.hasApplied(req.Commit) {
		// A goroutine only for news: with one client appending, a
		// learn message has mostly brought the commit already, and a
		// goroutine per accept would wake an idle thread for nothing
		// (five alternating 6 s runs at one client: median 1,360
		// appends/s with this check, 1,299 without).
		go n.learner.noteCommit(req.Ballot, req.Commit, req.From)
	}
	a, err := n.acceptor.Accept(req.Ballot, req.Values)
	if err != nil {
		n.storageFailed(err)
		return Accepted{}, err
	}
	if a.OK {
		n.proposer.heardFrom(req.Ballot)
	}
	return a, nil
}

// acceptOwn is onAccept for this node's own proposals while it leads:
// the acceptance is journaled but not synced, and seq is the record that
// Acceptor.Sync must cover before the acceptance counts (invariant P5).
func (n *Node) acceptOwn(req AcceptReq) (a Accepted, seq uint64, err error) {
	a, seq, err = n.acceptor.AcceptUnsynced(req.Ballot, req.Values)
	if err != nil {
		n.storageFailed(err)
		return Accepted{}, 0, err
	}
	if a.OK {
		n.learner.noteCommit(req.Ballot, req.Commit, req.From)
	}
	return a, seq, nil
}

// onLearn takes a leader's commit (and heartbeat). OK confirms the
// leader's ballot for a read; a node that does not serve confirms nothing,
// since it does not know what it promised (recovery.go), but learns.
func (n *Node) onLearn(req LearnReq) LearnResp {
	promised := n.acceptor.Promised()
	ok := !req.Ballot.Less(promised)
	if ok {
		n.proposer.heardFrom(req.Ballot)
	}
	switch n.phase() {
	case phaseDiscovering:
		return LearnResp{Applied: n.learner.Applied()} // learns nothing before it knows it is a member
	case phaseRecovering:
		ok = false
	}
	if !n.config().isVoter(n.cfg.ID) {
		ok = false // a non-voter confirms no leadership
	}
	// Chosen is chosen whatever the ballot: always take the commit.
	n.learner.noteCommit(req.Ballot, req.Commit, req.From)
	return LearnResp{OK: ok, Promised: promised, Applied: n.learner.Applied(), Joined: n.serving() && n.isMember()}
}

// Append submits data as one entry and waits until it is chosen and
// applied on this node. With a non-empty idempotency key, an entry already
// in the log under that key (within the dedup window) is not appended
// again: its index comes back with Duplicate set.
func (n *Node) Append(ctx context.Context, data []byte, key string) (Applied, error) {
	return n.AppendBatch(ctx, [][]byte{data}, key)
}

// AppendBatch submits vals (at least one) as one batch: each becomes an
// entry, all of them chosen together at consecutive indices, Index to
// Last, or none. The key covers the whole batch. It waits as Append does.
func (n *Node) AppendBatch(ctx context.Context, vals [][]byte, key string) (Applied, error) {
	if len(vals) == 0 {
		return Applied{}, errors.New("append: no values")
	}
	if err := n.waitServing(ctx); err != nil {
		return Applied{}, err
	}
	if !n.isMember() {
		return Applied{}, ErrNotMember
	}
	start := time.Now()
	e := Entry{ID: n.ids.next(), Key: key, Data: vals[0], More: vals[1:]}
	if len(e.More) == 0 {
		e.More = nil
	}
	ch := n.learner.await(e)
	select {
	case a := <-ch: // the key is already in the log: nothing to append
		n.metrics.idempotentHits.Inc()
		return a, nil
	default:
	}
	// A timer rather than context.WithTimeout: a child context would be
	// linked into and out of the request's context on every append (4%
	// of a loaded leader's CPU went to that). It starts before submit,
	// which on a follower may itself carry the forward to the leader.
	timeout := time.NewTimer(n.cfg.RequestTimeout)
	defer timeout.Stop()
	n.proposer.submit(e)
	defer n.proposer.forget(e.ID)
	select {
	case a := <-ch: // the learner dropped the waiter as it answered
		n.metrics.appendLatency.Observe(time.Since(start).Seconds())
		if a.Duplicate {
			n.metrics.idempotentHits.Inc()
		}
		return a, nil
	case <-timeout.C:
	case <-ctx.Done():
	case <-n.stopped:
	}
	n.learner.unawait(e)
	n.metrics.appendErrors.Inc()
	return Applied{}, n.waitErr(ctx)
}

// ReadBarrier returns once this node has applied every value chosen before
// the call: the leader names a slot that covers them after confirming with
// a majority that it still leads, and this node catches up to it.
func (n *Node) ReadBarrier(ctx context.Context) error {
	_, _, err := n.readBarrier(ctx)
	return err
}

// readBarrier is ReadBarrier, also telling which slot the read waited for
// and which leader named it (tests record them).
func (n *Node) readBarrier(ctx context.Context) (Slot, NodeID, error) {
	if err := n.waitServing(ctx); err != nil {
		return 0, 0, err
	}
	if !n.isMember() {
		return 0, 0, ErrNotMember
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	defer func(start time.Time) { n.metrics.readLatency.Observe(time.Since(start).Seconds()) }(time.Now())
	for {
		slot, leader, err := n.proposer.readIndexAnywhere(ctx)
		if err == nil {
			return slot, leader, n.learner.waitApplied(ctx, slot, leader)
		}
		// Any failure, including a leader that is itself stopping, means
		// no barrier yet: ask again until our deadline or our own stop.
		if ctx.Err() != nil {
			return 0, 0, n.waitErr(ctx)
		}
		// No leader yet, or it changed under us: wait a beat and ask again.
		select {
		case <-time.After(n.cfg.HeartbeatInterval):
		case <-ctx.Done():
			return 0, 0, n.waitErr(ctx)
		case <-n.stopped:
			return 0, 0, ErrStopped
		}
	}
}

// waitErr maps the end of a wait to the error the caller reports. It is
// never nil: a wait that ends has failed.
func (n *Node) waitErr(ctx context.Context) error {
	select {
	case <-n.stopped:
		return ErrStopped
	default:
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return ErrNoQuorum
}

// Shutdown prepares a planned stop: a leader hands leadership to an
// up-to-date peer, then the node waits (up to ctx) for the appends it took
// to finish, so a rolling restart costs no election timeout. Run's context
// is cancelled after it.
func (n *Node) Shutdown(ctx context.Context) {
	if to := n.proposer.handoff(ctx); to != 0 {
		n.log.Info("handed leadership over", "to", to)
	}
	// Wait for the appends taken before now; new ones keep arriving while
	// HTTP still serves and would keep the count from reaching zero.
	before := n.proposer.pendingIDs()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for n.proposer.anyPending(before) {
		select {
		case <-ctx.Done():
			return
		case <-n.stopped:
			return
		case <-t.C: // polling a count that appends drain as they finish
		}
	}
}

// Status is a snapshot for /v1/status.
type Status struct {
	ID         NodeID       `json:"id"`
	Cluster    string       `json:"cluster"` // the cluster's identity; "" until known
	State      string       `json:"state"`   // serving, discovering or recovering
	Recovering bool         `json:"recovering"`
	Member     bool         `json:"member"` // this node is in the membership it knows
	Leader     NodeID       `json:"leader"`
	Ballot     string       `json:"ballot"`
	IsLeader   bool         `json:"is_leader"`
	First      Index        `json:"first"`
	Last       Index        `json:"last"`
	Applied    Slot         `json:"applied_slot"`
	Commit     Slot         `json:"known_commit_slot"`
	Members    []NodeID     `json:"members"`
	Peers      []PeerStatus `json:"peers"`
	DiskBytes  int64        `json:"disk_bytes"`
	// Alarm, when set, says this node's log and a peer's differ, and
	// where first (check.go); null while they agree.
	Alarm *ReplicaAlarm `json:"alarm"`
	// Voters are the members that count toward a majority; Change, on
	// the leader, a membership change in flight (null: none).
	Voters []NodeID          `json:"voters"`
	Change *MembershipChange `json:"membership_change"`
}

// Status reports what this node knows now.
func (n *Node) Status() Status {
	leader, ballot, isLeader := n.proposer.leaderInfo()
	first, last := n.learner.Bounds()
	members := append([]NodeID{}, n.config().ids()...)
	ph := n.phase()
	return Status{
		ID: n.cfg.ID, Cluster: n.ClusterID(), State: ph.String(), Recovering: ph == phaseRecovering,
		Member: n.isMember(), Leader: leader, Ballot: ballot.String(), IsLeader: isLeader,
		First: first, Last: last, Applied: n.learner.Applied(), Commit: n.learner.KnownCommit(),
		Members: members, Peers: n.proposer.peers(), DiskBytes: dirSize(n.cfg.DataDir),
		Alarm: n.check.alarm(), Voters: append([]NodeID{}, n.config().voters()...), Change: n.proposer.changeInFlight(),
	}
}
