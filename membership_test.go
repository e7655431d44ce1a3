package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// membership_test.go: the membership as replicated state (membership.go).

// TestMembershipInTheLog: the genesis entry carries the first membership,
// every node records it, and a node restarted with another --peers goes
// by the recorded one.
func TestMembershipInTheLog(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) {
		cfg.PeerURLs = map[NodeID]string{1: "http://one", 2: "http://two", 3: "http://three"}
	})
	c.leader(5 * time.Second)
	c.waitOneIdentity(5 * time.Second)
	want := []member{{1, "http://one", true}, {2, "http://two", true}, {3, "http://three", true}}
	for _, id := range c.members {
		n := c.node(id)
		waitFor(t, 5*time.Second, fmt.Sprintf("node %d to record the membership", id), func() bool {
			return n.config().Slot > 0
		})
		if got := n.Members().Members; !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d members %+v, want %+v", id, got, want)
		}
		rec, err := readIdentity(c.dirs[id])
		if err != nil || rec.Membership == nil || !reflect.DeepEqual(rec.Membership.Members, want) {
			t.Fatalf("node %d IDENTITY %+v, %v", id, rec, err)
		}
		if !n.Status().Member {
			t.Fatalf("node %d says it is no member", id)
		}
	}
	// Restarted with a --peers that lists only 1 and 2, node 1 still goes
	// by the membership its data recorded.
	c.crash(1)
	cfg := c.cfg
	cfg.ID, cfg.Members, cfg.DataDir = 1, []NodeID{1, 2}, c.dirs[1]
	n, err := NewNode(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if got := n.config().ids(); !reflect.DeepEqual(got, []NodeID{1, 2, 3}) || n.quorumSize() != 2 {
		t.Fatalf("restarted with --peers 1,2: members %v, quorum %d", got, n.quorumSize())
	}
}

// TestHTTPMembers: GET /v1/members over HTTP lists the members as every
// node's --peers named them at bootstrap, and who leads.
func TestHTTPMembers(t *testing.T) {
	hc := startHTTPCluster(t, 3, "k", nil)
	var leader NodeID
	for id := NodeID(1); id <= 3; id++ {
		var got MembersReply
		waitFor(t, 10*time.Second, fmt.Sprintf("node %d to list the members and a leader", id), func() bool {
			r := do(t, "GET", hc.urls[id]+"/v1/members", "", nil)
			if r.code != 200 || json.Unmarshal([]byte(r.raw), &got) != nil {
				return false
			}
			return got.Leader != 0 && len(got.Members) == 3
		})
		if leader != 0 && got.Leader != leader {
			t.Fatalf("node %d names leader %d, another node %d", id, got.Leader, leader)
		}
		leader = got.Leader
		for _, m := range got.Members {
			if m.URL != hc.urls[m.ID] || !m.Voter {
				t.Fatalf("node %d lists %+v, want %s as a voter", id, m, hc.urls[m.ID])
			}
		}
	}
}

// addNode adds node id to the test cluster as a node that joins (it is
// not a member until Reconfig adds it) and starts it.
func (c *testCluster) addNode(id NodeID) {
	c.t.Helper()
	c.mu.Lock()
	c.members = append(c.members, id)
	c.dirs[id] = filepath.Join(filepath.Dir(c.dirs[c.members[0]]), fmt.Sprint(id))
	c.life[id] = new(sync.Mutex)
	c.joiners[id] = true
	c.mu.Unlock()
	c.start(id)
}

// dropNode stops node id (removed from the membership) and leaves it out
// of the cluster's checks from now on.
func (c *testCluster) dropNode(id NodeID) {
	c.crash(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m == id {
			c.members = append(c.members[:i:i], c.members[i+1:]...)
			return
		}
	}
}

// reconfig makes a membership change through node via, retrying while
// there is no leader or the outcome is unknown.
func (c *testCluster) reconfig(via NodeID, req ReconfigReq) MembersReply {
	c.t.Helper()
	var mr MembersReply
	var err error
	waitFor(c.t, 10*time.Second, fmt.Sprintf("change %+v through node %d", req, via), func() bool {
		n := c.node(via)
		if n == nil {
			return false
		}
		mr, err = n.Reconfig(context.Background(), req)
		if err == nil {
			return true
		}
		var ae *apiError
		if errors.As(err, &ae) && ae.code != 503 {
			c.t.Fatalf("change %+v: %v", req, err)
		}
		return false
	})
	return mr
}

// waitVoters waits until every live member goes by a membership whose
// voters are want.
func (c *testCluster) waitVoters(want ...NodeID) {
	c.t.Helper()
	waitFor(c.t, 20*time.Second, fmt.Sprintf("voters %v everywhere", want), func() bool {
		for _, id := range c.live() {
			if n := c.node(id); n == nil || !reflect.DeepEqual(n.config().voters(), want) {
				return false
			}
		}
		return true
	})
}

// TestAddMemberBecomesVoter: a node added as a non-voter learns the log,
// becomes a voter by itself once caught up, and then really votes: with
// an original member down, the majority of four needs it.
func TestAddMemberBecomesVoter(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	for i := 0; i < 50; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"a%d"`, i))
	}
	c.addNode(4) // started before it is added: it waits
	n4 := c.node(4)
	if st := n4.Status(); st.Member || st.State != "discovering" {
		t.Fatalf("node 4 before it is added: %+v", st)
	}
	if _, err := n4.Append(context.Background(), []byte(`"x"`), ""); err == nil {
		t.Fatalf("a node that is not a member took an append")
	}
	mr := c.reconfig(1, ReconfigReq{Add: &member{ID: 4, URL: "http://four"}})
	if x, ok := newMembership(mr.Members, 0, nil).get(4); !ok || x.Voter {
		t.Fatalf("after the add: %+v, want 4 as a non-voter", mr.Members)
	}
	c.waitVoters(1, 2, 3, 4)
	c.mustAppend(4, `"via the new node"`)
	c.check()
	victim := c.leader(5*time.Second)%3 + 1 // an original member that does not lead
	c.crash(victim)
	c.leader(5 * time.Second)
	for i := 0; i < 5; i++ {
		c.mustAppend(4, fmt.Sprintf(`"b%d"`, i))
	}
	c.start(victim)
	c.check()
	for _, id := range c.members {
		if got := c.node(id).config().ids(); !reflect.DeepEqual(got, []NodeID{1, 2, 3, 4}) {
			t.Fatalf("node %d members %v", id, got)
		}
	}
}

// TestRemoveMember: a removed member votes in nothing, says member:false
// and answers appends with ErrNotMember; the rest go on. The leader
// removed hands over.
func TestRemoveMember(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.mustAppend(leader, `"before"`)
	follower := leader%3 + 1
	c.reconfig(follower%3+1, ReconfigReq{Remove: follower}) // through the third node: forwarded to the leader
	n := c.node(follower)
	waitFor(t, 5*time.Second, "the removed node to know it", func() bool { return !n.isMember() })
	if _, err := n.Append(context.Background(), []byte(`"x"`), ""); !errors.Is(err, ErrNotMember) {
		t.Fatalf("append on a removed node: %v", err)
	}
	if st := n.Status(); st.Member {
		t.Fatalf("removed node status %+v", st)
	}
	c.dropNode(follower)
	c.mustAppend(leader, `"after a follower left"`)
	// Now the leader itself.
	c.reconfig(leader, ReconfigReq{Remove: leader})
	c.dropNode(leader)
	next := c.leader(5 * time.Second)
	if next == leader {
		t.Fatalf("node %d still leads after its removal", leader)
	}
	c.mustAppend(next, `"after the leader left"`)
	c.waitVoters(next)
	c.check()
}

// TestCatchUpCarriesEveryMembership: a node that was down across several
// changes, and one that joined after them, learn every membership the
// log chose through catch-up replies (the system entries that set them
// are not in the client log served), so each goes by the membership its
// applied prefix sets and can serve that history on (M1).
func TestCatchUpCarriesEveryMembership(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.waitOneIdentity(5 * time.Second) // changes wait for the genesis entry, which waits for every member
	away := leader%3 + 1
	c.crash(away)
	c.addNode(4)
	c.reconfig(leader, ReconfigReq{Add: &member{ID: 4, URL: "http://four"}})
	c.mustAppend(leader, `"after 4"`)
	waitFor(t, 10*time.Second, "node 4 to become a voter", func() bool { return c.node(leader).config().isVoter(4) })
	c.addNode(5)
	c.reconfig(leader, ReconfigReq{Add: &member{ID: 5, URL: "http://five"}})
	c.mustAppend(leader, `"after 5"`)
	c.waitVoters(1, 2, 3, 4, 5)
	c.start(away)
	c.mustAppend(leader, `"with every node up"`)
	c.waitVoters(1, 2, 3, 4, 5)
	c.check()
	n := c.node(leader)
	to := n.learner.Applied()
	want := n.membershipsFor(1, to)
	if len(want) != 5 { // genesis, add 4, promote 4, add 5, promote 5
		t.Fatalf("the leader knows %d memberships: %v", len(want), want)
	}
	slots := func(ms []*membership) []Slot {
		var out []Slot
		for _, m := range ms {
			out = append(out, m.Slot)
		}
		return out
	}
	for _, id := range []NodeID{away, 5} {
		if got := c.node(id).membershipsFor(1, to); !reflect.DeepEqual(slots(got), slots(want)) {
			t.Fatalf("node %d knows memberships of slots %v, the leader %v", id, slots(got), slots(want))
		}
	}
}

// TestNonVoterThatNeverComesUp: a member added but never started costs the
// cluster nothing (it counts toward no majority, appends go on with
// another node down), and the leader's status and metrics show it as a
// non-voter falling behind, the voters and the members.
func TestNonVoterThatNeverComesUp(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.reconfig(leader, ReconfigReq{Add: &member{ID: 4, URL: "http://never"}})
	down := leader%3 + 1
	c.crash(down)
	for i := 0; i < 20; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"n%d"`, i))
	}
	n := c.node(leader)
	st := n.Status()
	if !reflect.DeepEqual(st.Members, []NodeID{1, 2, 3, 4}) || !reflect.DeepEqual(st.Voters, []NodeID{1, 2, 3}) || st.Change != nil {
		t.Fatalf("status members %v voters %v change %+v", st.Members, st.Voters, st.Change)
	}
	var p4 *PeerStatus
	for i := range st.Peers {
		if st.Peers[i].ID == 4 {
			p4 = &st.Peers[i]
		}
	}
	if p4 == nil || p4.Voter || p4.Lag < 20 || p4.LastContact != -1 {
		t.Fatalf("status of node 4: %+v", p4)
	}
	for series, want := range map[string]float64{
		`paxoslog_peer_lag_slots{peer="4",voter="false"}`:                    float64(p4.Lag),
		fmt.Sprintf(`paxoslog_peer_lag_slots{peer="%d",voter="true"}`, down): -1, // there, whatever its lag
		"paxoslog_members":                       4,
		"paxoslog_voters":                        3,
		"paxoslog_membership_change_in_progress": 0,
	} {
		got, ok := scrapeOK(t, n, series)
		if !ok || (want >= 0 && got != want) {
			t.Fatalf("%s = %v (found %v), want %v", series, got, ok, want)
		}
	}
	c.start(down)
	c.check()
}

// TestRemovedWhileDown: a member removed while it was down comes back on
// its old --data believing it is still a voter. It campaigns, but the
// voters refuse a removed member's prepares and tell it to catch up, so
// it unseats no leader, leads nothing, learns that it was removed, and
// the cluster goes on.
func TestRemovedWhileDown(t *testing.T) {
	c := newTestCluster(t, 5, testSeed(t))
	c.leader(5 * time.Second)
	c.waitOneIdentity(5 * time.Second)
	leader := c.leader(5 * time.Second)
	victim := leader%5 + 1
	c.crash(victim)
	c.reconfig(leader, ReconfigReq{Remove: victim})
	c.mustAppend(leader, `"after the removal"`)
	_, ballot, _ := c.node(leader).proposer.leaderInfo()
	c.start(victim)
	n := c.node(victim)
	waitFor(t, 10*time.Second, "the removed node to campaign and learn it was removed", func() bool {
		return !n.isMember()
	})
	for i := 0; i < 10; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"r%d"`, i))
	}
	if _, now, leading := c.node(leader).proposer.leaderInfo(); !leading || now != ballot {
		t.Fatalf("the leader's ballot went from %v to %v (leading %v): the removed node unseated it", ballot, now, leading)
	}
	if _, _, leading := n.proposer.leaderInfo(); leading {
		t.Fatal("the removed node leads")
	}
	c.dropNode(victim)
	c.check()
}

// TestJoinAfterCompaction: a node added once the others have compacted
// their logs catches up from a peer's compacted state (it installs the
// prefix, with the membership that governs it), becomes a voter, and then
// carries its share of a majority.
func TestJoinAfterCompaction(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), retentionConfig)
	leader := c.leader(5 * time.Second)
	c.waitOneIdentity(5 * time.Second)
	l := c.startLoad(4)
	waitFor(t, 20*time.Second, "the leader to compact", func() bool {
		first, _ := c.node(leader).learner.Bounds()
		return first > 100
	})
	c.addNode(4)
	c.reconfig(leader, ReconfigReq{Add: &member{ID: 4, URL: "http://four"}})
	c.waitVoters(1, 2, 3, 4)
	l.halt()
	if first, _ := c.node(4).learner.Bounds(); first <= 1 {
		t.Fatalf("node 4's first index is %d: it did not install a compacted prefix", first)
	}
	c.crash(leader%3 + 1)
	for i := 0; i < 10; i++ {
		c.mustAppend(4, fmt.Sprintf(`"after %d"`, i))
	}
	c.start(leader%3 + 1)
	c.check()
}

// TestPowerCutRightAfterShrinking: a cluster shrunk to one node, which
// then loses power before its client log is synced, comes back leading
// alone. Slots of membership entries leave no client log record, so the
// applied slot a restart finds comes from IDENTITY, recorded with the
// membership once the log was synced (Learner.adoptLocked): without it
// the node would go by its last membership but count votes of an older
// one, whose other members are gone, and never lead again.
func TestPowerCutRightAfterShrinking(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.waitOneIdentity(5 * time.Second)
	c.mustAppend(leader, `"before"`)
	a := leader%3 + 1
	c.reconfig(leader, ReconfigReq{Remove: a})
	c.dropNode(a)
	r := 6 - leader - a
	c.reconfig(r, ReconfigReq{Remove: leader})
	c.dropNode(leader)
	c.waitVoters(r)
	n := c.node(r)
	m := n.config()
	c.crash(r) // a power cut: the client log's unsynced records are gone
	c.start(r)
	n = c.node(r)
	if got := n.learner.Applied(); got < m.Slot {
		t.Fatalf("after the restart node %d has applied slot %d, below its membership's slot %d", r, got, m.Slot)
	}
	if got := n.membershipAt(n.learner.Applied()); got == nil || !got.sameMembers(m) {
		t.Fatalf("after the restart the membership that governs the next slot is %v, want %s", got, m)
	}
	if got := c.leader(5 * time.Second); got != r {
		t.Fatalf("leader %d, want %d", got, r)
	}
	c.mustAppend(r, `"alone"`)
	c.check()
}

// TestGenesisRecordedInOneWrite: the genesis entry's cluster identity and
// first membership reach IDENTITY in one write, with the applied slot: at
// the moment the identity is on disk the membership is too, so no crash
// can leave a node (here a lone one, with no peer to learn from) that
// knows the identity but not the membership, which could never campaign.
func TestGenesisRecordedInOneWrite(t *testing.T) {
	dir := t.TempDir()
	n, err := NewNode(Config{ID: 1, DataDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var seen *identity
	n.onIdentity = func() {
		id, err := readIdentity(dir)
		if err != nil {
			t.Errorf("read IDENTITY: %v", err)
		}
		seen = &id
	}
	v := entryValue(`"with the genesis"`)
	v.Entries = append([]Entry{genesisEntry(newClusterID(), n.config())}, v.Entries...)
	n.learner.chosen(SlotValue{Slot: 1, Value: v})
	if seen == nil || seen.Cluster == "" || seen.Membership == nil || seen.Applied < 1 {
		t.Fatalf("IDENTITY when the identity was recorded: %+v", seen)
	}
	n.Close()
	n, err = NewNode(Config{ID: 1, DataDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if m := n.membershipAt(n.learner.Applied()); m == nil || !m.isVoter(1) {
		t.Fatalf("after a restart, the membership that governs the next slot: %v", m)
	}
}

// TestMembershipChangeErrors: what a change may not do.
func TestMembershipChangeErrors(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.waitOneIdentity(5 * time.Second) // before the genesis entry every change is 503
	want := func(req ReconfigReq, code int) {
		t.Helper()
		_, err := c.node(leader).Reconfig(context.Background(), req)
		var ae *apiError
		if !errors.As(err, &ae) || ae.code != code {
			t.Fatalf("%+v: %v, want %d", req, err, code)
		}
	}
	want(ReconfigReq{Add: &member{ID: 2, URL: "http://two"}}, 409)
	want(ReconfigReq{Remove: 9}, 404)
	c.reconfig(leader, ReconfigReq{Remove: leader%3 + 1})
	want(ReconfigReq{Add: &member{ID: leader%3 + 1, URL: "http://again"}}, 409) // ids are not used again
	c.dropNode(leader%3 + 1)
	l := c.leader(5 * time.Second)
	other := c.live()[0]
	if other == l {
		other = c.live()[1]
	}
	c.reconfig(l, ReconfigReq{Remove: other})
	c.dropNode(other)
	leader = c.leader(5 * time.Second)
	want(ReconfigReq{Remove: leader}, 409) // the last voter
}

// TestRestartAfterChangesKeepsMembership: a restarted node goes by the
// membership its data recorded, not by the one it was started with.
func TestRestartAfterChangesKeepsMembership(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.addNode(4)
	c.reconfig(leader, ReconfigReq{Add: &member{ID: 4, URL: "http://four"}})
	c.waitVoters(1, 2, 3, 4)
	for _, id := range []NodeID{1, 2, 3, 4} {
		c.restart(id)
	}
	c.leader(5 * time.Second)
	c.mustAppend(4, `"after restarts"`)
	c.waitVoters(1, 2, 3, 4)
	c.check()
}

// allNodes returns every node the cluster has started, members or not.
func (c *testCluster) allNodes() []NodeID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]NodeID(nil), c.members...)
}

// latestMembership returns the membership chosen in the highest slot that
// any live node knows.
func (c *testCluster) latestMembership() *membership {
	var best *membership
	for _, id := range c.live() {
		if n := c.node(id); n != nil {
			if m := n.config(); best == nil || m.Slot > best.Slot || (m.Slot == best.Slot && len(m.ids()) > len(best.ids())) {
				best = m
			}
		}
	}
	if best == nil {
		return newMembership(nil, 0, nil)
	}
	return best
}

// settleMembership waits until every live node in the latest membership
// goes by it, checks that nodes that applied the same membership slot
// hold the same membership (they applied the same chosen value), and
// stops the nodes outside it (a removal, or an add whose outcome stayed
// unknown and did not happen) so that the checks leave them out.
func (c *testCluster) settleMembership() {
	c.t.Helper()
	var m *membership
	var lag []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, lag = c.latestMembership(), nil
		for _, id := range m.ids() {
			if n := c.node(id); n == nil {
				lag = append(lag, fmt.Sprintf("node %d down", id))
			} else if got := n.config(); got.Slot != m.Slot {
				lag = append(lag, fmt.Sprintf("node %d goes by %s from slot %d (phase %v, applied %d)", id, got, got.Slot, n.phase(), n.learner.Applied()))
			}
		}
		if len(lag) == 0 {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for the live members to go by %s from slot %d: %s", m, m.Slot, strings.Join(lag, "; "))
		}
		time.Sleep(2 * time.Millisecond) // polling interval of a condition wait
	}
	for _, id := range c.live() {
		if n := c.node(id); n != nil {
			c.recordMembership(id, n.config())
		}
	}
	c.checkMembershipHistory(m)
	for _, id := range c.allNodes() {
		if _, ok := m.get(id); !ok {
			c.dropNode(id)
		}
	}
}

// recordMembership notes that node id adopted m; two nodes that adopt
// different memberships from one slot fail the test.
func (c *testCluster) recordMembership(id NodeID, m *membership) {
	if m.Slot == 0 {
		return // from the command line, not chosen
	}
	c.memMu.Lock()
	defer c.memMu.Unlock()
	if prev, ok := c.chosen[m.Slot]; ok && (!prev.sameMembers(m) || fmt.Sprint(prev.Removed) != fmt.Sprint(m.Removed)) {
		c.t.Errorf("node %d adopted membership %s (removed %v) from slot %d, another node %s (removed %v)", id, m, m.Removed, m.Slot, prev, prev.Removed)
		return
	}
	c.chosen[m.Slot] = m
}

// checkMembershipHistory checks the memberships the nodes adopted, in
// slot order, against the rules of membership.go: each differs from the
// one before by one change (M2: one member added as a non-voter, one
// promoted, or one removed), a removed id never comes back (M5), and
// the last is final, the one every live member goes by.
func (c *testCluster) checkMembershipHistory(final *membership) {
	c.t.Helper()
	c.memMu.Lock()
	defer c.memMu.Unlock()
	var slots []Slot
	for s := range c.chosen {
		slots = append(slots, s)
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i] < slots[j] })
	if len(slots) == 0 {
		if final.Slot != 0 {
			c.t.Fatalf("the live members go by %s from slot %d, but no node adopted it", final, final.Slot)
		}
		return // no genesis entry applied yet: every node goes by --peers
	}
	gone := map[NodeID]bool{}
	for i, s := range slots {
		m := c.chosen[s]
		for _, id := range m.ids() {
			if gone[id] {
				c.t.Fatalf("node %d is in the membership of slot %d after its removal", id, s)
			}
		}
		if i == 0 {
			continue
		}
		prev := c.chosen[slots[i-1]]
		if d := membershipDistance(prev, m); d > 1 {
			c.t.Fatalf("memberships of slots %d (%s) and %d (%s) differ by %d changes", slots[i-1], prev, s, m, d)
		}
		for _, id := range prev.ids() {
			if _, ok := m.get(id); !ok {
				gone[id] = true
			}
		}
	}
	last := c.chosen[slots[len(slots)-1]]
	if last.Slot != final.Slot || !last.sameMembers(final) {
		c.t.Fatalf("the live members go by %s from slot %d; the last one adopted is %s from slot %d", final, final.Slot, last, last.Slot)
	}
	c.t.Logf("membership history: %d memberships, last %s from slot %d", len(slots), last, last.Slot)
}

// membershipDistance counts the members added, removed or promoted
// between a and b.
func membershipDistance(a, b *membership) int {
	d := 0
	for _, x := range a.Members {
		if y, ok := b.get(x.ID); !ok || y.Voter != x.Voter || y.URL != x.URL {
			d++
		}
	}
	for _, y := range b.Members {
		if _, ok := a.get(y.ID); !ok {
			d++
		}
	}
	return d
}

// leaderNow returns a live node that believes it leads, 0 if none does.
func (c *testCluster) leaderNow() NodeID {
	for _, id := range c.live() {
		if n := c.node(id); n != nil {
			if _, _, leading := n.proposer.leaderInfo(); leading {
				return id
			}
		}
	}
	return 0
}
