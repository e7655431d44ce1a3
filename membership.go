package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
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
