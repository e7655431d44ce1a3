package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// membership.go: who the members are, as the replicated state says.
//
// A membership is a plain value: the members (id, URL, and whether each
// is a voter), the slot whose chosen value set it, and the ids that were
// members once and are no more (never used again). It lives in the log as
// system entries (a slot, no client index): the genesis entry carries the
// first one, built from the first leader's --peers; every node applies
// them in slot order and keeps the latest in IDENTITY, which a restart
// uses whatever --peers says (a mismatch is logged at WARN). Only voters
// count toward a majority; a node's --peers may give other URLs for the
// members than the membership's (a proxy between them): the ids decide.

// Changes (one at a time, through the log, never taking a client index):
//
//   - M1: the membership that governs slot i is the one set by the
//     membership entry chosen in the highest slot below i (the genesis
//     entry's for the first; the one --peers gives before it). A value is
//     chosen in slot i when a majority of that membership's voters
//     accepted it under one ballot.
//   - M2: a change adds one member as a non-voter, promotes one to voter,
//     or removes one: a membership and the next differ in at most one
//     voter, so any majority of the one and any majority of the next
//     share a voter (the single-server change argument). That is what
//     keeps two consecutive memberships from choosing different values:
//     each is the invariant the rules below rely on.
//   - M3: a leader proposes a change in slot s and opens no slot after s
//     until s is chosen, so it always knows the membership that governs
//     the slots it proposes (M1). A recovered change is the same: nothing
//     new is opened behind it until it is chosen. A value found after a
//     change in phase 1 was proposed by a leader that knew the change was
//     chosen, so it was proposed under the new membership.
//   - M4: phase 1 needs a majority of the membership that governs the
//     first slot it recovers, and then, for every change among the values
//     it recovers, a majority of the membership after it too, all under
//     the one ballot (the candidate asks the new voters as it finds
//     them). By M2 each of those majorities meets every majority that
//     could have chosen a value in the slots it governs.
//   - M1 in practice: every node adopts the memberships in slot order
//     as it applies their slots (from the values, or from the list a
//     catch-up reply carries: system entries are not in the client log)
//     and keeps them all in IDENTITY, so it knows every membership at or
//     below its applied slot. It records one only once its client log is
//     synced through the slot that set it, and records that applied slot
//     with it; a restart opens the learner from there, so its applied
//     slot is never below a membership it recorded (slots of system
//     entries leave no client log record to count from). A catch-up
//     reply's memberships are recorded slot by slot as they are applied,
//     so a crash can leave no later slot applied and an earlier
//     membership unrecorded. A candidate takes the one that governs its
//     first slot from that history (Node.membershipAt), never simply the
//     latest it knows: a node that joined, or rebuilt through joining,
//     took the cluster's latest when it was added, and catches up to it
//     before it campaigns (--peers governs only before the genesis entry
//     is applied and the cluster identity known). Only a voter of that
//     membership sends a prepare or leads, and a voter refuses prepares
//     from a member it knows was removed (one that was down through its
//     removal would otherwise unseat leaders).
//   - M5: ids are never used twice: a removed member's id stays in
//     Removed and cannot be added again, so no message from a former
//     incarnation of a member can count for a new one. A new member
//     starts as a non-voter with an empty acceptor, which never promised
//     or accepted anything, and becomes a voter once it has caught up.

// member is one member of the cluster.
type member struct {
	ID    NodeID `json:"id"`
	URL   string `json:"url"`
	Voter bool   `json:"voter"`
}

// membership is a membership value; it never changes once made (a new
// one replaces it), so it is shared without locks.
type membership struct {
	Members []member `json:"members"`
	Slot    Slot     `json:"slot,omitempty"`    // the slot that chose it; 0: from the command line
	Removed []NodeID `json:"removed,omitempty"` // former members: their ids are not used again

	voterIDs, allIDs []NodeID // derived, sorted
}

// newMembership makes a membership of ms (sorted by id).
func newMembership(ms []member, slot Slot, removed []NodeID) *membership {
	m := &membership{Members: append([]member(nil), ms...), Slot: slot, Removed: append([]NodeID(nil), removed...)}
	sort.Slice(m.Members, func(i, j int) bool { return m.Members[i].ID < m.Members[j].ID })
	sort.Slice(m.Removed, func(i, j int) bool { return m.Removed[i] < m.Removed[j] })
	for _, x := range m.Members {
		m.allIDs = append(m.allIDs, x.ID)
		if x.Voter {
			m.voterIDs = append(m.voterIDs, x.ID)
		}
	}
	return m
}

// UnmarshalJSON decodes a membership and derives what newMembership does.
func (m *membership) UnmarshalJSON(b []byte) error {
	var raw struct {
		Members []member `json:"members"`
		Slot    Slot     `json:"slot"`
		Removed []NodeID `json:"removed"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*m = *newMembership(raw.Members, raw.Slot, raw.Removed)
	return nil
}

// flagMembership is the membership --peers gives: every member a voter.
func flagMembership(ids []NodeID, urls map[NodeID]string) *membership {
	ms := make([]member, 0, len(ids))
	for _, id := range ids {
		ms = append(ms, member{ID: id, URL: urls[id], Voter: true})
	}
	return newMembership(ms, 0, nil)
}

// voters returns the voters' ids, sorted.
func (m *membership) voters() []NodeID { return m.voterIDs }

// ids returns every member's id, sorted.
func (m *membership) ids() []NodeID { return m.allIDs }

// quorum is the number of voters that make a majority.
func (m *membership) quorum() int { return len(m.voterIDs)/2 + 1 }

// get returns the member with id.
func (m *membership) get(id NodeID) (member, bool) {
	for _, x := range m.Members {
		if x.ID == id {
			return x, true
		}
	}
	return member{}, false
}

// isVoter reports whether id is a voter.
func (m *membership) isVoter(id NodeID) bool {
	x, ok := m.get(id)
	return ok && x.Voter
}

// sameIDs reports whether m's members are exactly ids.
func (m *membership) sameIDs(ids []NodeID) bool {
	if len(ids) != len(m.allIDs) {
		return false
	}
	s := append([]NodeID(nil), ids...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	for i := range s {
		if s[i] != m.allIDs[i] {
			return false
		}
	}
	return true
}

func (m *membership) String() string {
	var b strings.Builder
	for i, x := range m.Members {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d", x.ID)
		if !x.Voter {
			b.WriteString("(non-voter)")
		}
	}
	return b.String()
}

// membersValue is the data of a system entry that sets the membership,
// and of the genesis entry, which sets the first one with the identity.
type membersValue struct {
	Genesis string   `json:"genesis,omitempty"`
	Members []member `json:"members,omitempty"`
	Removed []NodeID `json:"removed,omitempty"`
}

// decodeSystem reads a system entry's data.
func decodeSystem(e Entry) (membersValue, bool) {
	var v membersValue
	if !e.isSystem() || json.Unmarshal(e.Data, &v) != nil {
		return v, false
	}
	return v, true
}

// config returns the membership this node goes by now.
func (n *Node) config() *membership { return n.mem.Load() }

// peerURLs returns the URL to reach each member by: this node's --peers
// where it names the member (its own view: a proxy may sit between),
// else the membership's.
func (n *Node) peerURLs() map[NodeID]string {
	out := map[NodeID]string{}
	for id, u := range n.cfg.JoinURLs {
		out[id] = u // the nodes a joining node asks (ids no member has)
	}
	for _, x := range n.config().Members {
		out[x.ID] = x.URL
		if u := n.cfg.PeerURLs[x.ID]; u != "" {
			out[x.ID] = u
		}
	}
	return out
}

// isMember reports whether this node is in its membership.
func (n *Node) isMember() bool {
	_, ok := n.config().get(n.cfg.ID)
	return ok
}

// MembersReply is the body of GET /v1/members.
type MembersReply struct {
	Members []member `json:"members"`
	Leader  NodeID   `json:"leader"`
}

// Members reports the membership this node knows as chosen, and who it
// believes leads.
func (n *Node) Members() MembersReply {
	leader, _, _ := n.proposer.leaderInfo()
	return MembersReply{Members: append([]member(nil), n.config().Members...), Leader: leader}
}

// with returns a copy of m with f applied to its members, chosen in slot.
func (m *membership) with(f func([]member) []member, removed []NodeID) *membership {
	return newMembership(f(append([]member(nil), m.Members...)), 0, append(append([]NodeID(nil), m.Removed...), removed...))
}

// withAdded returns m with x added as a non-voter.
func (m *membership) withAdded(x member) *membership {
	x.Voter = false
	return m.with(func(ms []member) []member { return append(ms, x) }, nil)
}

// withPromoted returns m with id a voter.
func (m *membership) withPromoted(id NodeID) *membership {
	return m.with(func(ms []member) []member {
		for i := range ms {
			if ms[i].ID == id {
				ms[i].Voter = true
			}
		}
		return ms
	}, nil)
}

// withRemoved returns m without id.
func (m *membership) withRemoved(id NodeID) *membership {
	return m.with(func(ms []member) []member {
		out := ms[:0]
		for _, x := range ms {
			if x.ID != id {
				out = append(out, x)
			}
		}
		return out
	}, []NodeID{id})
}

// wasRemoved reports whether id was a member once and was removed.
func (m *membership) wasRemoved(id NodeID) bool {
	for _, r := range m.Removed {
		if r == id {
			return true
		}
	}
	return false
}

// sameMembers reports whether m and o have the same members, voters and
// URLs.
func (m *membership) sameMembers(o *membership) bool {
	if len(m.Members) != len(o.Members) {
		return false
	}
	for i := range m.Members {
		if m.Members[i] != o.Members[i] {
			return false
		}
	}
	return true
}

// changeIn returns the membership a value sets (M1), if it holds a
// membership entry whose members differ from cur's, else nil.
func changeIn(v Value, cur *membership) *membership {
	var out *membership
	for _, e := range v.Entries {
		if mv, ok := decodeSystem(e); ok && len(mv.Members) > 0 {
			if next := newMembership(mv.Members, 0, mv.Removed); !next.sameMembers(cur) {
				out = next
			}
		}
	}
	return out
}

// membershipEntry is the system entry that sets m.
func membershipEntry(m *membership) Entry {
	return systemEntry(membersValue{Members: m.Members, Removed: m.Removed})
}

var (
	// ErrNotMember: this node is not in the membership it knows (it was
	// removed, or has not been added yet).
	ErrNotMember = errors.New("this node is not a member of the cluster")
	// errNotVoter: a prepare or accept to a node that is no voter.
	errNotVoter = errors.New("this node is not a voter")
)

// methodReconfig asks the leader for a membership change.
const methodReconfig = "reconfig"

// ReconfigReq asks for one change: Add a member (as a non-voter) or
// Remove one. Forwarded: sent on by a node that does not lead.
type ReconfigReq struct {
	From      NodeID  `json:"from"`
	Add       *member `json:"add,omitempty"`
	Remove    NodeID  `json:"remove,omitempty"`
	Forwarded bool    `json:"forwarded,omitempty"`
}

// ReconfigResp: the membership once the change is chosen, or the HTTP
// status and message it failed with.
type ReconfigResp struct {
	Members []member `json:"members,omitempty"`
	Leader  NodeID   `json:"leader"`
	Code    int      `json:"code,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// Reconfig makes one membership change through the leader, wherever it
// is, and returns the membership once the change is chosen.
func (n *Node) Reconfig(ctx context.Context, req ReconfigReq) (MembersReply, error) {
	if err := n.notServingErr(); err != nil {
		return MembersReply{}, err
	}
	leader, _, leading := n.proposer.leaderInfo()
	if leading {
		return n.reconfigHere(ctx, req)
	}
	if leader == 0 || req.Forwarded {
		return MembersReply{}, ErrNoQuorum // no leader known (yet): try again
	}
	req.From, req.Forwarded = n.cfg.ID, true
	cctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	var resp ReconfigResp
	if err := n.call(cctx, leader, methodReconfig, req, &resp); err != nil {
		return MembersReply{}, fmt.Errorf("%w: %v", ErrNoQuorum, err)
	}
	if resp.Code != 0 {
		return MembersReply{}, &apiError{resp.Code, resp.Error}
	}
	return MembersReply{Members: resp.Members, Leader: resp.Leader}, nil
}

// onReconfig serves methodReconfig.
func (n *Node) onReconfig(ctx context.Context, req ReconfigReq) ReconfigResp {
	mr, err := n.Reconfig(ctx, req)
	if err != nil {
		code, msg := errorStatus(err)
		return ReconfigResp{Code: code, Error: msg}
	}
	return ReconfigResp{Members: mr.Members, Leader: mr.Leader}
}

// reconfigHere, on the leader, checks the change against the current
// membership, proposes it and waits until it is chosen.
func (n *Node) reconfigHere(ctx context.Context, req ReconfigReq) (MembersReply, error) {
	pc, err := n.proposer.proposeChange(func(m *membership) (*membership, error) {
		switch {
		case req.Add != nil:
			id := req.Add.ID
			if _, ok := m.get(id); ok {
				return nil, &apiError{409, fmt.Sprintf("node %d is a member already", id)}
			}
			if m.wasRemoved(id) {
				return nil, &apiError{409, fmt.Sprintf("node %d was a member before, and ids are never used again: give the new node another --id", id)}
			}
			return m.withAdded(*req.Add), nil
		case req.Remove != 0:
			x, ok := m.get(req.Remove)
			if !ok {
				return nil, &apiError{404, fmt.Sprintf("node %d is not a member", req.Remove)}
			}
			if x.Voter && len(m.voters()) == 1 {
				return nil, &apiError{409, fmt.Sprintf("removing node %d would leave no voter", req.Remove)}
			}
			return m.withRemoved(req.Remove), nil
		}
		return nil, badRequest("a membership change adds or removes one member")
	})
	if err != nil {
		return MembersReply{}, err
	}
	t := time.NewTimer(n.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case <-pc.chosen:
	case <-pc.lost:
	case <-t.C:
	case <-ctx.Done():
	case <-n.stopped:
		return MembersReply{}, ErrStopped
	}
	select {
	case <-pc.chosen: // also when the leadership ended right after it (a leader that removed itself)
	default:
		return MembersReply{}, ErrNoQuorum // the change may still be chosen later
	}
	// Tell every voter of the new membership that it is chosen before
	// answering: an operator may stop a removed node at once, and the
	// others must not be left waiting for it to hear whether they may go
	// on without it.
	n.tellCommit(ctx, pc)
	return MembersReply{Members: append([]member(nil), pc.to.Members...), Leader: n.leaderAfter()}, nil
}

// leaderAfter returns who leads now, as far as this node knows.
func (n *Node) leaderAfter() NodeID {
	leader, _, _ := n.proposer.leaderInfo()
	return leader
}

// tellCommit sends a learn carrying the commit that chose pc to every
// voter of its membership and waits (up to an election timeout) for them.
func (n *Node) tellCommit(ctx context.Context, pc *pendingChange) {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.ElectionTimeout)
	defer cancel()
	req := LearnReq{From: n.cfg.ID, Ballot: pc.ballot, Commit: pc.slot}
	done := make(chan struct{}, len(pc.to.voters()))
	for _, id := range pc.to.voters() {
		go func() {
			var resp LearnResp
			if id != n.cfg.ID {
				n.call(cctx, id, methodLearn, req, &resp) // best effort
			}
			done <- struct{}{}
		}()
	}
	for range pc.to.voters() {
		<-done
	}
}
