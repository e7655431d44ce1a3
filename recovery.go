package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// recovery.go: who a node is, and how it gets back a memory it lost.
//
// Paxos is safe only while no acceptor forgets a promise or an acceptance.
// A disk that comes back empty, or with a damaged acceptor journal, is an
// acceptor that forgot. This file keeps the node from voting with such a
// memory until it has been rebuilt from the others, and keeps nodes of two
// clusters apart.
//
// Identity. Each node keeps <data>/IDENTITY: its own id, the cluster's
// identity once known, and its state (discovering, member or recovering).
// The cluster's identity is the value of the first genesis entry chosen in
// the log (a system entry: it takes a slot, never a client index), so every
// node learns the same one; the first leader of a cluster that has none
// proposes it, once every member answers hello (so that no member runs a
// build that would take it for a client entry). It travels on every peer
// message (the Paxoslog-Cluster header, on each POST and on each peer
// stream's upgrade); a node that knows its identity refuses a message that
// names another (409) and logs it.
//
// A brand-new cluster and a lost disk. A node that starts with no IDENTITY
// and no journals is blank: it may be a new member of a new cluster, or a
// member whose disk was lost. It asks every member (hello):
//   - If any member holds state, the cluster has a past this node may have
//     voted in: it is recovering (below). The exception is a node that
//     founded the cluster with this very incarnation of it (next rule).
//   - If every member answers that it is blank too, the cluster is new:
//     the node founds it (a member with empty state, allowed to vote) and
//     records the founders with the incarnation numbers they answered
//     with. A blank node whose incarnation a founder lists founds too: it
//     has never voted, since blank nodes do not vote, and it is in a set
//     that was all blank. The incarnation number is drawn when a blank
//     node starts and kept in IDENTITY while it discovers, so a restart
//     keeps it and a wiped disk loses it (a node that comes back wiped is
//     never mistaken for a founder, whatever it answered before).
//
// So a new cluster starts once every member has started once: one command
// per node, as before, in any order. A node that cannot reach every member
// waits and says whom it waits for.
//
// Rebuilding (recovering). A node that lost its acceptor state (blank
// with a cluster that has a past, an acceptor journal that is missing or
// damaged, or a rebuild a crash cut short) answers no prepare and no
// accept, and counts toward no leader's read confirmation, until it has
// rebuilt:
//
//  1. It waits twice the election timeout after it started, so that any
//     campaign still gathering promises, one of which may have come from
//     this node before it forgot, has ended (every campaign gives up after
//     one election timeout). This is the one place where safety leans on
//     time: it needs every node's --election-timeout to be the same, and
//     clocks that run at about the same rate.
//  2. It runs phase 1 itself, with a ballot above every one it has seen,
//     against the other members only, and needs promises from a majority
//     of the whole cluster among them. That is the fence: each of those
//     members now refuses every lower ballot, so no accept or promise that
//     this node sent before it forgot can still become part of a majority,
//     and their promises report everything that may be chosen below the
//     fence (a majority that chose anything overlaps this one in a node
//     other than this one). A member that refuses with a higher promise
//     raises the next attempt above it; too few answers: it waits and
//     tries again. It never votes meanwhile.
//  3. Its learner catches up to the highest floor those promises report
//     (every slot up to it is chosen), and it syncs its client log.
//  4. It writes one checkpoint: promised = the fence ballot, floor = the
//     last slot its client log holds durably, and for every slot above it
//     the value with the highest ballot that the promises reported (a
//     value some proposer really proposed under that ballot, so valid
//     Paxos history). Then IDENTITY says member, and it votes again.
//
// The invariant this restores (the acceptor's A1-A4 across a lost disk,
// R1): every promise and acceptance that the node's earlier incarnation
// may have sent is either covered by the rebuilt state (the fence ballot
// is above any ballot that it promised and that can still be used, and
// every value that may be chosen is among the rebuilt acceptances or in
// the client log) or can no longer count toward any majority (its ballot
// is below the fence, which a majority other than this node has promised).
// A majority of the other members must answer, so a rebuild never draws on
// this node's own forgotten state, and while no such majority is up, it
// waits instead of voting. What it cannot survive: a majority of the
// cluster losing their disks at once (a majority of blank members then
// founds anew, and the members that still hold the old state refuse the
// new identity).
//
// The fence also ends the current leadership (the leader's accepts are
// refused); right after it, the node asks the leader it knew of to
// campaign at once, so the cluster pauses for about one round trip and a
// campaign, not an election timeout.

// phase says what a node may do.
type phase int32

const (
	phaseServing     phase = iota // votes, proposes, serves
	phaseDiscovering              // blank: asks the members whether the cluster is new
	phaseRecovering               // lost its acceptor state: rebuilds before it votes
)

func (p phase) String() string {
	switch p {
	case phaseDiscovering:
		return "discovering"
	case phaseRecovering:
		return "recovering"
	}
	return "serving"
}

var (
	// ErrRecovering: the node is rebuilding its acceptor state from its
	// peers and takes no appends and no linearizable reads until done.
	ErrRecovering = errors.New("node is rebuilding its state from its peers")
	// ErrDiscovering: the node started blank and waits to hear from every
	// member whether the cluster is new.
	ErrDiscovering = errors.New("node is waiting to hear from the other members (a new cluster starts once every member has started)")
	// errForeignCluster: a peer message names another cluster.
	errForeignCluster = errors.New("peer message from another cluster")
)

// clusterHeader carries the sender's cluster identity on peer requests.
const clusterHeader = "Paxoslog-Cluster"

// identityFile is where a node keeps its identity.
const identityFile = "IDENTITY"

// founder is a member that founded the cluster, with the incarnation
// number it answered with.
type founder struct {
	ID    NodeID `json:"id"`
	Nonce uint64 `json:"nonce"`
}

// identity is what <data>/IDENTITY holds.
type identity struct {
	Node     NodeID    `json:"node"`
	Cluster  string    `json:"cluster,omitempty"` // hex; "" until known
	State    string    `json:"state"`             // "discovering", "member" or "recovering"
	Nonce    uint64    `json:"nonce,omitempty"`   // discovering: this incarnation's number
	Founders []founder `json:"founders,omitempty"`
	// Membership is the latest membership the log chose that this node
	// applied (membership.go); nil until then. Earlier holds the ones
	// chosen before it that this node knows, oldest first: it serves them
	// with the slots a peer catches up on (M1).
	Membership *membership   `json:"membership,omitempty"`
	Earlier    []*membership `json:"earlier,omitempty"`
	// Applied is the slot this node had applied, its client log synced
	// through AppliedIndex, when it last recorded a membership it applied:
	// a restart counts every slot through it as applied (slots of system
	// entries and no-ops leave no client log record), so it never finds
	// its applied slot below a membership it recorded (M1).
	Applied      Slot  `json:"applied,omitempty"`
	AppliedIndex Index `json:"applied_index,omitempty"`
}

// errIdentityDamaged: IDENTITY fails its checksum or does not parse.
var errIdentityDamaged = errors.New("identity file is damaged")

// readIdentity reads dir's IDENTITY: one line of JSON, then its crc32c in
// hex. It returns os.ErrNotExist if there is none.
func readIdentity(dir string) (identity, error) {
	var id identity
	b, err := os.ReadFile(filepath.Join(dir, identityFile))
	if err != nil {
		return id, err
	}
	body, sum, ok := bytes.Cut(bytes.TrimRight(b, "\n"), []byte("\n"))
	want, perr := strconv.ParseUint(string(sum), 16, 32)
	if !ok || perr != nil || uint32(want) != crc32.Checksum(body, crcTable) {
		return id, errIdentityDamaged
	}
	if err := json.Unmarshal(body, &id); err != nil {
		return id, fmt.Errorf("%w: %v", errIdentityDamaged, err)
	}
	return id, nil
}

// writeIdentity replaces dir's IDENTITY durably.
func writeIdentity(dir string, id identity) error {
	body, err := json.Marshal(id)
	if err != nil {
		return err
	}
	b := fmt.Appendf(body, "\n%08x\n", crc32.Checksum(body, crcTable))
	if err := replaceFileSync(filepath.Join(dir, identityFile), b); err != nil {
		return fmt.Errorf("write %s: %w", identityFile, err)
	}
	return nil
}

// randomUint64 draws 64 random bits.
func randomUint64() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on supported platforms
	}
	return binary.BigEndian.Uint64(b[:])
}

// newClusterID draws a cluster identity: 128 random bits in hex.
func newClusterID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// startPhase reads the node's identity and decides, from it and from what
// the journals hold, how the node starts (see the top of this file). It
// writes IDENTITY when the decision changes it. accDamaged says that the
// acceptor journal was found damaged as it opened; accEmpty says that it
// holds no record, accVoted that its state records a vote (a promise, an
// acceptance or a floor: a founder's first checkpoint records none);
// logEmpty that the client log holds no record.
func (n *Node) startPhase(accDamaged, accEmpty, accVoted, logEmpty bool) (phase, error) {
	dir := n.cfg.DataDir
	id, err := readIdentity(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		id = identity{Node: n.cfg.ID}
		switch {
		case !accVoted && logEmpty:
			id.State = "discovering"
		case accEmpty:
			n.log.Error("the acceptor journal is missing but the client log is not: this node forgot its promises and acceptances", "file", "acceptor")
			id.State = "recovering"
		default: // written by a build without identities: a member
			id.State = "member"
		}
	case errors.Is(err, errIdentityDamaged):
		n.log.Error("identity file is damaged; rebuilding from peers", "file", identityFile, "err", err)
		id = identity{Node: n.cfg.ID, State: "recovering"}
	case err != nil:
		return 0, fmt.Errorf("read %s: %w", identityFile, err)
	case id.Node != n.cfg.ID:
		return 0, fmt.Errorf("--data %s belongs to node %d, not to node %d: check --id and --data", dir, id.Node, n.cfg.ID)
	}
	switch {
	case accDamaged:
		id.State = "recovering"
	case id.State == "discovering" && (accVoted || !logEmpty):
		id.State = "recovering" // it holds something it should not have
	case id.State == "member" && accEmpty:
		n.log.Error("the acceptor journal is empty: this node forgot its promises and acceptances", "file", "acceptor")
		id.State = "recovering"
	}
	if id.State == "discovering" {
		if id.Nonce == 0 {
			id.Nonce = randomUint64()
		}
		if len(n.cfg.Members) == 1 && len(n.cfg.Join) == 0 {
			// Alone: every member (this one) is blank, so the cluster is
			// new. The acceptor's first record goes first: a crash before
			// IDENTITY is written leaves a journal with state and no
			// IDENTITY, which starts as a member; the other order would
			// leave a member with an empty acceptor journal, which must
			// rebuild and, alone, cannot.
			if err := n.acceptor.install(Ballot{}, 0, 0, nil); err != nil {
				return 0, err
			}
			id.State, id.Nonce, id.Founders = "member", 0, []founder{{ID: n.cfg.ID}}
		}
	}
	if err := writeIdentity(dir, id); err != nil {
		return 0, err
	}
	n.identity = id
	switch id.State {
	case "discovering":
		return phaseDiscovering, nil
	case "recovering":
		return phaseRecovering, nil
	}
	return phaseServing, nil
}

// startMembership is the membership the node starts with: the one its
// data recorded, whatever --peers says (a mismatch is logged at WARN),
// else the one --peers gives.
func (n *Node) startMembership() *membership {
	n.idMu.Lock()
	rec := n.identity.Membership
	n.idMu.Unlock()
	if rec == nil {
		if len(n.cfg.Join) > 0 {
			return newMembership(nil, 0, nil) // a joining node knows no membership until it is in one
		}
		return flagMembership(n.cfg.Members, n.cfg.PeerURLs)
	}
	m := newMembership(rec.Members, rec.Slot, rec.Removed)
	if !m.sameIDs(n.cfg.Members) {
		n.log.Warn("the membership recorded in --data differs from --peers; using the recorded one", "recorded", m.String(), "peers", fmt.Sprint(n.cfg.Members))
	}
	return m
}

// adoptMembership records m, chosen in m.Slot, as this node's membership
// if it is newer than the one it has; an older one it did not know joins
// Earlier (a node that joined, or rebuilt, learns the history it skipped).
// m comes from a peer (a joining node), not from applying its slot.
func (n *Node) adoptMembership(m *membership) { n.adoptMembershipApplied(m, 0, 0, "") }

// adoptMembershipApplied is adoptMembership for a node that has applied
// every slot through applied, its client log synced through index
// (Learner.adoptLocked); 0 when m comes from elsewhere. cluster, if set,
// is the identity the genesis entry that sets m gives: recorded in the
// same write, so that no restart finds the identity without the first
// membership (membershipAt falls back to --peers only without both).
func (n *Node) adoptMembershipApplied(m *membership, applied Slot, index Index, cluster string) {
	noteApplied := func(id *identity) {
		if applied > id.Applied {
			id.Applied, id.AppliedIndex = applied, index
		}
	}
	cur := n.config()
	if cur != nil && cur.Slot >= m.Slot && cur.Slot != 0 {
		if m.Slot == cur.Slot || m.Slot == 0 {
			return
		}
		n.idMu.Lock()
		known := false
		for _, e := range n.identity.Earlier {
			known = known || e.Slot == m.Slot
		}
		n.idMu.Unlock()
		if known {
			return
		}
		if err := n.updateIdentity(func(id *identity) { id.Earlier = withEarlier(id.Earlier, m); noteApplied(id) }); err != nil {
			n.fatal(fmt.Errorf("record membership: %w", err))
		}
		return
	}
	newCluster := cluster != "" && n.ClusterID() == ""
	if err := n.updateIdentity(func(id *identity) {
		if cur != nil && cur.Slot != 0 {
			id.Earlier = withEarlier(id.Earlier, cur)
		}
		id.Membership = m
		noteApplied(id)
		if newCluster {
			id.Cluster = cluster
		}
	}); err != nil {
		n.fatal(fmt.Errorf("record membership: %w", err))
		return
	}
	if newCluster {
		n.log.Info("cluster identity", "cluster", cluster, "source", fmt.Sprintf("genesis entry in slot %d", m.Slot))
		if n.onIdentity != nil {
			n.onIdentity()
		}
	}
	n.mem.Store(m)
	n.metrics.members.Set(float64(len(m.ids())))
	n.metrics.voters.Set(float64(len(m.voters())))
	if cur != nil && cur.Slot != 0 {
		n.metrics.memberChanges.Inc()
	}
	if n.onMembership != nil {
		n.onMembership(m)
	}
}

// withEarlier returns the history h (oldest first) with m in its place.
func withEarlier(h []*membership, m *membership) []*membership {
	out := make([]*membership, 0, len(h)+1)
	for _, e := range h {
		if e.Slot < m.Slot {
			out = append(out, e)
		}
	}
	out = append(out, m)
	for _, e := range h {
		if e.Slot > m.Slot {
			out = append(out, e)
		}
	}
	return out
}

// membershipsFor returns what a peer that applies slots from through to
// must adopt to go by the right membership (M1): the membership that
// governs slot from, and every one chosen in (from, to], oldest first.
// Those this node does not know (it joined, or rebuilt, after them) are
// left out.
func (n *Node) membershipsFor(from, to Slot) []*membership {
	var out []*membership
	for _, m := range n.history() {
		switch {
		case m.Slot > to:
		case m.Slot < from:
			out = append(out[:0], m) // the latest before from governs it
		default:
			out = append(out, m)
		}
	}
	return out
}

// membershipAt returns the membership that governs slot applied+1 (M1)
// for a node that has applied through applied: the latest one chosen at
// or below applied that this node knows. Memberships are recorded in slot
// order as slots are applied, with the applied slot a restart resumes
// from, so a node knows every one at or below its applied slot. Before
// the genesis entry (no cluster identity yet) --peers governs. A joining
// node, which took the cluster's latest membership when it was added, and
// a node that knows the identity but has not applied the genesis entry (a
// rebuilt disk) get nil until they have caught up to one.
func (n *Node) membershipAt(applied Slot) *membership {
	var best *membership
	for _, m := range n.history() {
		if m.Slot <= applied {
			best = m
		}
	}
	if best == nil && n.ClusterID() == "" {
		best = flagMembership(n.cfg.Members, n.cfg.PeerURLs) // a joining node's is empty: it votes in nothing
	}
	return best
}

// history returns the memberships IDENTITY records, oldest first.
func (n *Node) history() []*membership {
	n.idMu.Lock()
	defer n.idMu.Unlock()
	h := append([]*membership(nil), n.identity.Earlier...)
	if m := n.identity.Membership; m != nil && m.Slot > 0 {
		h = append(h, m)
	}
	return h
}

// ClusterID returns the cluster's identity, "" while unknown.
func (n *Node) ClusterID() string {
	n.idMu.Lock()
	defer n.idMu.Unlock()
	return n.identity.Cluster
}

// phase returns what the node may do now.
func (n *Node) phase() phase { return phase(n.phaseNow.Load()) }

// setPhase moves the node to ph.
func (n *Node) setPhase(ph phase) {
	n.phaseNow.Store(int32(ph))
	if ph == phaseServing {
		n.servingOnce.Do(func() { close(n.servingCh) })
	}
}

// waitServing waits, up to the request timeout or ctx, for a blank node
// to found its cluster or find it must recover: a new cluster starts in
// moments, and an append that arrives meanwhile is better kept than
// refused. A recovering node answers at once (a rebuild can take long).
func (n *Node) waitServing(ctx context.Context) error {
	if n.phase() != phaseDiscovering {
		return n.notServingErr()
	}
	t := time.NewTimer(n.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case <-n.servingCh:
		return nil
	case <-t.C:
	case <-ctx.Done():
	case <-n.stopped:
		return ErrStopped
	}
	return n.notServingErr()
}

// serving reports whether the node votes and serves.
func (n *Node) serving() bool { return n.phase() == phaseServing }

// notServingErr is the error that answers a request the node cannot
// serve in its phase, or nil while it serves.
func (n *Node) notServingErr() error {
	switch n.phase() {
	case phaseDiscovering:
		return ErrDiscovering
	case phaseRecovering:
		return ErrRecovering
	}
	return nil
}

// updateIdentity changes the identity and writes it.
func (n *Node) updateIdentity(f func(*identity)) error {
	n.idMu.Lock()
	defer n.idMu.Unlock()
	id := n.identity
	id.Founders = append([]founder(nil), id.Founders...)
	f(&id)
	if err := writeIdentity(n.cfg.DataDir, id); err != nil {
		return err
	}
	n.identity = id
	return nil
}

// adoptCluster records the cluster's identity, learned from source, if
// this node does not know it yet. Knowing it, a different one is an error
// (logged; this node keeps its own).
func (n *Node) adoptCluster(cluster, source string) {
	if cluster == "" {
		return
	}
	own := n.ClusterID()
	if own == cluster {
		return
	}
	if own != "" {
		n.log.Error("a peer names another cluster identity", "cluster", own, "peer_cluster", cluster, "source", source)
		return
	}
	if err := n.updateIdentity(func(id *identity) { id.Cluster = cluster }); err != nil {
		n.fatal(fmt.Errorf("record cluster identity: %w", err))
		return
	}
	n.log.Info("cluster identity", "cluster", cluster, "source", source)
	if n.onIdentity != nil {
		n.onIdentity() // peer streams opened before it re-declare who they are
	}
}

// checkCluster refuses a peer message that names another cluster. The
// sender's identity is "" until it knows it.
func (n *Node) checkCluster(cluster, method string) error {
	if cluster == "" {
		return nil
	}
	own := n.ClusterID()
	if own == "" || own == cluster {
		return nil
	}
	now := time.Now().UnixNano()
	if last := n.foreignLogged.Load(); now-last > int64(10*time.Second) && n.foreignLogged.CompareAndSwap(last, now) {
		n.log.Error("refused a peer message from another cluster", "cluster", own, "peer_cluster", cluster, "method", method)
	}
	return &apiError{409, fmt.Sprintf("%v: this node belongs to cluster %s, the message names %s", errForeignCluster, own, cluster)}
}

// The hello message: what a node tells one that asks who it is.
const methodHello = "hello"

// HelloReq asks a member who it is; Nonce is the sender's incarnation
// number while it discovers (0 otherwise).
type HelloReq struct {
	From  NodeID `json:"from"`
	Nonce uint64 `json:"nonce,omitempty"`
}

// HelloResp: State is "blank" (a node that discovers: no state, no vote
// yet) or "member" (it holds state, or is rebuilding it).
type HelloResp struct {
	Cluster    string    `json:"cluster,omitempty"`
	State      string    `json:"state"`
	Nonce      uint64    `json:"nonce,omitempty"`
	Founders   []founder `json:"founders,omitempty"`
	Recovering bool      `json:"recovering,omitempty"`
	// Membership is the membership the member goes by (a joining node
	// waits until it is in it).
	Membership *membership `json:"membership,omitempty"`
}

func (n *Node) onHello(HelloReq) HelloResp {
	n.idMu.Lock()
	id := n.identity
	n.idMu.Unlock()
	switch n.phase() {
	case phaseDiscovering:
		return HelloResp{State: "blank", Nonce: id.Nonce}
	case phaseRecovering:
		return HelloResp{Cluster: id.Cluster, State: "member", Recovering: true, Founders: id.Founders, Membership: n.config()}
	}
	return HelloResp{Cluster: id.Cluster, State: "member", Founders: id.Founders, Membership: n.config()}
}

// others returns every member but this node.
func (n *Node) others() []NodeID {
	var out []NodeID
	for _, id := range n.config().ids() {
		if id != n.cfg.ID {
			out = append(out, id)
		}
	}
	return out
}

// helloAll asks every other member who it is, in parallel, and returns
// the answers of those that answered within timeout.
func (n *Node) helloAll(ctx context.Context, nonce uint64, timeout time.Duration) map[NodeID]HelloResp {
	type reply struct {
		from NodeID
		resp HelloResp
		err  error
	}
	others := n.others()
	replies := make(chan reply, len(others))
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, to := range others {
		go func() {
			var r HelloResp
			err := n.call(cctx, to, methodHello, HelloReq{From: n.cfg.ID, Nonce: nonce}, &r)
			replies <- reply{to, r, err}
		}()
	}
	out := make(map[NodeID]HelloResp, len(others))
	for range others {
		r := <-replies
		if r.err == nil {
			out[r.from] = r.resp
		}
	}
	return out
}

// waitLog logs what a waiting loop waits for, at most every 5 seconds.
type waitLog struct{ last time.Time }

func (w *waitLog) due() bool {
	if time.Since(w.last) < 5*time.Second {
		return false
	}
	w.last = time.Now()
	return true
}

// discover runs while the node is blank: it asks every member who it is
// until it can tell a new cluster (found) from one with a past (recover).
func (n *Node) discover(ctx context.Context) {
	if len(n.cfg.Join) > 0 {
		n.join(ctx)
		return
	}
	n.idMu.Lock()
	nonce := n.identity.Nonce
	n.idMu.Unlock()
	n.log.Info("blank data directory: asking the other members whether the cluster is new", "members", len(n.config().ids()))
	var wl waitLog
	for {
		answers := n.helloAll(ctx, nonce, n.cfg.ElectionTimeout)
		var holders []NodeID
		serving := false // a holder that serves: it is not short of state itself
		clusters := map[string]bool{}
		for id, a := range answers {
			if a.State != "member" {
				continue
			}
			serving = serving || !a.Recovering
			for _, f := range a.Founders {
				if f.ID == n.cfg.ID && f.Nonce == nonce {
					n.found(a.Founders, fmt.Sprintf("node %d founded the cluster with this node", id))
					return
				}
			}
			holders = append(holders, id)
			if a.Cluster != "" {
				clusters[a.Cluster] = true
			}
		}
		switch {
		case len(clusters) > 1:
			if wl.due() {
				n.log.Error("members name different cluster identities; waiting", "clusters", strings.Join(sortedKeys(clusters), ","))
			}
		case len(holders) > 0 && !serving:
			// Every member with state that answered is rebuilding: it
			// lost its disk too, and this node may be a founder whose
			// founders are all out of reach. Recovering now could leave
			// two nodes each waiting for the other; a member that serves
			// says which this node is.
			if wl.due() {
				n.log.Info("the members that answered are rebuilding; waiting for one that serves", "holders", fmt.Sprint(holders))
			}
		case len(holders) > 0:
			var cluster string
			for c := range clusters {
				cluster = c
			}
			// Rebuild under the newest membership the log chose that a
			// holder reports, not --peers: --peers lists ids, not who
			// votes, and a rebuild that counted a non-voter as a voter
			// would wait for a majority it cannot get while its fences
			// outbid every campaign of the members that have one. A
			// recovering holder's membership counts too: each was chosen
			// (Slot > 0), and the newest of those that answer wins.
			var newest *membership
			for _, a := range answers {
				if a.State == "member" && a.Membership != nil && a.Membership.Slot > 0 &&
					(newest == nil || a.Membership.Slot > newest.Slot) {
					newest = a.Membership
				}
			}
			if newest != nil {
				if _, ok := newest.get(n.cfg.ID); !ok {
					if wl.due() {
						n.log.Error("the cluster's membership does not list this node (it was removed); waiting", "members", fmt.Sprint(newest.ids()))
					}
					break
				}
				n.adoptMembership(newest)
			}
			sort.Slice(holders, func(i, j int) bool { return holders[i] < holders[j] })
			n.log.Info("the cluster has state: this node lost its disk or is new to it, and rebuilds before it votes",
				"holders", fmt.Sprint(holders), "cluster", cluster)
			if err := n.updateIdentity(func(id *identity) {
				id.State, id.Nonce, id.Cluster = "recovering", 0, cluster
			}); err != nil {
				n.fatal(err)
				return
			}
			n.setPhase(phaseRecovering)
			n.metrics.recovering.Set(1)
			n.rebuild(ctx)
			return
		case len(answers) == len(n.others()):
			founders := []founder{{ID: n.cfg.ID, Nonce: nonce}}
			for id, a := range answers {
				founders = append(founders, founder{ID: id, Nonce: a.Nonce})
			}
			sort.Slice(founders, func(i, j int) bool { return founders[i].ID < founders[j].ID })
			n.found(founders, "every member is blank: a new cluster")
			return
		default:
			if wl.due() {
				var missing []NodeID
				for _, id := range n.others() {
					if _, ok := answers[id]; !ok {
						missing = append(missing, id)
					}
				}
				n.log.Info("waiting for every member to answer before founding a new cluster", "missing", fmt.Sprint(missing))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(n.cfg.ElectionTimeout): // the next round of asking
		}
	}
}

// join runs while a blank node started to join a running cluster
// (--join) is not a member yet: it asks the nodes it was given until one
// answers with a membership that lists it. Added as a non-voter, it has
// never promised or accepted anything (its id is new: M5), so it starts
// with empty acceptor state and learns the log; listed as a voter, its
// disk was lost, and it rebuilds (recovering).
func (n *Node) join(ctx context.Context) {
	n.log.Info("joining: waiting to be added to the cluster", "ask", len(n.cfg.Join))
	var wl waitLog
	for {
		answers := n.helloVia(ctx, n.cfg.Join)
		for _, a := range answers {
			if a.Membership == nil || a.Membership.Slot == 0 || a.Recovering {
				continue // only a membership the log chose tells who is a member
			}
			x, ok := a.Membership.get(n.cfg.ID)
			if !ok {
				continue
			}
			n.adoptCluster(a.Cluster, "the cluster joined")
			n.adoptMembership(a.Membership)
			if x.Voter {
				n.log.Info("this node is a voter already: its disk was lost; it rebuilds before it votes")
				if err := n.updateIdentity(func(id *identity) { id.State, id.Nonce = "recovering", 0 }); err != nil {
					n.fatal(err)
					return
				}
				n.setPhase(phaseRecovering)
				n.metrics.recovering.Set(1)
				n.rebuild(ctx)
				return
			}
			if err := n.acceptor.install(Ballot{}, 0, 0, nil); err != nil {
				n.storageFailed(err)
				return
			}
			if err := n.updateIdentity(func(id *identity) { id.State, id.Nonce = "member", 0 }); err != nil {
				n.fatal(err)
				return
			}
			n.setPhase(phaseServing)
			n.log.Info("joined the cluster as a non-voter; a voter once caught up", "members", a.Membership.String())
			n.proposer.wake()
			return
		}
		if wl.due() {
			n.log.Info("waiting to be added: POST /v1/admin/members on a member", "id", n.cfg.ID)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(n.cfg.ElectionTimeout):
		}
	}
}

// helloVia asks ids who they are and returns the answers.
func (n *Node) helloVia(ctx context.Context, ids []NodeID) []HelloResp {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.ElectionTimeout)
	defer cancel()
	out := make(chan *HelloResp, len(ids))
	for _, to := range ids {
		go func() {
			var r HelloResp
			if err := n.call(cctx, to, methodHello, HelloReq{From: n.cfg.ID}, &r); err != nil {
				out <- nil
				return
			}
			out <- &r
		}()
	}
	var answers []HelloResp
	for range ids {
		if r := <-out; r != nil {
			answers = append(answers, *r)
		}
	}
	return answers
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// found makes a blank node a member of a new cluster, with empty state.
func (n *Node) found(founders []founder, why string) {
	// The acceptor's first record goes first: a crash right after it
	// leaves a node that has voted in nothing (still blank, see
	// startPhase), while a member with an empty acceptor journal would
	// have to rebuild.
	if err := n.acceptor.install(Ballot{}, 0, 0, nil); err != nil {
		n.storageFailed(err)
		return
	}
	if err := n.updateIdentity(func(id *identity) {
		id.State, id.Nonce, id.Founders = "member", 0, founders
	}); err != nil {
		n.fatal(err)
		return
	}
	n.setPhase(phaseServing)
	n.log.Info("founding member of a new cluster", "why", why)
	n.proposer.wake()
}

// rebuild restores the acceptor's state from a majority of the other
// members (steps 1-4 at the top of this file) and then lets the node vote.
func (n *Node) rebuild(ctx context.Context) {
	otherVoters := 0
	for _, id := range n.config().voters() {
		if id != n.cfg.ID {
			otherVoters++
		}
	}
	if otherVoters < n.quorumSize() {
		n.fatal(fmt.Errorf("the acceptor state under --data %s is missing or damaged, and a cluster of %d has too few other members to rebuild it from (a majority of the cluster among them): restore --data from a backup",
			n.cfg.DataDir, len(n.config().voters())))
		return
	}
	start := time.Now()
	n.log.Info("rebuilding acceptor state from a majority of the other members before voting", "members", len(n.config().ids()))
	quiet := n.started.Add(2 * n.cfg.ElectionTimeout)
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Until(quiet)): // step 1: campaigns that may hold this node's old promise have ended
	}
	var wl waitLog
	var promises map[NodeID]Promise
	var fence Ballot
	for {
		from := n.learner.Applied() + 1
		fence = n.proposer.nextBallot()
		var ok bool
		promises, ok = n.gatherFence(ctx, fence, from)
		if ok {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if promises != nil {
			continue // refused by a higher promise: nextBallot is above it now
		}
		if wl.due() {
			n.log.Info("rebuild waits for a majority of the cluster among the other members to answer", "need", n.quorumSize())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(n.cfg.ElectionTimeout):
		}
	}
	fenced := time.Now()
	if leader, _, _ := n.proposer.leaderInfo(); leader != 0 && leader != n.cfg.ID {
		go n.askToCampaign(ctx, leader)
	}
	// Step 3: the chosen prefix, up to the highest floor reported.
	var floor Slot
	var floorFrom NodeID
	for id, p := range promises {
		if p.Floor > floor {
			floor, floorFrom = p.Floor, id
		}
	}
	for n.learner.Applied() < floor {
		if err := n.learner.waitApplied(ctx, floor, floorFrom); err != nil {
			return // the node stops (waitApplied waits out anything else)
		}
	}
	applied, last, err := n.learner.durableApplied()
	if err != nil {
		n.fatal(err)
		return
	}
	// Step 4: the highest-ballot value reported for each slot above it.
	best := map[Slot]SlotValue{}
	for _, p := range promises {
		for _, sv := range p.Accepted {
			if sv.Slot <= applied {
				continue
			}
			if cur, ok := best[sv.Slot]; !ok || cur.Ballot.Less(sv.Ballot) {
				best[sv.Slot] = sv
			}
		}
	}
	vals := make([]SlotValue, 0, len(best))
	for _, sv := range best {
		vals = append(vals, sv)
	}
	if err := n.acceptor.install(fence, applied, last, vals); err != nil {
		n.storageFailed(err)
		return
	}
	if err := n.updateIdentity(func(id *identity) { id.State = "member" }); err != nil {
		n.fatal(err)
		return
	}
	n.setPhase(phaseServing)
	n.metrics.recovering.Set(0)
	n.metrics.ballotRound.Set(float64(fence.Round))
	n.log.Info("rebuilt acceptor state; voting again", "fence", fence.String(), "floor", applied, "accepted", len(vals),
		"took", time.Since(start).Round(time.Millisecond), "catch_up", time.Since(fenced).Round(time.Millisecond))
	n.proposer.wake()
}

// gatherFence sends prepare for the fence ballot to every other member and
// waits for promises from a majority of the whole cluster among them. It
// returns them and true; or, refused, a non-nil empty map (try a higher
// ballot now); or nil (too few answered).
func (n *Node) gatherFence(ctx context.Context, b Ballot, from Slot) (map[NodeID]Promise, bool) {
	type reply struct {
		from NodeID
		pr   Promise
		err  error
	}
	others := n.others()
	cctx, cancel := context.WithTimeout(ctx, n.cfg.ElectionTimeout)
	defer cancel()
	replies := make(chan reply, len(others))
	req := PrepareReq{From: n.cfg.ID, Ballot: b, Slot: from, Binary: true}
	for _, to := range others {
		go func() {
			var pr Promise
			err := n.call(cctx, to, methodPrepare, req, &pr)
			replies <- reply{to, pr, err}
		}()
	}
	promises := map[NodeID]Promise{}
	for range others {
		var r reply
		select {
		case r = <-replies:
		case <-cctx.Done():
			return nil, false
		}
		if r.err != nil {
			continue
		}
		if !r.pr.OK {
			n.proposer.observe(r.pr.Promised)
			return map[NodeID]Promise{}, false
		}
		promises[r.from] = r.pr
		if len(promises) >= n.quorumSize() {
			return promises, true
		}
	}
	return nil, false
}

// askToCampaign tells the leader whose ballot the fence ended to campaign
// at once, so the cluster need not wait out an election timeout.
func (n *Node) askToCampaign(ctx context.Context, to NodeID) {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.ElectionTimeout)
	defer cancel()
	var resp TimeoutNowResp
	if err := n.call(cctx, to, methodTimeoutNow, TimeoutNowReq{From: n.cfg.ID}, &resp); err != nil {
		n.log.Debug("asking the old leader to campaign", "to", to, "err", err)
	}
}

// checkPeers, at start, asks every other member who it is. A member that
// knows the cluster's identity tells a node that does not (a build without
// identities, or one whose IDENTITY was lost); a node whose peers all
// belong to another cluster has the wrong --data or --peers, and stops.
func (n *Node) checkPeers(ctx context.Context) {
	others := n.others()
	if len(others) == 0 {
		return
	}
	heard := map[NodeID]HelloResp{}
	deadline := time.Now().Add(30 * time.Second)
	for len(heard) < len(others) && time.Now().Before(deadline) {
		for id, a := range n.helloAll(ctx, 0, n.cfg.ElectionTimeout) {
			heard[id] = a
		}
		if len(heard) < len(others) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(n.cfg.ElectionTimeout):
			}
		}
	}
	own := n.ClusterID()
	foreign := map[string][]NodeID{}
	known := map[string]bool{}
	for id, a := range heard {
		if a.Cluster == "" {
			continue
		}
		known[a.Cluster] = true
		if own != "" && a.Cluster != own {
			foreign[a.Cluster] = append(foreign[a.Cluster], id)
		}
	}
	for c, ids := range foreign {
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		if len(ids) > len(others)/2 {
			n.fatal(fmt.Errorf("--data %s belongs to cluster %s, but members %v belong to cluster %s: check --data and --peers", n.cfg.DataDir, own, ids, c))
			return
		}
		n.log.Error("members belong to another cluster", "cluster", own, "peer_cluster", c, "members", fmt.Sprint(ids))
	}
	if own == "" && len(known) == 1 {
		for c := range known {
			n.adoptCluster(c, "the other members")
		}
	}
}
