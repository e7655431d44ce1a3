package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// recovery_test.go: lost and damaged disks (recovery.go), in-process.

// wipe crashes node id and deletes its data directory, as a lost disk.
func (c *testCluster) wipe(id NodeID) {
	c.crash(id)
	if err := os.RemoveAll(c.dirs[id]); err != nil {
		c.t.Fatal(err)
	}
}

// diskWhole reports whether n serves with nothing of its disk missing:
// no acceptor rebuild, no damaged client log record, no records dropped
// that it is still learning again.
func diskWhole(n *Node) bool {
	if !n.serving() {
		return false
	}
	l := n.learner
	l.dmgMu.Lock()
	damaged := len(l.damaged)
	l.dmgMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	return damaged == 0 && l.relearn == 0
}

// syncedThrough waits until node id has applied through index last and
// syncs its client log, so that a crash keeps all of it.
func (c *testCluster) syncedThrough(id NodeID, last Index) {
	c.t.Helper()
	waitFor(c.t, 5*time.Second, fmt.Sprintf("node %d to apply through %d", id, last), func() bool {
		_, l := c.node(id).learner.Bounds()
		return l >= last
	})
	if _, _, err := c.node(id).learner.durableApplied(); err != nil {
		c.t.Fatal(err)
	}
}

// waitPhase waits until node id runs in phase ph.
func (c *testCluster) waitPhase(id NodeID, ph phase, d time.Duration) {
	c.t.Helper()
	waitFor(c.t, d, fmt.Sprintf("node %d to be %s", id, ph), func() bool {
		n := c.node(id)
		return n != nil && n.phase() == ph
	})
}

// clusterIDs returns the cluster identity each live node reports.
func (c *testCluster) clusterIDs() map[NodeID]string {
	out := map[NodeID]string{}
	for _, id := range c.live() {
		if n := c.node(id); n != nil {
			out[id] = n.ClusterID()
		}
	}
	return out
}

// waitOneIdentity waits until every live node knows the same identity.
func (c *testCluster) waitOneIdentity(d time.Duration) string {
	c.t.Helper()
	var got string
	waitFor(c.t, d, "every node to know the cluster identity", func() bool {
		ids := c.clusterIDs()
		got = ""
		for _, v := range ids {
			if v == "" || (got != "" && v != got) {
				return false
			}
			got = v
		}
		return got != ""
	})
	return got
}

// TestNewClusterIdentity: a new cluster gets one identity, every node
// keeps it across a restart, and a node whose IDENTITY says another node
// refuses to start.
func TestNewClusterIdentity(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	c.leader(5 * time.Second)
	id := c.waitOneIdentity(5 * time.Second)
	if len(id) != 32 {
		t.Fatalf("identity %q, want 32 hex digits", id)
	}
	c.mustAppend(1, `"a"`)
	for _, n := range c.members {
		c.restart(n)
	}
	c.leader(5 * time.Second)
	if got := c.waitOneIdentity(5 * time.Second); got != id {
		t.Fatalf("identity after restart %s, want %s", got, id)
	}
	c.mustAppend(2, `"b"`)
	c.check()

	c.crash(3)
	cfg := c.cfg
	cfg.ID, cfg.Members, cfg.DataDir = 2, c.members, c.dirs[3]
	if _, err := NewNode(cfg, nil); err == nil || !strings.Contains(err.Error(), "belongs to node 3") {
		t.Fatalf("node 2 on node 3's data: %v", err)
	}
}

// TestNewClusterWaitsForEveryMember: blank nodes found a new cluster only
// once every member has answered; until then appends wait and fail.
func TestNewClusterWaitsForEveryMember(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	c.leader(5 * time.Second)
	c.stopAll()
	for _, id := range c.members {
		os.RemoveAll(c.dirs[id])
	}
	c.start(1)
	c.start(2)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := c.node(1).Append(ctx, []byte(`"early"`), "")
	cancel()
	if !errors.Is(err, ErrDiscovering) {
		t.Fatalf("append with a member missing: %v, want ErrDiscovering", err)
	}
	for _, id := range []NodeID{1, 2} {
		if ph := c.node(id).phase(); ph != phaseDiscovering {
			t.Fatalf("node %d is %s with node 3 never started", id, ph)
		}
	}
	c.start(3)
	c.leader(5 * time.Second)
	c.mustAppend(1, `"late"`)
	c.waitOneIdentity(5 * time.Second)
	c.check()
}

// TestWipedFollowerRebuilds: a follower whose disk is lost comes back
// recovering, rebuilds from the others, and serves the same log.
func TestWipedFollowerRebuilds(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	for i := 0; i < 30; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"a%d"`, i))
	}
	id := c.waitOneIdentity(5 * time.Second)
	victim := leader%3 + 1
	c.wipe(victim)
	c.start(victim)
	if ph := c.node(victim).phase(); ph == phaseServing {
		t.Fatalf("wiped node serves at once")
	}
	c.waitPhase(victim, phaseServing, 10*time.Second)
	if got := c.node(victim).ClusterID(); got != id {
		t.Fatalf("rebuilt node's identity %q, want %q", got, id)
	}
	if st := c.node(victim).Status(); st.Recovering || st.State != "serving" {
		t.Fatalf("status after the rebuild: %+v", st)
	}
	c.leader(5 * time.Second)
	c.mustAppend(victim, `"after"`)
	c.check()
	// The rebuilt node really votes: with another one down, a majority
	// needs it.
	other := victim%3 + 1
	c.crash(other)
	c.leader(5 * time.Second)
	c.mustAppend(victim, `"with it voting"`)
	c.start(other)
	c.check()
}

// TestWipedVoterBesideANonVoter: a voter loses its disk in a cluster with
// a non-voter and is started, as an operator would, with every member's
// id. It rebuilds under the membership the log chose (three voters), not
// one where every id listed votes: that rebuild would wait for promises
// the non-voter never gives, and its fences would outbid every campaign
// of the two voters that make a majority. It starts while only one
// other voter is up, so that no leader tells it the membership first.
func TestWipedVoterBesideANonVoter(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	c.reconfig(leader, ReconfigReq{Add: &member{ID: 4, URL: "http://never"}})
	for i := 0; i < 20; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"a%d"`, i))
	}
	victim := leader%3 + 1
	c.crash(leader)
	c.wipe(victim)
	c.start(victim) // with the ids of every member; the one voter up cannot elect a leader
	other := 6 - leader - victim
	waitFor(t, 10*time.Second, "the rebuild's first fence", func() bool { return c.node(other).acceptor.Promised().Node == victim })
	c.start(leader)
	c.waitPhase(victim, phaseServing, 10*time.Second)
	if st := c.node(victim).Status(); !reflect.DeepEqual(st.Voters, []NodeID{1, 2, 3}) || !reflect.DeepEqual(st.Members, []NodeID{1, 2, 3, 4}) {
		t.Fatalf("rebuilt node's members %v voters %v, want [1 2 3 4] and [1 2 3]", st.Members, st.Voters)
	}
	c.mustAppend(victim, `"after"`)
	c.crash(other)
	c.leader(5 * time.Second)
	c.mustAppend(victim, `"with it voting"`)
	c.start(other)
	c.check()
}

// TestWipeWhileAnotherIsDown is the sequence that lost acknowledged
// entries before rebuilds: node 3 down, entries chosen by nodes 1 and 2,
// both killed, node 2's disk lost, nodes 2 and 3 started without node 1.
// Node 2 must not vote (it would make a majority with node 3 that knows
// none of the entries); once node 1 is back, every entry is on all three.
func TestWipeWhileAnotherIsDown(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	c.leader(5 * time.Second)
	c.crash(3)
	for i := 0; i < 50; i++ {
		c.mustAppend(1, fmt.Sprintf(`"e%d"`, i))
	}
	c.crash(1)
	c.wipe(2)
	c.start(2)
	c.start(3)
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	_, err := c.node(3).Append(ctx, []byte(`"warm"`), "")
	cancel()
	if err == nil {
		t.Fatalf("an append succeeded with node 1 down and node 2's disk lost")
	}
	c.waitPhase(2, phaseRecovering, time.Second)
	if st := c.node(2).Status(); !st.Recovering {
		t.Fatalf("node 2 status %+v, want recovering", st)
	}
	if v := scrape(t, c.node(2), "paxoslog_recovering"); v != 1 {
		t.Fatalf("paxoslog_recovering = %v", v)
	}
	c.start(1)
	c.waitPhase(2, phaseServing, 10*time.Second)
	c.leader(5 * time.Second)
	c.mustAppend(3, `"after"`)
	c.check()
	for _, id := range c.members {
		log := logOf(t, c.node(id))
		if len(log) < 51 {
			t.Fatalf("node %d holds %d entries, want the 50 acknowledged and more", id, len(log))
		}
	}
}

// damageRecord flips a byte inside the payload of a synced record of node
// id's journal sub ("acceptor" or "log"), in its newest segment, k
// records from the end (the node is down).
func damageRecord(t *testing.T, dir, sub string, k int) {
	t.Helper()
	path := newestSegment(t, filepath.Join(dir, sub))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	starts, bodies := segmentRecordOffsets(t, data)
	if len(starts) <= k {
		t.Fatalf("%s holds %d records, want more than %d", path, len(starts), k)
	}
	i := len(starts) - 1 - k
	end := len(data)
	if i+1 < len(starts) {
		end = starts[i+1]
	}
	size, n := binary.Uvarint(data[starts[i]:])
	if int(size) < 8 || bodies[i]+int(size) != end || n <= 0 {
		t.Fatalf("record %d of %s is too short to damage", i, path)
	}
	data[bodies[i]+int(size)-2] ^= 0x5a // inside the payload, past the header
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

// damageSyncedRecord flips a byte inside the payload of a random record
// of the newest segment of the journal in dir whose sync a later record
// proves (its synced mark covers it): damage to synced data, as opposed
// to a crash's torn write, which only the last records since the last
// sync can suffer and which the journal drops (see tailDamage). With any
// set, every record qualifies. It reports what it damaged, "" if none
// qualified.
func damageSyncedRecord(t *testing.T, dir string, any bool, rng interface{ Intn(int) int }) string {
	t.Helper()
	return damageSyncedRecordFrom(t, dir, any, 0, rng)
}

// damageSyncedRecordFrom is damageSyncedRecord among the records numbered
// from on (journal numbers: client log indices for the client log).
func damageSyncedRecordFrom(t *testing.T, dir string, any bool, from uint64, rng interface{ Intn(int) int }) string {
	t.Helper()
	j := &journal{dir: dir}
	if err := j.loadBase(); err != nil {
		t.Fatal(err)
	}
	segs, err := segmentFiles(dir)
	if err != nil || len(segs) == 0 {
		return ""
	}
	path := segs[len(segs)-1]
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		pos, synced uint64
		body, size  int
		header      int
	}
	var recs []rec
	for off := 0; off < len(data); {
		size, k := binary.Uvarint(data[off:])
		if k <= 0 || off+k+int(size) > len(data) {
			break
		}
		raw := data[off+k : off+k+int(size)]
		pos, synced, payload, ok := parseRecord(raw)
		if ok && len(payload) > 0 {
			recs = append(recs, rec{pos: pos, synced: synced, body: off + k, size: int(size), header: len(raw) - len(payload)})
		}
		off += k + int(size)
	}
	var cands []rec
	var covered uint64
	for i := len(recs) - 1; i >= 0; i-- {
		if (any || recs[i].pos <= covered) && recs[i].pos+j.base >= from {
			cands = append(cands, recs[i])
		}
		covered = max(covered, recs[i].synced)
	}
	if len(cands) == 0 {
		return ""
	}
	c := cands[rng.Intn(len(cands))]
	at := c.body + c.header + rng.Intn(c.size-c.header)
	data[at] ^= byte(1 + rng.Intn(255))
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("record %d of %s", c.pos, filepath.Base(path))
}

// TestDamagedAcceptorRecordRebuilds: a damaged record in the middle of a
// follower's acceptor journal is a forgotten promise: the node rebuilds
// before it votes, and the log is whole.
func TestDamagedAcceptorRecordRebuilds(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	for i := 0; i < 20; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"a%d"`, i))
	}
	victim := leader%3 + 1
	// Damage to the records of the last fsync before a crash cannot be
	// told from a torn write (tailDamage): wait for the idle seal, whose
	// synced mark covers every record before it.
	acc := c.node(victim).acceptor
	waitFor(t, 5*time.Second, "the victim's acceptor journal to be sealed", func() bool {
		acc.mu.Lock()
		defer acc.mu.Unlock()
		_, last := acc.journal.Bounds()
		return acc.sealed == last && last > 5
	})
	c.crash(victim)
	damageRecord(t, c.dirs[victim], "acceptor", 5)
	for i := 0; i < 5; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"b%d"`, i))
	}
	c.start(victim)
	if ph := c.node(victim).phase(); ph != phaseRecovering {
		t.Fatalf("node with a damaged acceptor journal is %s, want recovering", ph)
	}
	c.waitPhase(victim, phaseServing, 10*time.Second)
	c.leader(5 * time.Second)
	c.mustAppend(victim, `"after"`)
	c.check()
}

// TestForeignClusterRefused: a peer message that names another cluster
// changes nothing and gets 409; hello still answers, so a node can find
// out whom it talks to.
func TestForeignClusterRefused(t *testing.T) {
	a := newTestCluster(t, 3, testSeed(t))
	b := newTestCluster(t, 3, testSeed(t)+1)
	a.leader(5 * time.Second)
	b.leader(5 * time.Second)
	ida, idb := a.waitOneIdentity(5*time.Second), b.waitOneIdentity(5*time.Second)
	if ida == idb {
		t.Fatalf("two clusters share the identity %s", ida)
	}
	n := a.node(1)
	before := n.acceptor.Promised()
	body := []byte(`{"from":2,"b":{"r":1000,"n":2},"slot":1}`)
	_, err := n.Handle(context.Background(), idb, methodPrepare, body)
	var ae *apiError
	if !errors.As(err, &ae) || ae.code != 409 {
		t.Fatalf("prepare from another cluster: %v, want 409", err)
	}
	if after := n.acceptor.Promised(); after != before {
		t.Fatalf("a refused prepare moved the promise from %s to %s", before, after)
	}
	if _, err := n.Handle(context.Background(), "", methodPrepare, []byte(`{"from":2,"b":{"r":0,"n":2},"slot":1}`)); err != nil {
		t.Fatalf("a message without an identity (a node that does not know it yet) is refused: %v", err)
	}
	out, err := n.Handle(context.Background(), idb, methodHello, []byte(`{"from":2}`))
	if err != nil || !strings.Contains(string(out), ida) {
		t.Fatalf("hello from another cluster: %s %v", out, err)
	}
}

// damageClosedRecord flips a payload byte of the k-th record of the
// second segment file of the journal in dir (a closed one) and returns
// the record's number.
func damageClosedRecord(t *testing.T, dir string, k int) uint64 {
	t.Helper()
	segs, err := segmentFiles(dir)
	if err != nil || len(segs) < 3 {
		t.Fatalf("%s has %d segment files, want at least 3", dir, len(segs))
	}
	path := segs[1]
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	starts, bodies := segmentRecordOffsets(t, data)
	if k >= len(starts) {
		t.Fatalf("%s holds %d records", path, len(starts))
	}
	end := len(data)
	if k+1 < len(starts) {
		end = starts[k+1]
	}
	data[end-1] ^= 0x21 // the last payload byte
	_ = bodies
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	first, err := strconv.ParseUint(filepath.Base(path), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return first + uint64(k)
}

func smallSegmentConfig(c *Config) {
	c.SegmentBytes = 2048
	c.DedupWindow = 64
}

// TestDamagedLogRecordRepaired: a record damaged in the middle of a
// follower's client log while it was down is found by the scrub it runs
// as it starts and repaired from a peer.
func TestDamagedLogRecordRepaired(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) {
		smallSegmentConfig(cfg)
		cfg.DedupWindow = 4096 // the whole log: the damaged record is in it
	})
	leader := c.leader(5 * time.Second)
	for i := 0; i < 120; i++ {
		c.mustAppend(leader, fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("x", 40)))
	}
	victim := leader%3 + 1
	c.syncedThrough(victim, 120)
	c.crash(victim)
	bad := damageClosedRecord(t, filepath.Join(c.dirs[victim], "log"), 2)
	c.start(victim)
	n := c.node(victim)
	waitFor(t, 10*time.Second, "the damaged record to be repaired", func() bool {
		return scrape(t, n, `paxoslog_repairs_total{journal="log"}`) >= 1
	})
	if e, err := n.learner.Get(Index(bad)); err != nil || !strings.Contains(string(e.Data), "pad") {
		t.Fatalf("repaired index %d reads %s, %v", bad, e.Data, err)
	}
	c.mustAppend(victim, `"after"`)
	c.check()
}

// TestScrubFindsDamage: damage to a closed segment of a running node's
// client log, which no read would come to, is found by the scrub and
// repaired; a read of it before the repair gets ErrDamaged, never the
// damaged bytes.
func TestScrubFindsDamage(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) {
		smallSegmentConfig(cfg)
		cfg.ScrubInterval = 50 * time.Millisecond
	})
	leader := c.leader(5 * time.Second)
	for i := 0; i < 120; i++ {
		c.mustAppend(leader, fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("y", 40)))
	}
	victim := leader%3 + 1
	n := c.node(victim)
	bad := damageClosedRecord(t, filepath.Join(c.dirs[victim], "log"), 1)
	waitFor(t, 10*time.Second, "the scrub to find and repair the damage", func() bool {
		return scrape(t, n, `paxoslog_repairs_total{journal="log"}`) >= 1
	})
	if _, err := n.learner.Get(Index(bad)); err != nil {
		t.Fatalf("read of the repaired index %d: %v", bad, err)
	}
	c.check()
}

// TestDamagedLogNoPeerHolds: a damaged record that every other member has
// compacted away cannot be repaired: the node stops and says so.
func TestDamagedLogNoPeerHolds(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), smallSegmentConfig)
	leader := c.leader(5 * time.Second)
	for i := 0; i < 200; i++ {
		c.mustAppend(leader, fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("z", 40)))
	}
	victim := leader%3 + 1
	for _, id := range c.members {
		if id == victim {
			continue
		}
		if first, err := c.node(id).learner.compactBefore(150); err != nil || first < 100 {
			t.Fatalf("compact node %d: first %d, %v", id, first, err)
		}
	}
	n := c.node(victim)
	bad := damageClosedRecord(t, filepath.Join(c.dirs[victim], "log"), 1)
	n.learner.journal.log.ClearCache() // the next read goes to disk
	if _, err := n.learner.Get(Index(bad)); !errors.Is(err, ErrDamaged) {
		t.Fatalf("read of damaged index %d: %v, want ErrDamaged", bad, err)
	}
	waitFor(t, 10*time.Second, "the node to stop", func() bool { return n.Fatal() != nil })
	if err := n.Fatal(); !strings.Contains(err.Error(), "no other member holds them") {
		t.Fatalf("stopped with %v", err)
	}
	c.crash(victim)
}

// forgeLog rewrites the client log in dir (the node is down) from index k
// on as a node that applied another entry at k would hold it: the data
// at k differs, and every sum from k on follows from it.
func forgeLog(t *testing.T, dir string, k Index, data string) {
	t.Helper()
	j, err := openJournal(dir, journalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	_, last := j.Bounds()
	var recs []learnerRecord
	for i := uint64(k); i <= last; i++ {
		p, err := j.Read(i)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := decodeLearnerRecord(p)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
	}
	p, err := j.Read(uint64(k) - 1)
	if err != nil {
		t.Fatal(err)
	}
	prev, _ := decodeLearnerRecord(p)
	recs[0].Data = []byte(data)
	sum := prev.Sum
	var payloads [][]byte
	for n, rec := range recs {
		sum += rec.hash(k + Index(n))
		rec.Sum = sum
		payloads = append(payloads, rec.appendTo(nil))
	}
	if err := j.TruncateBack(uint64(k) - 1); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(payloads...); err != nil {
		t.Fatal(err)
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestReplicaCheckFindsDivergence: two replicas that hold different
// entries at an index (what the lost-disk sequence used to leave behind)
// raise an alarm on both sides that names the other node and the index.
func TestReplicaCheckFindsDivergence(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	leader := c.leader(5 * time.Second)
	for i := 0; i < 100; i++ {
		c.mustAppend(leader, fmt.Sprintf(`"e%d"`, i))
	}
	c.check()
	victim := leader%3 + 1
	c.syncedThrough(victim, 100)
	c.crash(victim)
	forgeLog(t, filepath.Join(c.dirs[victim], "log"), 57, `"forged"`)
	c.start(victim)
	for _, id := range c.members {
		n := c.node(id)
		waitFor(t, 5*time.Second, fmt.Sprintf("node %d's alarm", id), func() bool {
			a := n.check.alarm()
			return a != nil && a.Index == 57 && (id == victim || a.Peer == victim)
		})
		st := n.Status()
		if st.Alarm == nil || !strings.Contains(st.Alarm.Message, "index 57") {
			t.Fatalf("node %d status alarm %+v", id, st.Alarm)
		}
		if v := scrape(t, n, "paxoslog_replica_alarm"); v < 1 {
			t.Fatalf("node %d paxoslog_replica_alarm = %v", id, v)
		}
	}
	other := victim%3 + 1
	if a := c.node(other).check.alarm(); a == nil || a.Peer != victim {
		t.Fatalf("node %d: alarm %+v, want one about node %d only", other, a, victim)
	}
}

// TestTwoDamagedRecordsInOneSegment: two damaged records of one closed
// segment, not next to each other and both in the dedup window, are
// each repaired (a rewrite keeps the other as a hole until its turn).
func TestTwoDamagedRecordsInOneSegment(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) {
		smallSegmentConfig(cfg)
		cfg.DedupWindow = 4096
	})
	leader := c.leader(5 * time.Second)
	for i := 0; i < 120; i++ {
		c.mustAppend(leader, fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("q", 40)))
	}
	victim := leader%3 + 1
	c.syncedThrough(victim, 120)
	c.crash(victim)
	a := damageClosedRecord(t, filepath.Join(c.dirs[victim], "log"), 1)
	b := damageClosedRecord(t, filepath.Join(c.dirs[victim], "log"), 4)
	c.start(victim)
	n := c.node(victim)
	waitFor(t, 10*time.Second, "both damaged records to be repaired", func() bool {
		return diskWhole(n) && scrape(t, n, `paxoslog_repairs_total{journal="log"}`) >= 2
	})
	for _, i := range []uint64{a, b} {
		if _, err := n.learner.Get(Index(i)); err != nil {
			t.Fatalf("read repaired index %d: %v", i, err)
		}
	}
	c.mustAppend(victim, `"after"`)
	c.check()
}

// TestFounderCrashBeforeIdentity: a node that crashed after its first
// acceptor record (a founder's empty checkpoint) but before IDENTITY said
// member has voted in nothing: it is still blank, and the new cluster
// forms around it.
func TestFounderCrashBeforeIdentity(t *testing.T) {
	c := newTestCluster(t, 3, testSeed(t))
	c.leader(5 * time.Second)
	c.stopAll()
	for _, id := range c.members {
		os.RemoveAll(c.dirs[id])
	}
	acc, err := openAcceptor(filepath.Join(c.dirs[1], "acceptor"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := acc.install(Ballot{}, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	acc.journal.Close()
	if err := writeIdentity(c.dirs[1], identity{Node: 1, State: "discovering", Nonce: 7}); err != nil {
		t.Fatal(err)
	}
	for _, id := range c.members {
		c.start(id)
	}
	c.leader(5 * time.Second)
	c.mustAppend(1, `"a"`)
	c.waitOneIdentity(5 * time.Second)
	c.check()
}
