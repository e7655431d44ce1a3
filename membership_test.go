package main

import (
	"encoding/json"
	"fmt"
	"reflect"
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
