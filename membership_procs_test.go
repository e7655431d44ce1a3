package main

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// membership_procs_test.go: membership changes with real processes under
// load: grow and shrink, replace a machine, remove the leader.

// procLoad appends through the nodes targets names, each entry with an
// idempotency key and retried (through any of them) until acknowledged,
// until halted.
type procLoad struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	acked map[string]Index // data -> acknowledged index
	at    []time.Time      // when each acknowledgement arrived
}

func (pc *procCluster) startLoad(seed int64, clients int, targets func() []NodeID) *procLoad {
	l := &procLoad{stop: make(chan struct{}), acked: map[string]Index{}}
	for w := 0; w < clients; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			r := rand.New(rand.NewSource(seed + int64(w)))
			for i := 0; ; i++ {
				data := fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)
				key := fmt.Sprintf("w%d-%d", w, i)
				for {
					select {
					case <-l.stop:
						return
					default:
					}
					ids := targets()
					req, _ := http.NewRequest("POST", pc.url(ids[r.Intn(len(ids))])+"/v1/log", strings.NewReader(data))
					req.Header.Set("Idempotency-Key", key)
					resp, err := procClient.Do(req)
					if err != nil {
						time.Sleep(5 * time.Millisecond) // node down: try another
						continue
					}
					var body struct{ Index Index }
					json.NewDecoder(resp.Body).Decode(&body)
					resp.Body.Close()
					if resp.StatusCode == 201 || resp.StatusCode == 200 {
						l.mu.Lock()
						if prev, ok := l.acked[data]; ok && prev != body.Index {
							pc.t.Errorf("%s acknowledged at %d and %d", data, prev, body.Index)
						}
						l.acked[data] = body.Index
						l.at = append(l.at, time.Now())
						l.mu.Unlock()
						break
					}
					if resp.StatusCode != 503 {
						pc.t.Errorf("append %s: status %d", data, resp.StatusCode)
						return
					}
					time.Sleep(5 * time.Millisecond) // no leader, or not a member: try again
				}
			}
		}()
	}
	return l
}

// url returns node id's URL; startJoining adds URLs while loads run.
func (pc *procCluster) url(id NodeID) string {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.urls[id]
}

// acks returns how many appends were acknowledged.
func (l *procLoad) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.at)
}

// waitAcks waits for n more acknowledgements.
func (l *procLoad) waitAcks(t *testing.T, n int, what string) {
	t.Helper()
	base := l.acks()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d appends %s", n, what), func() bool { return l.acks() >= base+n })
}

// halt stops the clients and waits for them.
func (l *procLoad) halt() {
	close(l.stop)
	l.wg.Wait()
}

// longestGap returns the longest time between two acknowledgements (or
// from since to the first) among those that arrived after since.
func (l *procLoad) longestGap(since time.Time) time.Duration {
	l.mu.Lock()
	at := append([]time.Time(nil), l.at...)
	l.mu.Unlock()
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	var gap time.Duration
	prev := since
	for _, a := range at {
		if a.Before(since) {
			continue
		}
		gap = max(gap, a.Sub(prev))
		prev = a
	}
	return gap
}

// check asserts that log holds every acknowledged append at its index
// and no entry twice.
func (l *procLoad) check(t *testing.T, log []string) {
	t.Helper()
	seen := map[string]int{}
	for i, d := range log {
		var v any
		json.Unmarshal([]byte(d), &v)
		norm, _ := json.Marshal(v)
		if j, ok := seen[string(norm)]; ok {
			t.Fatalf("%s twice in the log: at %d and %d", d, j, i+1)
		}
		seen[string(norm)] = i + 1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for d, idx := range l.acked {
		if int(idx) > len(log) || log[idx-1] != d {
			t.Fatalf("acknowledged %s at %d is not there", d, idx)
		}
	}
}

// targetSet is the set of nodes a load appends through, changed as the
// membership changes.
type targetSet struct {
	mu  sync.Mutex
	ids []NodeID
}

func (s *targetSet) get() []NodeID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids
}

func (s *targetSet) set(ids ...NodeID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids = append([]NodeID(nil), ids...)
}

// startJoining starts node id, new to the cluster, with --join (the URLs
// of the members given) instead of --peers, listening on a fresh port.
func (pc *procCluster) startJoining(id NodeID, via ...NodeID) {
	pc.t.Helper()
	pc.mu.Lock()
	if pc.urls[id] == "" {
		pc.urls[id] = "http://" + freePorts(pc.t, 1)[0]
	}
	var join []string
	for _, v := range via {
		join = append(join, pc.urls[v])
	}
	pc.joinFlags[id] = []string{"--join", strings.Join(join, ",")}
	pc.mu.Unlock()
	pc.start(id)
}

// adminMembers sends a membership change to node via and returns the
// status and the members it answered. A 503 (no leader known, or an
// outcome unknown) is retried, as a client would, for up to 20 s; a retry
// that finds the change made (409 for an add, 404 for a removal) counts
// as done.
func (pc *procCluster) adminMembers(via NodeID, method, path, body string) (int, MembersReply) {
	var code int
	var mr MembersReply
	retried := false
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); retried = true {
		req, _ := http.NewRequest(method, pc.urls[via]+"/v1/admin/members"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer procs-test")
		resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
		if err != nil {
			continue
		}
		code, mr = resp.StatusCode, MembersReply{}
		json.NewDecoder(resp.Body).Decode(&mr)
		resp.Body.Close()
		switch {
		case code == 503:
			time.Sleep(100 * time.Millisecond) // Retry-After, in short
			continue
		case retried && method == "POST" && code == 409, retried && method == "DELETE" && code == 404:
			return map[string]int{"POST": 201, "DELETE": 200}[method], mr
		}
		return code, mr
	}
	return code, mr
}

// waitMembers waits until node id lists exactly want as voters.
func (pc *procCluster) waitVoters(id NodeID, want ...NodeID) {
	pc.t.Helper()
	waitFor(pc.t, 60*time.Second, fmt.Sprintf("node %d to list voters %v", id, want), func() bool {
		var mr MembersReply
		if err := getJSON(pc.urls[id]+"/v1/members", &mr); err != nil {
			return false
		}
		var got []NodeID
		for _, m := range mr.Members {
			if m.Voter {
				got = append(got, m.ID)
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(want)
	})
}

// loadedProcCluster starts three real nodes and four clients appending
// through them (through the nodes targets names, from then on), and
// waits for the first acknowledgements.
func loadedProcCluster(t *testing.T) (*procCluster, *targetSet, *procLoad) {
	t.Helper()
	seed := testSeed(t)
	pc := newProcClusterDumped(t, 3)
	pc.waitServing(1, 2, 3)
	targets := &targetSet{}
	targets.set(1, 2, 3)
	load := pc.startLoad(seed, 4, targets.get)
	load.waitAcks(t, 30, "with three nodes")
	return pc, targets, load
}

// TestRealProcessesGrowAndShrink: under load, a 3-node cluster grows to 5
// with nodes started with --join before they are added, and a majority
// of five forms with two originals down (the new nodes vote); then it
// shrinks to 3 again, the leader first, and every acknowledged entry is
// on every remaining node once.
func TestRealProcessesGrowAndShrink(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real binaries")
	}
	pc, targets, load := loadedProcCluster(t)
	for _, id := range []NodeID{4, 5} {
		pc.startJoining(id, 1, 2)
		waitFor(t, 10*time.Second, fmt.Sprintf("node %d to wait as a non-member", id), func() bool {
			var st struct {
				Member bool `json:"member"`
			}
			return getJSON(pc.urls[id]+"/v1/status", &st) == nil && !st.Member
		})
		code, mr := pc.adminMembers(2, "POST", "", fmt.Sprintf(`{"id":%d,"url":%q}`, id, pc.urls[id]))
		if code != 201 || len(mr.Members) != int(id) {
			t.Fatalf("add node %d: %d %+v", id, code, mr)
		}
		want := []NodeID{1, 2, 3, 4, 5}[:id]
		pc.waitVoters(1, want...)
		targets.set(want...)
		load.waitAcks(t, 20, fmt.Sprintf("with node %d a voter", id))
	}
	// Five voters: with two originals down, nodes 3, 4 and 5 are a majority.
	pc.kill(1)
	pc.kill(2)
	targets.set(3, 4, 5)
	load.waitAcks(t, 20, "with two originals down")
	pc.start(1)
	pc.start(2)
	pc.waitServing(1, 2, 3, 4, 5)
	targets.set(1, 2, 3, 4, 5)
	// Shrink to three: the leader first, then another.
	st, err := pc.status(3)
	if err != nil {
		t.Fatal(err)
	}
	remove := []NodeID{st.Leader}
	for _, id := range []NodeID{1, 2, 3, 4, 5} {
		if len(remove) < 2 && id != st.Leader {
			remove = append(remove, id)
		}
	}
	var keep []NodeID
	for _, id := range []NodeID{1, 2, 3, 4, 5} {
		if id != remove[0] && id != remove[1] {
			keep = append(keep, id)
		}
	}
	targets.set(keep...)
	for k, id := range remove {
		at := time.Now()
		code, _ := pc.adminMembers(keep[0], "DELETE", fmt.Sprintf("/%d", id), "")
		if code != 200 {
			t.Fatalf("remove node %d: %d", id, code)
		}
		load.waitAcks(t, 20, fmt.Sprintf("after node %d's removal", id))
		if k == 0 {
			t.Logf("removed the leader, node %d: longest pause in acknowledged appends %v", id, load.longestGap(at).Round(time.Millisecond))
		}
		pc.kill(id)
	}
	pc.waitVoters(keep[0], keep...)
	load.waitAcks(t, 20, "after shrinking")
	load.halt()
	log := pc.sameLogs(keep...)
	load.check(t, log)
	t.Logf("grew 3 -> 5 and shrank to %v under load; %d entries the same on all, %d acknowledged appends", keep, len(log), load.acks())
}

// TestRealProcessesReplaceMachine: under load, node 3's machine dies for
// good; as the runbook says, a fresh node 4 started with --join is added,
// becomes a voter, and node 3 is removed. Then a majority forms with node
// 4 and without an original (node 4 really votes), and every
// acknowledged entry is on every member once.
func TestRealProcessesReplaceMachine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real binaries")
	}
	pc, targets, load := loadedProcCluster(t)
	pc.kill(3) // the machine is gone
	targets.set(1, 2)
	load.waitAcks(t, 20, "with node 3 gone")
	pc.startJoining(4, 1, 2)
	if code, _ := pc.adminMembers(2, "POST", "", fmt.Sprintf(`{"id":4,"url":%q}`, pc.urls[4])); code != 201 {
		t.Fatalf("add node 4: %d", code)
	}
	pc.waitVoters(1, 1, 2, 3, 4)
	targets.set(1, 2, 4)
	load.waitAcks(t, 20, "with node 4 a voter")
	if code, _ := pc.adminMembers(1, "DELETE", "/3", ""); code != 200 {
		t.Fatalf("remove node 3: %d", code)
	}
	pc.waitVoters(1, 1, 2, 4)
	st, err := pc.status(4)
	if err != nil {
		t.Fatal(err)
	}
	other := NodeID(1) // an original that does not lead
	if st.Leader == 1 {
		other = 2
	}
	pc.kill(other)
	targets.set(3-other, 4)
	load.waitAcks(t, 20, fmt.Sprintf("with node %d down: 4 votes", other))
	pc.start(other)
	targets.set(1, 2, 4)
	load.waitAcks(t, 20, "with every member up")
	load.halt()
	log := pc.sameLogs(1, 2, 4)
	load.check(t, log)
	t.Logf("replaced node 3 with node 4 under load; %d entries the same on 1, 2 and 4, %d acknowledged appends", len(log), load.acks())
}
