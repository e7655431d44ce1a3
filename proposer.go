package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"time"
)

// proposer.go: ballots, both phases, and leadership.
//
// One node leads at a time. A would-be leader picks a ballot above every
// round it has seen and runs phase 1 once for every slot from the first
// one it has not applied (prepare → promise from a majority). It learns
// every slot up to the highest promise floor, re-proposes the highest
// ballot's value for each slot that any promise reports and fills the
// other slots up to the highest reported one with no-ops, then runs phase
// 2 per slot for new client entries, never repeating phase 1 while it
// leads. Followers that hear nothing from a leader for a randomised
// election timeout campaign; a refused prepare or accept raises the
// proposer's round, and a leader that sees a higher ballot, or fails to
// hear from a majority for two election timeouts, steps down.
//
// Invariants:
//   - P1: under one ballot each slot gets at most one value (nextSlot only
//     grows; recovery assigns each recovered slot once).
//   - P2: a leader proposes in slot s >= start only the value phase 1
//     reported with the highest ballot, or a no-op if none: Paxos's rule,
//     which keeps any value already chosen in s.
//   - P3: slots < start are applied before leadership begins, including
//     every slot <= the highest promise floor (acceptor invariant A4), so
//     no promise majority lacks a slot that might be chosen.
//   - P4: no value holds one entry id twice: an id is queued at most once
//     while it is queued or in flight (leaderState.enqueue), and a value is
//     cut from the queue. The learner relies on it (applyLocked checks
//     repeats within a value only among Idempotency-Keys). A batch is one
//     entry, so it is never split across slots (takeForSlot).
//   - P5: an acceptance counts toward a majority only once it is synced
//     on its acceptor's disk. Peers' acceptances come synced (acceptor
//     invariant A3). The leader's own may be written unsynced (lazy, see
//     sendAccept); it is counted only after Acceptor.Sync covers its
//     record, so a value chosen without it is on a majority of followers'
//     disks, and a crash that loses it loses nothing anyone was told.

// proposal is one slot in phase 2 under the current ballot.
type proposal struct {
	value  Value
	bytes  int // of value's entries (maxInflightBytes)
	acks   *quorum
	sent   time.Time
	chosen bool

	// Lazy own acceptance (P5). lazy: this node's acceptance was or is
	// being written unsynced and is not counted yet; ownSeq: its journal
	// record, once written; fallback: a sync of it is scheduled; syncWanted:
	// the scheduled sync found it not yet written, so the write syncs.
	lazy, fallback, syncWanted bool
	ownSeq                     uint64
	resent                     bool // retransmitted: no longer lazy
}

// lazyOwnAcceptMinGap is the least a leader waits, after a round's
// acknowledgements leave it one short of a majority that its own
// acceptance would complete, for the remaining follower before it syncs
// its own acceptance instead (it waits half the round's time so far if
// that is longer).
const lazyOwnAcceptMinGap = 250 * time.Microsecond

// leaderState exists only while this node leads; it is dropped on
// stepping down and a new one is made for each ballot won. Guarded by
// Proposer.mu.
type leaderState struct {
	mem         *membership   // the membership that governs the slots this leadership opens (M1)
	changeSlot  Slot          // a membership change in flight there: no slot after it opens (M3); 0: none
	changeTo    *membership   // the membership changeSlot sets
	changed     chan struct{} // closed when changeSlot is chosen (or leadership ends)
	ballot      Ballot
	start       Slot // first slot this ballot decided (P3)
	nextSlot    Slot // next slot for new values (P1)
	commit      Slot // every slot <= commit is chosen
	recoverTo   Slot // last slot recovered from phase 1; reads wait for commit >= recoverTo
	inflight    map[Slot]*proposal
	lastChosen  time.Time // when a slot was last chosen (eagerOwnIdle)
	queue       []Entry
	queuedVals  int // values (indices to be) in queue: a batch counts each
	queued      map[EntryID]bool
	contact     map[NodeID]time.Time     // last OK heartbeat reply per peer
	peerApplied map[NodeID]Slot          // last applied slot each peer reported
	lastReply   map[NodeID]time.Time     // when each peer last answered a heartbeat, OK or not
	peerJoined  map[NodeID]bool          // each peer's last heartbeat reply: it serves as a member
	draining    bool                     // handing off: open no new slots
	since       time.Time                // when leadership began
	commitCh    chan struct{}            // closed and replaced when commit advances
	done        chan struct{}            // closed when this leadership ends
	nextRead    *readRound               // the read round that will start next
	reading     bool                     // a readRounds goroutine runs
	sentCommit  map[NodeID]Slot          // highest commit an accept or learn has taken to each peer
	learnKick   map[NodeID]chan struct{} // per peer: send a learn now (heartbeat)
	learnTimer  *time.Timer              // runs learnDue; nil until first armed
	learnArmed  bool                     // learnTimer runs for learnFor
	learnFor    Slot                     // commit that learnDue checks was carried
	forwarded   map[EntryID]NodeID       // queued entries a follower forwarded, by who
	forwardSlot map[NodeID]Slot          // highest slot proposed with entries a peer forwarded
}

// pendingEntry is an append taken by this node, not yet applied here.
type pendingEntry struct {
	entry    Entry
	deadline time.Time
	sentTo   Ballot // leadership it was handed to (zero: not handed yet)
	sending  bool
}

// Proposer is this node's proposer. Safe for concurrent use.
type Proposer struct {
	n    *Node
	kick chan struct{}

	mu               sync.Mutex // protects the fields below
	rng              *rand.Rand
	ctx              context.Context // the run loop's, for leader goroutines
	maxRound         uint64
	leader           NodeID
	leaderBallot     Ballot
	electionDeadline time.Time
	ls               *leaderState
	pending          map[EntryID]*pendingEntry
	// forwarding counts the forwards in flight, by the leadership each
	// went to: only those to the current one hold new entries back
	// (maxForwarding), so a forward stuck on a leader that went away
	// delays only its own entries.
	forwarding map[Ballot]int
}

func newProposer(n *Node) *Proposer {
	seed := n.cfg.Seed
	if seed == 0 {
		seed = time.Now().UnixNano() + int64(n.cfg.ID)
	}
	p := &Proposer{
		n:          n,
		kick:       make(chan struct{}, 1),
		rng:        rand.New(rand.NewSource(seed)),
		pending:    make(map[EntryID]*pendingEntry),
		forwarding: make(map[Ballot]int),
		ctx:        context.Background(),
	}
	p.maxRound = n.acceptor.Promised().Round
	p.resetElectionLocked()
	if len(n.config().voters()) == 1 && n.config().isVoter(n.cfg.ID) {
		p.electionDeadline = time.Time{} // alone: lead at once
	}
	return p
}

func (p *Proposer) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// resetElectionLocked pushes the election deadline a random [T, 2T) ahead.
func (p *Proposer) resetElectionLocked() {
	t := p.n.cfg.ElectionTimeout
	p.electionDeadline = time.Now().Add(t + time.Duration(p.rng.Int63n(int64(t))))
}

// run is the proposer's loop.
func (p *Proposer) run(ctx context.Context) {
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	tick := time.NewTicker(p.n.cfg.HeartbeatInterval / 2)
	defer tick.Stop()
	defer p.stepDown("shutting down")
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.tick(ctx)
		case <-p.kick:
		}
		p.flush(ctx)
	}
}

// tick does the periodic work: campaign when the leader is silent, step
// down when a majority is out of reach, retransmit stale accepts, and
// expire pending entries.
func (p *Proposer) tick(ctx context.Context) {
	now := time.Now()
	p.mu.Lock()
	for id, pe := range p.pending {
		if now.After(pe.deadline) {
			delete(p.pending, id)
		}
	}
	ls := p.ls
	if ls == nil {
		// A node that does not serve, or is no voter, does not vote, so
		// does not campaign.
		due := now.After(p.electionDeadline) && p.n.serving() && p.n.config().isVoter(p.n.cfg.ID)
		p.mu.Unlock()
		if due {
			p.campaign(ctx)
		}
		return
	}
	if !p.hasQuorumContactLocked(ls, now) {
		p.stepDownLocked("no majority heard from in two election timeouts")
		p.mu.Unlock()
		return
	}
	var stale []SlotValue
	for s, prop := range ls.inflight {
		if !prop.chosen && now.Sub(prop.sent) > p.n.cfg.ElectionTimeout/2 {
			prop.sent = now
			prop.resent = true
			stale = append(stale, SlotValue{Slot: s, Value: prop.value})
		}
	}
	commit := ls.commit
	promote := p.caughtUpLocked(ls, now)
	p.mu.Unlock()
	if len(stale) > 0 {
		p.sendAccept(ls, stale, commit)
	}
	if promote != 0 {
		if _, err := p.proposeChange(func(m *membership) (*membership, error) {
			if x, ok := m.get(promote); !ok || x.Voter {
				return nil, errNoChange
			}
			return m.withPromoted(promote), nil
		}); err == nil {
			p.n.log.Info("promoting a caught-up non-voter", "id", promote)
		}
	}
}

func (p *Proposer) hasQuorumContactLocked(ls *leaderState, now time.Time) bool {
	window := 2 * p.n.cfg.ElectionTimeout
	if now.Sub(ls.since) < window {
		return true
	}
	count := 1 // self
	for id, t := range ls.contact {
		if id != p.n.cfg.ID && now.Sub(t) < window && ls.mem.isVoter(id) {
			count++
		}
	}
	return count >= ls.mem.quorum()
}

// flush moves work along: the leader proposes queued entries in new
// slots; every node hands its pending entries to the current leader.
func (p *Proposer) flush(ctx context.Context) {
	p.mu.Lock()
	if ls := p.ls; ls != nil {
		var fresh []Entry
		for _, pe := range p.pending {
			if pe.sentTo != ls.ballot {
				pe.sentTo = ls.ballot
				fresh = append(fresh, pe.entry)
			}
		}
		ls.enqueue(fresh)
		vals, commit := p.proposeQueuedLocked(ls)
		p.mu.Unlock()
		p.sendAccept(ls, vals, commit)
		return
	}
	defer p.mu.Unlock()
	p.forwardGatheredLocked(ctx)
}

// forwardGatheredLocked hands the pending entries not yet handed to the
// known leader to it, each forward from a goroutine of its own (unless
// maxForwarding holds them back: forwardBatchesLocked).
func (p *Proposer) forwardGatheredLocked(ctx context.Context) {
	to, b, batches := p.forwardBatchesLocked()
	for _, batch := range batches {
		go p.forward(ctx, to, b, batch)
	}
}

// maxForwarding bounds the forwards in flight from a follower to the
// current leader (several more when one batch of entries is too big for
// one request). Entries that arrive while it is reached gather, and the
// next forward to return successfully sends them in one request (after a
// failure, the run loop's tick does): under load a follower sends a
// forward per accept round or so, not one per append (at 64 clients
// spread over three nodes, one per append was 6,000 requests a second
// into the leader).
const maxForwarding = 1

// forwardBatchesLocked takes the pending entries not yet handed to the
// known leader, marks them as being sent, and splits them into forwards
// that each stay well below maxPeerBody. It counts them in forwarding,
// and takes none while maxForwarding forwards to that leader are in
// flight: the next of them to return successfully takes them (after a
// failure, the run loop's tick).
func (p *Proposer) forwardBatchesLocked() (to NodeID, b Ballot, batches [][]*pendingEntry) {
	if p.leader == 0 || p.leader == p.n.cfg.ID || p.forwarding[p.leaderBallot] >= maxForwarding {
		return 0, Ballot{}, nil
	}
	var batch []*pendingEntry
	size := 0
	for _, pe := range p.pending {
		if pe.sentTo != p.leaderBallot && !pe.sending {
			n := entriesSize([]Entry{pe.entry})
			if len(batch) > 0 && size+n > maxAcceptBytes {
				batches = append(batches, batch)
				batch, size = nil, 0
			}
			pe.sending = true
			batch = append(batch, pe)
			size += n
		}
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	if len(batches) > 0 {
		p.forwarding[p.leaderBallot] += len(batches)
	}
	return p.leader, p.leaderBallot, batches
}

// forward hands entries to the leader of ballot b.
func (p *Proposer) forward(ctx context.Context, to NodeID, b Ballot, batch []*pendingEntry) {
	req := ForwardReq{From: p.n.cfg.ID, Entries: make([]Entry, len(batch))}
	for i, pe := range batch {
		req.Entries[i] = pe.entry
	}
	// ElectionTimeout: a forward to a leader that went away is given up
	// soon, and its entries go to the next one. A forward of megabytes
	// (big batches) may take longer than that to arrive: RequestTimeout.
	timeout := p.n.cfg.ElectionTimeout
	if entriesSize(req.Entries) > 1<<20 {
		timeout = max(timeout, p.n.cfg.RequestTimeout)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var resp ForwardResp
	err := p.n.call(cctx, to, methodForward, req, &resp)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.forwarding[b]--; p.forwarding[b] <= 0 {
		delete(p.forwarding, b)
	}
	for _, pe := range batch {
		pe.sending = false
		if err == nil && resp.OK && p.ls == nil {
			// (Should this node lead by now, flush has queued the entry
			// under its own ballot: that mark stays.)
			pe.sentTo = b
		}
	}
	if err != nil || !resp.OK {
		if err == nil && resp.Leader != 0 && resp.Leader != to && p.leader == to {
			p.leader = 0 // it says it no longer leads; wait for the next heartbeat
		}
		return // the run loop's tick forwards them again
	}
	p.forwardGatheredLocked(ctx) // what gathered meanwhile
}

// onForward queues entries a follower took, if this node leads.
func (p *Proposer) onForward(req ForwardReq) ForwardResp {
	p.mu.Lock()
	ls := p.ls
	if ls == nil {
		defer p.mu.Unlock()
		return ForwardResp{OK: false, Leader: p.leader}
	}
	for _, e := range req.Entries {
		if !ls.queued[e.ID] {
			ls.forwarded[e.ID] = req.From
		}
	}
	ls.enqueue(req.Entries)
	vals, commit := p.proposeQueuedLocked(ls)
	p.mu.Unlock()
	p.sendAccept(ls, vals, commit)
	return ForwardResp{OK: true, Leader: p.n.cfg.ID}
}

func (ls *leaderState) enqueue(entries []Entry) {
	for _, e := range entries {
		if !ls.queued[e.ID] {
			ls.queued[e.ID] = true
			ls.queue = append(ls.queue, e)
			ls.queuedVals += e.values()
		}
	}
}

// Bounds on one slot's value besides MaxBatch (in values: a batch counts
// each). A slot takes at least one queued append, whatever its size, so
// a batch is never split (--max-batch-bytes allows up to 4*maxSlotBytes:
// such a batch takes a slot alone).
const (
	maxSlotBytes  = 16 << 20
	maxSlotValues = 1 << 16
)

// maxAcceptBytes bounds one accept request's values (well below
// maxPeerBody): more slots than that go in several requests.
const maxAcceptBytes = 64 << 20

// maxInflightBytes bounds the entry bytes of the slots in phase 2 at
// once (one slot may pass it alone), and with it what a promise to an
// up-to-date candidate carries back.
const maxInflightBytes = 64 << 20

// inflightBytesLocked is the entry bytes of ls's slots in phase 2.
func (ls *leaderState) inflightBytesLocked() int {
	n := 0
	for _, prop := range ls.inflight {
		n += prop.bytes
	}
	return n
}

// takeForSlot returns how many appends from the front of queue the next
// slot takes: at least one, then while they hold at most maxValues
// values and maxSlotBytes bytes.
func takeForSlot(queue []Entry, maxValues int) (appends, values int) {
	bytes := 0
	for _, e := range queue {
		v, b := e.values(), e.size()
		if appends > 0 && (values+v > maxValues || bytes+b > maxSlotBytes) {
			break
		}
		appends, values, bytes = appends+1, values+v, bytes+b
	}
	return appends, values
}

// splitAccepts cuts vals into runs whose encoded values stay within
// maxAcceptBytes (a run holds one slot at least).
func splitAccepts(vals []SlotValue) [][]SlotValue {
	var runs [][]SlotValue
	start, size := 0, 0
	for i, sv := range vals {
		n := entriesSize(sv.Value.Entries)
		if i > start && size+n > maxAcceptBytes {
			runs = append(runs, vals[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(runs, vals[start:])
}

// submit takes a client entry; the learner tells the caller when it is in.
// On the leader the entry is queued, and proposed if no slot is in flight,
// right here: no hop through the run loop on the way to the acceptors.
func (p *Proposer) submit(e Entry) {
	pe := &pendingEntry{entry: e, deadline: time.Now().Add(p.n.cfg.RequestTimeout)}
	p.mu.Lock()
	p.pending[e.ID] = pe
	ls := p.ls
	if ls == nil {
		// Nothing on its way to the leader: forward from this goroutine,
		// sparing the wake-up of the run loop and of a forward goroutine.
		// While forwards are in flight (maxForwarding), the entry waits
		// for the next one, which the forward that returns successfully
		// sends, gathering every entry that came meanwhile.
		to, b, batches := p.forwardBatchesLocked()
		ctx := p.ctx
		p.mu.Unlock()
		if len(batches) == 0 {
			return
		}
		for _, batch := range batches[1:] {
			go p.forward(ctx, to, b, batch)
		}
		p.forward(ctx, to, b, batches[0])
		return
	}
	pe.sentTo = ls.ballot
	ls.enqueue([]Entry{e})
	vals, commit := p.proposeQueuedLocked(ls)
	p.mu.Unlock()
	p.sendAccept(ls, vals, commit)
}

// forget stops resending an entry: its append has returned, with an
// index or with an unknown outcome.
func (p *Proposer) forget(id EntryID) {
	p.mu.Lock()
	delete(p.pending, id)
	p.mu.Unlock()
}

// proposeQueuedLocked starts phase 2 for queued entries, a batch per
// slot, while fewer than MaxInflight slots are undecided. Group commit:
// while a slot is in flight, entries gather into the next batch instead
// of each few taking an accept round and an fsync on every node; the
// round in flight finishing proposes what gathered. Only a backlog of a
// quarter batch or more opens another slot in parallel (pipelining).
// The caller sends what it returns with sendAccept once it has let go of
// p.mu.
func (p *Proposer) proposeQueuedLocked(ls *leaderState) ([]SlotValue, Slot) {
	var vals []SlotValue
	for len(ls.queue) > 0 && len(ls.inflight) < p.n.cfg.MaxInflight && !ls.draining && ls.changeSlot == 0 {
		if len(ls.inflight) > 0 && (ls.queuedVals < p.n.cfg.MaxBatch/4 || ls.inflightBytesLocked() >= maxInflightBytes) {
			break
		}
		k, nv := takeForSlot(ls.queue, min(p.n.cfg.MaxBatch, maxSlotValues))
		ls.queuedVals -= nv
		v := Value{Entries: append([]Entry(nil), ls.queue[:k]...)}
		if len(ls.forwarded) > 0 {
			for _, e := range v.Entries {
				if from, ok := ls.forwarded[e.ID]; ok {
					ls.forwardSlot[from] = ls.nextSlot
					delete(ls.forwarded, e.ID)
				}
			}
		}
		p.n.metrics.batchSize.Observe(float64(nv))
		ls.queue = ls.queue[k:]
		vals = append(vals, p.newProposalLocked(ls, ls.nextSlot, v))
		ls.nextSlot++
	}
	if len(ls.queue) == 0 {
		ls.queue, ls.queuedVals = nil, 0
	}
	return vals, ls.commit
}

func (p *Proposer) newProposalLocked(ls *leaderState, s Slot, v Value) SlotValue {
	return p.proposeUnderLocked(ls, s, v, ls.mem)
}

// proposeUnderLocked opens slot s for v, decided by a majority of m's
// voters: the membership that governs s (M1).
func (p *Proposer) proposeUnderLocked(ls *leaderState, s Slot, v Value, m *membership) SlotValue {
	ls.inflight[s] = &proposal{value: v, bytes: entriesSize(v.Entries), acks: newQuorum(m.voters()), sent: time.Now()}
	return SlotValue{Slot: s, Value: v}
}

// sendAccept sends phase 2a for vals to every member, each from its own
// worker (n.workers; a retransmission goes to all again; acks count once each).
// It does not wait for the answers.
//
// Lazy own acceptance: while enough followers to make a majority without
// this node have answered within the last heartbeat interval, this node
// journals its own acceptance of a round under load (not a small one
// after a pause: eagerOwnValues) without an fsync and does not count it
// (P5). In the usual case the followers' acknowledgements choose the
// value, and the leader's disk is spared an fsync per round, one of three
// that would otherwise run at once and slow each other (on the test
// machine: server CPU per append -10%, appends/s +4% at 64 clients, the
// followers' fsyncs a little faster). Should the
// acknowledgements leave a slot one short, onAccepted schedules a sync of
// the leader's own acceptance, which then counts. Retransmissions and
// leaders without such followers sync at once, as peers do.
func (p *Proposer) sendAccept(ls *leaderState, vals []SlotValue, commit Slot) {
	if len(vals) == 0 {
		return
	}
	if runs := splitAccepts(vals); len(runs) > 1 {
		for _, run := range runs {
			p.sendAccept(ls, run, commit)
		}
		return
	}
	req := AcceptReq{From: p.n.cfg.ID, Ballot: ls.ballot, Values: vals, Commit: commit}
	body, err := req.MarshalBinary()
	if err != nil {
		p.n.log.Error("encode accept", "err", err)
		return
	}
	p.mu.Lock()
	ctx := p.ctx
	targets := p.acceptTargetsLocked(ls, vals)
	// Counted as told when sent, not when answered: the answer waits for
	// the peer's fsync, and a learn message sent meanwhile would only
	// repeat what is on its way. Should the accept be lost, the next
	// accept or heartbeat carries the commit.
	for _, to := range targets {
		if commit > ls.sentCommit[to] {
			ls.sentCommit[to] = commit
		}
	}
	lazy := p.lazyOwnAcceptLocked(ls, vals)
	p.mu.Unlock()
	for _, to := range targets {
		if lazy && to == p.n.cfg.ID {
			p.n.workers.Go(func() { p.acceptOwnLazily(ls, req, vals) })
			continue
		}
		p.n.workers.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, p.n.cfg.RequestTimeout)
			defer cancel()
			var resp Accepted
			if err := p.n.callEncoded(cctx, to, methodAccept, req, body, &resp); err != nil {
				return // retransmitted by tick while undecided
			}
			p.onAccepted(ls, to, vals, resp)
		})
	}
}

// acceptTargetsLocked returns the voters that decide any of vals: those
// of the membership each slot is proposed under, which is the same for
// all but recovered slots on both sides of a change (M1).
func (p *Proposer) acceptTargetsLocked(ls *leaderState, vals []SlotValue) []NodeID {
	base := ls.mem.voters()
	mixed := false
	for _, sv := range vals {
		if prop := ls.inflight[sv.Slot]; prop != nil && !sameIDs(prop.acks.voters, base) {
			mixed = true
			break
		}
	}
	if !mixed {
		return base
	}
	var out []NodeID
	seen := map[NodeID]bool{}
	for _, sv := range vals {
		voters := base
		if prop := ls.inflight[sv.Slot]; prop != nil {
			voters = prop.acks.voters
		}
		for _, id := range voters {
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out
}

// sameIDs reports whether a and b list the same ids in the same order.
func sameIDs(a, b []NodeID) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A round that opens after the leader has been idle (no slot in flight
// for at least eagerOwnIdle since the last one was chosen) and holds at
// most eagerOwnValues values, as one client appending does, gets this
// node's own acceptance synced at once, not lazily. The leader's own
// fsync needs no message, so it usually finishes first, and the first
// follower's answer then chooses the value: the second of three
// acceptances instead of the slower of two followers' (one client
// through every node, four alternating 8 s runs on the machine of
// docs/performance.md: median 1,899 appends/s against 1,769). Under load
// rounds follow each other without a pause, or are larger, and the fsync
// spared counts more (three concurrent fsyncs slow each other on the test
// machine: syncing every small round at once cost 16 clients about a
// tenth of their appends).
const (
	eagerOwnValues = 4
	eagerOwnIdle   = 100 * time.Microsecond
)

// lazyOwnAcceptLocked decides whether this node's acceptance of vals is
// written lazily (see sendAccept), and if so marks their proposals.
func (p *Proposer) lazyOwnAcceptLocked(ls *leaderState, vals []SlotValue) bool {
	now := time.Now()
	if len(ls.inflight) == len(vals) && now.Sub(ls.lastChosen) >= eagerOwnIdle {
		values := 0
		for _, sv := range vals {
			for _, e := range sv.Value.Entries {
				values += e.values()
			}
		}
		if values <= eagerOwnValues {
			return false
		}
	}
	fresh := 0
	for _, id := range ls.mem.voters() {
		if t, ok := ls.contact[id]; ok && id != p.n.cfg.ID && now.Sub(t) < p.n.cfg.HeartbeatInterval {
			fresh++
		}
	}
	if fresh < ls.mem.quorum() {
		return false
	}
	for _, sv := range vals {
		if prop := ls.inflight[sv.Slot]; prop == nil || prop.resent || prop.lazy {
			return false
		}
	}
	for _, sv := range vals {
		ls.inflight[sv.Slot].lazy = true
	}
	return true
}

// acceptOwnLazily journals this node's acceptance of vals without an
// fsync and notes its record in their proposals; it counts only once
// synced (syncOwn). A refusal is handled as any member's.
func (p *Proposer) acceptOwnLazily(ls *leaderState, req AcceptReq, vals []SlotValue) {
	resp, seq, err := p.n.acceptOwn(req)
	if err != nil {
		return // a storage failure stops the node; an injected one: retransmitted by tick
	}
	if !resp.OK {
		p.onAccepted(ls, p.n.cfg.ID, vals, resp)
		return
	}
	wanted := false
	p.mu.Lock()
	if p.ls == ls {
		for _, sv := range vals {
			if prop := ls.inflight[sv.Slot]; prop != nil && !prop.chosen {
				prop.ownSeq = seq
				wanted = wanted || prop.syncWanted
			}
		}
	}
	p.mu.Unlock()
	if wanted {
		p.syncOwn(ls, vals)
	}
}

// syncOwn syncs this node's lazily written acceptance of those of vals
// still undecided and counts it (P5).
func (p *Proposer) syncOwn(ls *leaderState, vals []SlotValue) {
	var seq uint64
	var todo []SlotValue
	p.mu.Lock()
	if p.ls != ls {
		p.mu.Unlock()
		return
	}
	for _, sv := range vals {
		prop := ls.inflight[sv.Slot]
		if prop == nil || prop.chosen {
			continue
		}
		if prop.ownSeq == 0 {
			prop.syncWanted = true // not written yet: acceptOwnLazily syncs
			continue
		}
		seq = max(seq, prop.ownSeq)
		todo = append(todo, sv)
	}
	p.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	if err := p.n.acceptor.Sync(seq); err != nil {
		p.n.storageFailed(err)
		return
	}
	p.onAccepted(ls, p.n.cfg.ID, todo, Accepted{OK: true, Promised: ls.ballot})
}

// onAccepted counts a phase 2b reply. A slot is chosen once a majority of
// acceptors accepted it under this ballot; chosen slots are handed to the
// learner in order.
func (p *Proposer) onAccepted(ls *leaderState, from NodeID, vals []SlotValue, resp Accepted) {
	p.mu.Lock()
	if p.ls != ls {
		p.mu.Unlock()
		return
	}
	if !resp.OK {
		p.observeLocked(resp.Promised)
		if ls.ballot.Less(resp.Promised) {
			p.stepDownLocked(fmt.Sprintf("accept refused: %d promised %s", from, resp.Promised))
		}
		p.mu.Unlock()
		return
	}
	now := time.Now()
	ls.contact[from] = now
	var short []SlotValue // lazy slots this node's own acceptance would decide
	var gap time.Duration
	for _, sv := range vals {
		prop := ls.inflight[sv.Slot]
		if prop == nil || prop.chosen {
			continue
		}
		if prop.acks.Add(from) {
			prop.chosen = true
			ls.lastChosen = now
			continue
		}
		if prop.lazy && !prop.fallback && !prop.acks.Has(p.n.cfg.ID) && prop.acks.OneShort() {
			prop.fallback = true
			short = append(short, sv)
			gap = max(gap, lazyOwnAcceptMinGap, now.Sub(prop.sent)/2)
		}
	}
	if len(short) > 0 {
		time.AfterFunc(gap, func() { p.syncOwn(ls, short) })
	}
	var newly []SlotValue
	for {
		prop := ls.inflight[ls.commit+1]
		if prop == nil || !prop.chosen {
			break
		}
		ls.commit++
		delete(ls.inflight, ls.commit)
		for _, e := range prop.value.Entries {
			delete(ls.queued, e.ID)
		}
		newly = append(newly, SlotValue{Slot: ls.commit, Value: prop.value})
	}
	var next []SlotValue
	var commit Slot
	if len(newly) > 0 {
		close(ls.commitCh)
		ls.commitCh = make(chan struct{})
		if ls.changeSlot != 0 && ls.commit >= ls.changeSlot {
			p.finishChangeLocked(ls)
		}
		p.commitAdvancedLocked(ls)
		// What gathered while these slots were in flight goes out before
		// they are applied here: the next round overlaps the apply.
		next, commit = p.proposeQueuedLocked(ls)
	}
	p.mu.Unlock()
	p.sendAccept(ls, next, commit)
	if len(newly) > 0 {
		p.n.learner.chosen(newly...)
	}
}

// Membership changes on the leader (membership.go, M1-M5).

// errNoChange: the change asked for leaves the membership as it is.
var errNoChange = errors.New("membership already so")

// errChangeUnderWay: a membership change is in flight; one at a time.
var errChangeUnderWay = &apiError{409, "another membership change is under way; try again once it is done"}

// errLeaderBusy: the leader is still recovering its predecessor's slots,
// is handing leadership over, or the cluster is being founded; a change
// can be made in a moment.
var errLeaderBusy = &apiError{503, "the leader is recovering the log, handing over, or founding the cluster; try again"}

// promoteLag is how many slots behind the leader's commit a non-voter may
// be and still be caught up enough to become a voter.
const promoteLag = 64

// proposeChange, on the leader, proposes the membership that change makes
// of the current one, in the next slot, and opens no slot after it until
// it is chosen (M3). It returns a channel closed once it is chosen, or
// once this leadership ends (then its outcome is unknown).
func (p *Proposer) proposeChange(change func(*membership) (*membership, error)) (*pendingChange, error) {
	p.mu.Lock()
	ls := p.ls
	if ls == nil {
		p.mu.Unlock()
		return nil, ErrNotLeader
	}
	if ls.commit < ls.recoverTo || ls.draining || p.n.ClusterID() == "" {
		// A passing state: the client retries. Before the genesis entry
		// is chosen no change may be: the genesis sets the first
		// membership, and one chosen after a change would undo it.
		p.mu.Unlock()
		return nil, errLeaderBusy
	}
	if ls.changeSlot != 0 {
		p.mu.Unlock()
		return nil, errChangeUnderWay
	}
	next, err := change(ls.mem)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	s := ls.nextSlot
	ls.nextSlot++
	ls.changeSlot, ls.changeTo, ls.changed = s, next, make(chan struct{})
	sv := p.proposeUnderLocked(ls, s, Value{Entries: []Entry{membershipEntry(next)}}, ls.mem)
	pc := &pendingChange{to: next, slot: s, ballot: ls.ballot, chosen: ls.changed, lost: ls.done}
	commit := ls.commit
	p.mu.Unlock()
	p.n.log.Info("proposing a membership change", "slot", s, "members", next.String())
	p.sendAccept(ls, []SlotValue{sv}, commit)
	return pc, nil
}

// pendingChange is a membership change proposed by this leadership.
type pendingChange struct {
	to     *membership
	slot   Slot            // where it is proposed
	ballot Ballot          // under which
	chosen <-chan struct{} // closed once it is chosen
	lost   <-chan struct{} // closed if the leadership ends first: its outcome is unknown
}

// finishChangeLocked: the change in flight is chosen. New slots go under
// the new membership; its new members get heartbeats; a leader that is no
// voter any more steps down and hands over to the voter furthest along.
func (p *Proposer) finishChangeLocked(ls *leaderState) {
	old := ls.mem
	ls.mem, ls.changeSlot, ls.changeTo = ls.changeTo, 0, nil
	if ls.changed != nil {
		close(ls.changed)
		ls.changed = nil
	}
	p.n.log.Info("membership changed", "from", old.String(), "to", ls.mem.String())
	for _, id := range ls.mem.ids() {
		if id != p.n.cfg.ID && ls.learnKick[id] == nil {
			ls.learnKick[id] = make(chan struct{}, 1)
			go p.heartbeat(p.ctx, ls, id)
		}
	}
	if ls.mem.isVoter(p.n.cfg.ID) {
		return
	}
	var target NodeID
	var best Slot
	for _, id := range ls.mem.voters() {
		if a := ls.peerApplied[id]; target == 0 || a > best {
			target, best = id, a
		}
	}
	p.stepDownLocked("removed from the membership")
	// Tell every member the commit that removed this node (no heartbeat
	// will), then ask the voter furthest along to campaign at once.
	learn := LearnReq{From: p.n.cfg.ID, Ballot: ls.ballot, Commit: ls.commit}
	tell := append(append([]NodeID(nil), old.ids()...), ls.mem.ids()...)
	go func() {
		cctx, cancel := context.WithTimeout(context.Background(), p.n.cfg.ElectionTimeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, id := range tell {
			if id == p.n.cfg.ID {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var resp LearnResp
				p.n.call(cctx, id, methodLearn, learn, &resp) // best effort: heartbeats of the next leader follow
			}()
		}
		wg.Wait()
		if target == 0 {
			return
		}
		var resp TimeoutNowResp
		if err := p.n.call(cctx, target, methodTimeoutNow, TimeoutNowReq{From: p.n.cfg.ID}, &resp); err != nil {
			p.n.log.Warn("handoff after removal failed", "to", target, "err", err)
		}
	}()
}

// caughtUpLocked returns a non-voter that has caught up with this
// leader's commit (its heartbeat replies say how far it applied) while
// no change is in flight, or 0.
func (p *Proposer) caughtUpLocked(ls *leaderState, now time.Time) NodeID {
	if ls.changeSlot != 0 || ls.commit < ls.recoverTo || ls.draining {
		return 0
	}
	for _, x := range ls.mem.Members {
		t, heard := ls.lastReply[x.ID]
		if x.Voter || !heard || now.Sub(t) > p.n.cfg.ElectionTimeout || !ls.peerJoined[x.ID] {
			continue
		}
		if ls.peerApplied[x.ID]+promoteLag >= ls.commit {
			return x.ID
		}
	}
	return 0
}

// nextBallot returns a ballot of this node's above every round it has
// seen (a rebuild's fence, recovery.go).
func (p *Proposer) nextBallot() Ballot {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maxRound++
	return Ballot{Round: p.maxRound, Node: p.n.cfg.ID}
}

// proposeGenesis, on a new leader of a cluster without an identity,
// proposes the genesis entry that gives it one (recovery.go), once every
// member answers hello: a member that does not know the message would
// take a system entry for a client's. It gives up when leadership ends
// or the identity is known.
func (p *Proposer) proposeGenesis(ctx context.Context, ls *leaderState) {
	for p.n.ClusterID() == "" {
		answers := p.n.helloAll(ctx, 0, p.n.cfg.ElectionTimeout)
		for id, a := range answers {
			p.n.adoptCluster(a.Cluster, fmt.Sprintf("node %d", id))
		}
		if p.n.ClusterID() != "" {
			return
		}
		if len(answers) == len(p.n.others()) {
			p.mu.Lock()
			if p.ls != ls {
				p.mu.Unlock()
				return
			}
			ls.enqueue([]Entry{genesisEntry(newClusterID(), p.n.config())})
			vals, commit := p.proposeQueuedLocked(ls)
			p.mu.Unlock()
			p.sendAccept(ls, vals, commit)
			return // chosen with the next batch; a new leader proposes again if it is lost
		}
		select {
		case <-ctx.Done():
			return
		case <-ls.done:
			return
		case <-time.After(p.n.cfg.ElectionTimeout):
		}
	}
}

// observe raises the round this proposer will outbid next time.
func (p *Proposer) observe(b Ballot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observeLocked(b)
}

func (p *Proposer) observeLocked(b Ballot) {
	if b.Round > p.maxRound {
		p.maxRound = b.Round
	}
}

// promisedTo is called when this node's acceptor promised b: a leader with
// a lower ballot can no longer get its accepts through here, so it steps
// down rather than fight.
func (p *Proposer) promisedTo(b Ballot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observeLocked(b)
	if p.ls != nil && p.ls.ballot.Less(b) {
		p.stepDownLocked(fmt.Sprintf("promised higher ballot %s", b))
	}
	if b.Node != p.n.cfg.ID {
		p.resetElectionLocked() // a campaign is under way: give it time
	}
}

// heardFrom records a message from the leader of ballot b.
func (p *Proposer) heardFrom(b Ballot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observeLocked(b)
	if b.Node == p.n.cfg.ID {
		return
	}
	if p.ls != nil {
		if !p.ls.ballot.Less(b) {
			return
		}
		p.stepDownLocked(fmt.Sprintf("heard from leader %s", b))
	}
	if p.leaderBallot.Less(b) || p.leader == 0 {
		if p.leaderBallot != b {
			p.n.log.Info("new leader", "leader", b.Node, "ballot", b.String())
			p.n.metrics.leaderChanges.Inc()
		}
		p.leader, p.leaderBallot = b.Node, b
		p.n.metrics.leader.Set(float64(b.Node))
		p.wake() // resend pending entries to it
	}
	if b == p.leaderBallot {
		p.resetElectionLocked()
	}
}

func (p *Proposer) stepDown(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stepDownLocked(reason)
}

// stepDownLocked drops leader state. Entries queued or in flight are not
// lost to their clients: the node that took each one still holds it as
// pending and resends it to the next leader (deduplicated by id).
func (p *Proposer) stepDownLocked(reason string) {
	ls := p.ls
	if ls == nil {
		return
	}
	p.n.log.Info("stepping down", "ballot", ls.ballot.String(), "reason", reason)
	p.ls = nil
	close(ls.done)
	if ls.learnTimer != nil {
		ls.learnTimer.Stop()
	}
	p.leader = 0
	p.n.metrics.isLeader.Set(0)
	p.n.metrics.leader.Set(0)
	p.resetElectionLocked()
}

// campaign runs phase 1 for a new ballot and, if a majority promises,
// takes over as leader.
func (p *Proposer) campaign(ctx context.Context) {
	p.mu.Lock()
	p.maxRound++
	b := Ballot{Round: p.maxRound, Node: p.n.cfg.ID}
	p.resetElectionLocked()
	p.mu.Unlock()

	from := p.n.learner.Applied() + 1
	p.n.log.Debug("campaigning", "ballot", b.String(), "from", from)
	cctx, cancel := context.WithTimeout(ctx, p.n.cfg.ElectionTimeout)
	defer cancel()
	mem := p.n.membershipAt(from - 1)
	if mem == nil {
		p.catchUpToMembership(cctx, b, from-1) // and campaign next time
		return
	}
	if !mem.isVoter(p.n.cfg.ID) {
		return // not a voter where it would start: no prepare that could unseat a leader
	}
	promises, ok := p.gatherPromises(cctx, b, from, mem.voters())
	if !ok {
		return
	}
	var start, recoverTo Slot
	var base *membership
	var best map[Slot]SlotValue
	for {
		// P3: learn everything some promiser has compacted before leading.
		var need Slot
		var needFrom NodeID
		for id, pr := range promises {
			if pr.Floor > need {
				need, needFrom = pr.Floor, id
			}
		}
		if need > p.n.learner.Applied() {
			if err := p.n.learner.waitApplied(cctx, need, needFrom); err != nil {
				p.n.log.Debug("campaign: catch-up failed", "ballot", b.String(), "err", err)
				return
			}
		}
		// M4: promises from a majority of the membership that governs
		// start (membershipAt: M1), and of each one that a recovered
		// change sets after it.
		applied := p.n.learner.Applied()
		if base = p.n.membershipAt(applied); base == nil {
			if !p.catchUpToMembership(cctx, b, applied) {
				return
			}
			continue
		}
		if !base.isVoter(p.n.cfg.ID) {
			p.n.log.Debug("campaign: not a voter of the membership that governs the next slot", "ballot", b.String(), "members", base.String())
			return // only voters lead (it was removed, or is not promoted yet)
		}
		start = applied + 1
		best, recoverTo = bestAccepted(promises, start)
		short := base
		if hasMajority(base, promises) {
			short = nil
			cur := base
			for s := start; s <= recoverTo; s++ {
				if next := changeIn(best[s].Value, cur); next != nil {
					cur = next
					if !hasMajority(cur, promises) {
						short = cur
						break
					}
				}
			}
		}
		if short == nil {
			break
		}
		if !p.askPromises(cctx, b, from, short, promises) {
			return
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.maxRound != b.Round || p.ls != nil || ctx.Err() != nil {
		return // outbid while campaigning
	}
	ls := &leaderState{
		mem:    base,
		ballot: b, start: start, nextSlot: recoverTo + 1, commit: start - 1, recoverTo: recoverTo,
		inflight: make(map[Slot]*proposal), queued: make(map[EntryID]bool),
		contact: make(map[NodeID]time.Time), peerApplied: make(map[NodeID]Slot), lastReply: make(map[NodeID]time.Time),
		peerJoined: make(map[NodeID]bool), since: time.Now(),
		commitCh: make(chan struct{}), done: make(chan struct{}), sentCommit: make(map[NodeID]Slot),
		forwarded: make(map[EntryID]NodeID), forwardSlot: make(map[NodeID]Slot),
		learnKick: make(map[NodeID]chan struct{}),
	}
	// Recovered slots go under the membership that governs each (M1); a
	// recovered change holds back new slots until it is chosen (M3).
	var vals []SlotValue
	cur := base
	for s := start; s <= recoverTo; s++ {
		v := best[s].Value // P2: a no-op if none
		vals = append(vals, p.proposeUnderLocked(ls, s, v, cur))
		if next := changeIn(v, cur); next != nil {
			ls.mem, ls.changeSlot, ls.changeTo, ls.changed = cur, s, next, make(chan struct{})
			cur = next
		}
	}
	heard := map[NodeID]bool{}
	for _, m := range []*membership{base, cur} {
		for _, id := range m.ids() {
			if id != p.n.cfg.ID && !heard[id] {
				heard[id] = true
				ls.learnKick[id] = make(chan struct{}, 1)
			}
		}
	}
	p.ls = ls
	p.leader, p.leaderBallot = p.n.cfg.ID, b
	p.n.metrics.isLeader.Set(1)
	p.n.metrics.leader.Set(float64(p.n.cfg.ID))
	p.n.metrics.leaderChanges.Inc()
	p.n.log.Info("leading", "ballot", b.String(), "start", start, "recover_to", recoverTo, "members", base.String(), "members_slot", base.Slot)
	if len(vals) > 0 {
		go p.sendAccept(ls, vals, ls.commit)
	}
	if p.n.ClusterID() == "" && !holdsGenesis(best) {
		go p.proposeGenesis(ctx, ls)
	}
	for id := range ls.learnKick {
		go p.heartbeat(ctx, ls, id)
	}
	p.wake()
}

// catchUpToMembership is for a candidate that does not know the
// membership governing the slot after applied (M1): a joining node took
// the cluster's latest when it was added, ahead of what it has applied,
// and a rebuilt one may not have applied the genesis entry. It learns up
// to the latest membership or commit it knows of, and reports whether it
// got further.
func (p *Proposer) catchUpToMembership(ctx context.Context, b Ballot, applied Slot) bool {
	target := max(p.n.config().Slot, p.n.learner.KnownCommit())
	if target <= applied {
		return false
	}
	if err := p.n.learner.waitApplied(ctx, target, 0); err != nil {
		p.n.log.Debug("campaign: catch-up to the membership failed", "ballot", b.String(), "err", err)
		return false
	}
	return true
}

// bestAccepted returns, for every slot from start on that any promise
// reports, the value accepted under the highest ballot (Paxos's rule), and
// the highest such slot (start-1 if none).
func bestAccepted(promises map[NodeID]Promise, start Slot) (map[Slot]SlotValue, Slot) {
	best := make(map[Slot]SlotValue)
	recoverTo := start - 1
	for _, pr := range promises {
		for _, sv := range pr.Accepted {
			if sv.Slot < start {
				continue
			}
			if cur, ok := best[sv.Slot]; !ok || cur.Ballot.Less(sv.Ballot) {
				best[sv.Slot] = sv
			}
			recoverTo = max(recoverTo, sv.Slot)
		}
	}
	return best, recoverTo
}

// hasMajority reports whether promises come from a majority of m's voters.
func hasMajority(m *membership, promises map[NodeID]Promise) bool {
	n := 0
	for _, id := range m.voters() {
		if _, ok := promises[id]; ok {
			n++
		}
	}
	return n >= m.quorum()
}

// askPromises sends prepare to the voters of m that have not promised yet
// and adds their promises, until a majority of m's voters has promised
// (true), or one refuses, or too few answer before ctx ends (false).
func (p *Proposer) askPromises(ctx context.Context, b Ballot, from Slot, m *membership, promises map[NodeID]Promise) bool {
	type reply struct {
		from NodeID
		pr   Promise
		err  error
	}
	var ask []NodeID
	for _, id := range m.voters() {
		if _, ok := promises[id]; !ok {
			ask = append(ask, id)
		}
	}
	req := PrepareReq{From: p.n.cfg.ID, Ballot: b, Slot: from, Binary: true}
	replies := make(chan reply, len(ask))
	for _, to := range ask {
		go func() {
			var pr Promise
			err := p.n.call(ctx, to, methodPrepare, req, &pr)
			replies <- reply{to, pr, err}
		}()
	}
	for range ask {
		var r reply
		select {
		case r = <-replies:
		case <-ctx.Done():
			return false
		}
		if r.err != nil {
			continue
		}
		if !r.pr.OK {
			p.observe(r.pr.Promised)
			p.noteRemoved(r.from, r.pr)
			return false
		}
		promises[r.from] = r.pr
		if hasMajority(m, promises) {
			return true
		}
	}
	return hasMajority(m, promises)
}

// gatherPromises sends prepare to every member and waits for a majority of
// promises (ok) or a refusal, a minority's silence, or ctx's end (not ok).
func (p *Proposer) gatherPromises(ctx context.Context, b Ballot, from Slot, voters []NodeID) (map[NodeID]Promise, bool) {
	type reply struct {
		from NodeID
		pr   Promise
		err  error
	}
	req := PrepareReq{From: p.n.cfg.ID, Ballot: b, Slot: from, Binary: true}
	// Our own acceptor promises first, durably: a restarted node starts
	// its rounds above its own promise, so it never reuses a ballot (P1).
	var own Promise
	if err := p.n.call(ctx, p.n.cfg.ID, methodPrepare, req, &own); err != nil || !own.OK {
		return nil, false
	}
	replies := make(chan reply, len(voters))
	for _, to := range voters {
		if to == p.n.cfg.ID {
			replies <- reply{to, own, nil}
			continue
		}
		go func() {
			var pr Promise
			err := p.n.call(ctx, to, methodPrepare, req, &pr)
			replies <- reply{to, pr, err}
		}()
	}
	promises := make(map[NodeID]Promise)
	q := newQuorum(voters)
	for range voters {
		var r reply
		select {
		case r = <-replies:
		case <-ctx.Done():
			return nil, false
		}
		if r.err != nil {
			continue
		}
		if !r.pr.OK {
			p.observe(r.pr.Promised)
			p.noteRemoved(r.from, r.pr)
			p.n.log.Debug("prepare refused", "ballot", b.String(), "by", r.from, "promised", r.pr.Promised.String())
			return nil, false
		}
		promises[r.from] = r.pr
		if q.Add(r.from) {
			return promises, true
		}
	}
	return nil, false
}

// heartbeat sends learn messages to one peer while ls leads: every
// heartbeat interval, and when kicked for a commit advance that no accept
// has carried to the peer (commitAdvancedLocked).
func (p *Proposer) heartbeat(ctx context.Context, ls *leaderState, to NodeID) {
	t := time.NewTicker(p.n.cfg.HeartbeatInterval)
	defer t.Stop()
	p.mu.Lock()
	kick := ls.learnKick[to]
	p.mu.Unlock()
	beat := true // a heartbeat goes out even when there is no news
	for {
		p.mu.Lock()
		commit := ls.commit
		carried := ls.sentCommit[to] >= commit
		if commit > ls.sentCommit[to] {
			ls.sentCommit[to] = commit
		}
		_, member := ls.mem.get(to)
		if ls.changeTo != nil {
			_, next := ls.changeTo.get(to)
			member = member || next
		}
		p.mu.Unlock()
		if beat || !carried || !member {
			if err := p.sendLearn(ctx, ls, to, commit); err != nil {
				p.n.log.Debug("heartbeat failed", "to", to, "err", err)
			}
		}
		if !member {
			return // removed: told of the commit that removed it, once more
		}
		select {
		case <-ctx.Done():
			return
		case <-ls.done:
			return
		case <-t.C:
			beat = true
		case <-kick:
			beat = false
		}
	}
}

// learnDelay is how long a commit advance waits for an accept to carry it
// before the leader sends a learn message just for it.
const learnDelay = time.Millisecond

// commitAdvancedLocked sees that every peer hears of a commit advance. A
// peer whose forwarded entries it decides is told at once: its clients are
// waiting to learn them. For the others the next accept usually carries
// it (under load, or with one client appending back to back, one goes out
// within learnDelay), so a single timer per leader checks learnDelay later
// and kicks the heartbeat of each peer the advance has not reached. Waking
// a heartbeat goroutine per peer on every advance, each then waiting on a
// timer of its own, cost the leader four goroutine wake-ups per append.
func (p *Proposer) commitAdvancedLocked(ls *leaderState) {
	for to, kick := range ls.learnKick {
		if s := ls.forwardSlot[to]; s > ls.sentCommit[to] && s <= ls.commit {
			kickLearn(kick)
		}
	}
	if ls.learnArmed {
		return
	}
	ls.learnArmed, ls.learnFor = true, ls.commit
	if ls.learnTimer == nil {
		ls.learnTimer = time.AfterFunc(learnDelay, func() { p.learnDue(ls) })
	} else {
		ls.learnTimer.Reset(learnDelay)
	}
}

// learnDue kicks the heartbeat of every peer that no message has told of
// ls.learnFor, and watches the latest advance next if a peer has yet to
// hear of it.
func (p *Proposer) learnDue(ls *leaderState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ls != ls {
		return
	}
	ls.learnArmed = false
	untold := false
	for to, kick := range ls.learnKick {
		if ls.sentCommit[to] < ls.learnFor {
			kickLearn(kick)
		} else if ls.sentCommit[to] < ls.commit {
			untold = true
		}
	}
	if untold {
		ls.learnArmed, ls.learnFor = true, ls.commit
		ls.learnTimer.Reset(learnDelay)
	}
}

// kickLearn wakes a heartbeat goroutine unless a wake-up is already due.
func kickLearn(kick chan struct{}) {
	select {
	case kick <- struct{}{}:
	default:
	}
}

// sendLearn sends one learn (heartbeat) and handles the reply.
func (p *Proposer) sendLearn(ctx context.Context, ls *leaderState, to NodeID, commit Slot) error {
	cctx, cancel := context.WithTimeout(ctx, p.n.cfg.ElectionTimeout)
	defer cancel()
	var resp LearnResp
	if err := p.n.call(cctx, to, methodLearn, LearnReq{From: p.n.cfg.ID, Ballot: ls.ballot, Commit: commit}, &resp); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ls == ls {
		ls.peerApplied[to] = resp.Applied
		ls.lastReply[to] = time.Now()
		ls.peerJoined[to] = resp.Joined
		if resp.OK {
			ls.contact[to] = time.Now()
		} else if ls.ballot.Less(resp.Promised) {
			p.observeLocked(resp.Promised)
			p.stepDownLocked(fmt.Sprintf("peer %d promised %s", to, resp.Promised))
		}
	}
	return nil
}

// readRound is one quorum confirmation shared by every read that asked
// for a read index before the round took its commit.
type readRound struct {
	done chan struct{}
	slot Slot
	ok   bool
}

// readIndex, on the leader, returns a slot covering every value chosen
// before the call: the leader waits until it has decided every slot it
// recovered in phase 1, takes its commit, then confirms with a majority
// that none has promised a higher ballot (so no later ballot can have
// chosen anything it does not know). Reads share rounds: a read joins the
// next round to start, which takes its commit after the read arrived, and
// one round at a time runs.
func (p *Proposer) readIndex(ctx context.Context) (ReadIndexResp, error) {
	p.mu.Lock()
	ls := p.ls
	if ls == nil {
		defer p.mu.Unlock()
		return ReadIndexResp{OK: false, Leader: p.leader}, nil
	}
	for ls.commit < ls.recoverTo {
		ch := ls.commitCh
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ls.done:
			return ReadIndexResp{OK: false}, nil
		case <-ctx.Done():
			return ReadIndexResp{}, ctx.Err()
		}
		p.mu.Lock()
	}
	r := ls.nextRead
	if r == nil {
		r = &readRound{done: make(chan struct{})}
		ls.nextRead = r
	}
	if !ls.reading {
		ls.reading = true
		go p.readRounds(ls)
	}
	p.mu.Unlock()
	select {
	case <-r.done:
		if !r.ok {
			return ReadIndexResp{OK: false}, nil
		}
		return ReadIndexResp{OK: true, Slot: r.slot, Leader: p.n.cfg.ID}, nil
	case <-ctx.Done():
		return ReadIndexResp{}, ctx.Err()
	}
}

// readRounds runs confirmation rounds while reads are waiting for one.
func (p *Proposer) readRounds(ls *leaderState) {
	for {
		p.mu.Lock()
		r := ls.nextRead
		ls.nextRead = nil
		if r == nil {
			ls.reading = false
			p.mu.Unlock()
			return
		}
		r.slot = ls.commit
		ctx := p.ctx
		p.mu.Unlock()
		r.ok = p.confirmLeadership(ctx, ls, r.slot)
		close(r.done)
	}
}

// confirmLeadership asks the voters whether they still follow ls's ballot
// and reports whether a majority does: of the membership that governs the
// slots this leadership opens and, while a change is in flight, of the
// one it sets as well (a later leader may go by either: M4).
func (p *Proposer) confirmLeadership(ctx context.Context, ls *leaderState, commit Slot) bool {
	ctx, cancel := context.WithTimeout(ctx, p.n.cfg.ElectionTimeout)
	defer cancel()
	p.mu.Lock()
	mems := []*membership{ls.mem}
	if ls.changeTo != nil {
		mems = append(mems, ls.changeTo)
	}
	p.mu.Unlock()
	var ask []NodeID
	seen := map[NodeID]bool{}
	for _, m := range mems {
		for _, id := range m.voters() {
			if !seen[id] {
				seen[id] = true
				ask = append(ask, id)
			}
		}
	}
	type reply struct {
		from NodeID
		ok   bool
	}
	replies := make(chan reply, len(ask))
	req := LearnReq{From: p.n.cfg.ID, Ballot: ls.ballot, Commit: commit}
	for _, to := range ask {
		go func() {
			var resp LearnResp
			err := p.n.call(ctx, to, methodLearn, req, &resp)
			replies <- reply{to, err == nil && resp.OK}
		}()
	}
	oks := map[NodeID]Promise{}
	for range ask {
		select {
		case r := <-replies:
			if r.ok {
				oks[r.from] = Promise{}
			}
		case <-ctx.Done():
			return false
		case <-ls.done:
			return false
		}
		all := true
		for _, m := range mems {
			all = all && hasMajority(m, oks)
		}
		if all {
			return true
		}
	}
	return false
}

// readIndexAnywhere gets a read index from the leader, wherever it is.
func (p *Proposer) readIndexAnywhere(ctx context.Context) (Slot, NodeID, error) {
	p.mu.Lock()
	leader, leading := p.leader, p.ls != nil
	p.mu.Unlock()
	var resp ReadIndexResp
	switch {
	case leading:
		r, err := p.readIndex(ctx)
		if err != nil {
			return 0, 0, err
		}
		resp = r
	case leader != 0:
		cctx, cancel := context.WithTimeout(ctx, p.n.cfg.ElectionTimeout)
		err := p.n.call(cctx, leader, methodReadIndex, ReadIndexReq{From: p.n.cfg.ID}, &resp)
		cancel()
		if err != nil {
			return 0, 0, err
		}
	default:
		return 0, 0, ErrNotLeader
	}
	if !resp.OK {
		return 0, 0, ErrNotLeader
	}
	return resp.Slot, resp.Leader, nil
}

// leaderInfo reports who leads as far as this node knows.
func (p *Proposer) leaderInfo() (NodeID, Ballot, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.leader, p.leaderBallot, p.ls != nil
}

// anyPeer returns the leader if it is another node, else some other member.
func (p *Proposer) anyPeer() NodeID {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.leader != 0 && p.leader != p.n.cfg.ID {
		return p.leader
	}
	var others []NodeID
	for _, id := range p.n.config().ids() {
		if id != p.n.cfg.ID {
			others = append(others, id)
		}
	}
	if len(others) == 0 {
		return 0
	}
	return others[p.rng.Intn(len(others))]
}

// PeerStatus is what this node knows of another member.
type PeerStatus struct {
	ID          NodeID  `json:"id"`
	Voter       bool    `json:"voter"`
	LastContact float64 `json:"last_contact_seconds_ago"` // -1: never, or not leading
	Applied     Slot    `json:"applied_slot"`
	Lag         Slot    `json:"lag_slots"` // slots behind this leader's commit
}

// peers reports, on the leader, each peer's last contact and lag.
func (p *Proposer) peers() []PeerStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []PeerStatus{}
	mem := p.n.config()
	for _, id := range mem.ids() {
		if id == p.n.cfg.ID {
			continue
		}
		ps := PeerStatus{ID: id, Voter: mem.isVoter(id), LastContact: -1}
		if ls := p.ls; ls != nil {
			if t, ok := ls.contact[id]; ok {
				ps.LastContact = time.Since(t).Seconds()
			}
			ps.Applied = ls.peerApplied[id]
			if ls.commit > ps.Applied {
				ps.Lag = ls.commit - ps.Applied
			}
		}
		out = append(out, ps)
	}
	return out
}

// MembershipChange is a membership change in flight on this leader.
type MembershipChange struct {
	Slot    Slot     `json:"slot"`
	Members []member `json:"members"` // the membership it sets
}

// changeInFlight returns the membership change in flight, if this node
// leads and one is.
func (p *Proposer) changeInFlight() *MembershipChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ls := p.ls; ls != nil && ls.changeTo != nil {
		return &MembershipChange{Slot: ls.changeSlot, Members: append([]member(nil), ls.changeTo.Members...)}
	}
	return nil
}

// handoff, on the leader, passes leadership to the most up-to-date peer
// that answers: it stops opening slots, lets the ones in flight finish
// (up to ctx), steps down and tells the peer to campaign now, so the
// cluster does not wait out an election timeout. It returns the peer, or
// 0 if this node did not lead or no peer took over.
func (p *Proposer) handoff(ctx context.Context) NodeID {
	p.mu.Lock()
	ls := p.ls
	if ls == nil || len(ls.mem.voters()) == 1 {
		p.mu.Unlock()
		return 0 // nobody to hand over to
	}
	ls.draining = true
	p.mu.Unlock()
	for {
		p.mu.Lock()
		idle, ch := len(ls.inflight) == 0, ls.commitCh
		p.mu.Unlock()
		if idle {
			break
		}
		select {
		case <-ch:
		case <-ls.done:
			return 0
		case <-ctx.Done():
			return 0
		}
	}
	// Pick the peer that has applied the most, waiting a little for one
	// that has applied everything: it can lead without catching up first.
	var target NodeID
	tick := time.NewTicker(p.n.cfg.HeartbeatInterval / 4)
	defer tick.Stop()
	wait, cancelWait := context.WithTimeout(ctx, 2*p.n.cfg.ElectionTimeout)
	defer cancelWait()
	for {
		p.mu.Lock()
		var best Slot
		target = 0
		now := time.Now()
		for _, id := range ls.mem.voters() {
			t, ok := ls.contact[id]
			if id == p.n.cfg.ID || !ok || now.Sub(t) > p.n.cfg.ElectionTimeout {
				continue
			}
			if a := ls.peerApplied[id]; target == 0 || a > best {
				target, best = id, a
			}
		}
		caughtUp := target != 0 && best >= ls.commit
		if p.ls != ls {
			p.mu.Unlock()
			return 0
		}
		if caughtUp {
			break
		}
		p.mu.Unlock()
		select {
		case <-tick.C: // heartbeat replies update peerApplied
			continue
		case <-wait.Done(): // settle for the most up-to-date peer
		}
		p.mu.Lock()
		break
	}
	p.stepDownLocked(fmt.Sprintf("handing leadership to %d", target))
	p.electionDeadline = time.Now().Add(4 * p.n.cfg.ElectionTimeout) // let the target win
	p.mu.Unlock()
	if target == 0 {
		return 0
	}
	var resp TimeoutNowResp
	cctx, cancel := context.WithTimeout(context.Background(), p.n.cfg.ElectionTimeout)
	defer cancel()
	if err := p.n.call(cctx, target, methodTimeoutNow, TimeoutNowReq{From: p.n.cfg.ID}, &resp); err != nil {
		p.n.log.Warn("handoff failed", "to", target, "err", err)
		return 0
	}
	return target
}

// onTimeoutNow: the leader is stepping down and asks this node to
// campaign at once.
//
// It campaigns right here rather than by letting its election timer run
// out: a learn from the old leader that arrives just after (a leader that
// removed itself tells every voter the commit that chose its removal)
// would push the timer back by an election timeout.
func (p *Proposer) onTimeoutNow(req TimeoutNowReq) TimeoutNowResp {
	p.mu.Lock()
	ctx, leading := p.ctx, p.ls != nil
	p.mu.Unlock()
	if ctx == nil || leading || !p.n.serving() || !p.n.config().isVoter(p.n.cfg.ID) {
		return TimeoutNowResp{OK: true}
	}
	p.n.log.Info("campaigning at the leader's request", "from", req.From)
	go p.campaign(ctx)
	return TimeoutNowResp{OK: true}
}

// pendingIDs returns the appends taken here that are still waiting.
func (p *Proposer) pendingIDs() []EntryID {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]EntryID, 0, len(p.pending))
	for id := range p.pending {
		ids = append(ids, id)
	}
	return ids
}

// anyPending reports whether any of ids is still waiting.
func (p *Proposer) anyPending(ids []EntryID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if _, ok := p.pending[id]; ok {
			return true
		}
	}
	return false
}

// noteRemoved: a voter refused this node's prepare because this node was
// removed; it catches up to the voter's commit point, and so applies the
// change that removed it.
func (p *Proposer) noteRemoved(from NodeID, pr Promise) {
	if pr.Removed {
		p.n.learner.noteCommit(Ballot{}, pr.Commit, from)
	}
}
