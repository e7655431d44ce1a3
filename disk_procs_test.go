package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// disk_procs_test.go: lost and damaged disks with real processes.

// procStatus is the part of /v1/status these tests read.
type procStatus struct {
	Leader     NodeID        `json:"leader"`
	Cluster    string        `json:"cluster"`
	Recovering bool          `json:"recovering"`
	State      string        `json:"state"`
	Last       Index         `json:"last"`
	Alarm      *ReplicaAlarm `json:"alarm"`
}

func (pc *procCluster) status(id NodeID) (procStatus, error) {
	var st procStatus
	err := getJSON(pc.urls[id]+"/v1/status", &st)
	return st, err
}

// append posts data to node id and returns the status and index.
func (pc *procCluster) append(id NodeID, data string, timeout time.Duration) (int, Index, error) {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Post(pc.urls[id]+"/v1/log", "application/json", strings.NewReader(data))
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var body struct{ Index Index }
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Index, nil
}

// mustAppend appends through id, retrying a 503 until a deadline.
func (pc *procCluster) mustAppend(id NodeID, data string) Index {
	pc.t.Helper()
	var idx Index
	waitFor(pc.t, 20*time.Second, "an append through node "+fmt.Sprint(id), func() bool {
		code, i, err := pc.append(id, data, 3*time.Second)
		idx = i
		return err == nil && code == 201
	})
	return idx
}

// waitServing waits until every node in ids serves and knows one leader
// and one cluster identity.
func (pc *procCluster) waitServing(ids ...NodeID) string {
	pc.t.Helper()
	var cluster string
	waitFor(pc.t, 30*time.Second, fmt.Sprintf("nodes %v to serve", ids), func() bool {
		cluster = ""
		for _, id := range ids {
			st, err := pc.status(id)
			if err != nil || st.State != "serving" || st.Leader == 0 || st.Cluster == "" || (cluster != "" && st.Cluster != cluster) {
				return false
			}
			cluster = st.Cluster
		}
		return true
	})
	return cluster
}

// sameLogs waits until the nodes hold the same log, and returns it.
func (pc *procCluster) sameLogs(ids ...NodeID) []string {
	pc.t.Helper()
	var ref []string
	waitFor(pc.t, 30*time.Second, "the nodes to hold the same log", func() bool {
		ref = nil
		for k, id := range ids {
			l, err := logOfURL(pc.urls[id])
			if err != nil {
				return false
			}
			if k == 0 {
				ref = l
				continue
			}
			if len(l) != len(ref) {
				return false
			}
			for i := range l {
				if l[i] != ref[i] {
					pc.t.Fatalf("index %d: node %d has %s, node %d has %s", i+1, id, l[i], ids[0], ref[i])
				}
			}
		}
		return true
	})
	return ref
}

// nodeLog returns everything node id wrote to stderr so far.
func (pc *procCluster) nodeLog(id NodeID) string {
	files, _ := filepath.Glob(filepath.Join(pc.dir, fmt.Sprintf("node%d.*.log", id)))
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		b.Write(data)
	}
	return b.String()
}

// newProcClusterDumped is newProcCluster whose nodes' logs are printed if
// the test fails.
func newProcClusterDumped(t *testing.T, size int) *procCluster {
	pc := newProcCluster(t, size)
	t.Cleanup(func() {
		if t.Failed() {
			pc.dumpLogs()
		}
	})
	return pc
}

// TestRealProcessesLostDisk is the sequence that lost 50 acknowledged
// entries before rebuilds, with real processes and SIGKILL: node 3 stopped,
// 50 appends through node 1, nodes 1 and 2 killed, node 2's --data
// deleted, nodes 2 and 3 started without node 1. No append may succeed
// then (node 2 must not vote); once node 1 is back, every acknowledged
// entry is on all three nodes.
func TestRealProcessesLostDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real binaries")
	}
	pc := newProcClusterDumped(t, 3)
	pc.waitServing(1, 2, 3)
	pc.kill(3)
	acked := map[Index]string{}
	for i := 0; i < 50; i++ {
		d := fmt.Sprintf(`{"n":%d}`, i)
		acked[pc.mustAppend(1, d)] = d
	}
	pc.kill(1)
	pc.kill(2)
	if err := os.RemoveAll(filepath.Join(pc.dir, "2")); err != nil {
		t.Fatal(err)
	}
	pc.start(2)
	pc.start(3)
	waitFor(t, 10*time.Second, "node 2 to say it is recovering", func() bool {
		st, err := pc.status(2)
		return err == nil && st.Recovering
	})
	code, idx, err := pc.append(3, `"warm"`, 5*time.Second)
	if err == nil && (code == 201 || code == 200) {
		t.Fatalf("append through node 3 with node 1 down and node 2's disk lost: %d at index %d", code, idx)
	}
	t.Logf("append with node 1 down and node 2 rebuilding: %d %v", code, err)
	pc.start(1)
	pc.waitServing(1, 2, 3)
	pc.mustAppend(3, `"after"`)
	log := pc.sameLogs(1, 2, 3)
	for i, d := range acked {
		if int(i) > len(log) || log[i-1] != d {
			t.Fatalf("acknowledged %s at %d, the log holds %v there", d, i, log[min(int(i), len(log))-1])
		}
	}
	if !strings.Contains(pc.nodeLog(2), "rebuilt acceptor state") {
		t.Fatalf("node 2 logged no rebuild")
	}
	t.Logf("%d entries on all three nodes; the 50 acknowledged before the loss all present", len(log))
}

// overwriteMiddle overwrites n bytes in the middle of the newest segment
// file of the journal in dir with junk.
func overwriteMiddle(t *testing.T, dir string, n int) {
	t.Helper()
	path := newestSegment(t, dir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 4*n {
		t.Fatalf("%s holds %d bytes", path, len(data))
	}
	copy(data[len(data)/2:], bytes.Repeat([]byte{0xa5}, n))
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

// TestRealProcessesDamagedFiles: bytes overwritten in the middle of a
// segment of each journal of a stopped follower. It comes back, rebuilds
// what it forgot, learns again what it lost, and serves the same entry as
// the others at every index; ERROR lines name both files.
func TestRealProcessesDamagedFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real binaries")
	}
	pc := newProcClusterDumped(t, 3)
	pc.waitServing(1, 2, 3)
	st, err := pc.status(1)
	if err != nil {
		t.Fatal(err)
	}
	leader := st.Leader
	victim := leader%3 + 1
	for i := 0; i < 200; i++ {
		pc.mustAppend(leader, fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("p", 60)))
	}
	pc.sameLogs(1, 2, 3)
	time.Sleep(300 * time.Millisecond) // past the learner's periodic sync (200 ms) and the acceptor's idle seal: both synced
	pc.kill(victim)
	overwriteMiddle(t, filepath.Join(pc.dir, fmt.Sprint(victim), "acceptor"), 24)
	overwriteMiddle(t, filepath.Join(pc.dir, fmt.Sprint(victim), "log"), 24)
	for i := 0; i < 20; i++ {
		pc.mustAppend(leader, fmt.Sprintf(`{"m":%d}`, i))
	}
	pc.start(victim)
	pc.waitServing(1, 2, 3)
	pc.mustAppend(victim, `"after"`)
	log := pc.sameLogs(1, 2, 3)
	out := pc.nodeLog(victim)
	for _, want := range []string{"file=acceptor", "file=log/"} {
		if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, want) {
			t.Fatalf("node %d logged no ERROR naming %s:\n%s", victim, want, out)
		}
	}
	t.Logf("%d entries, the same at every index on all three nodes", len(log))
}

// TestRealProcessesForeignCluster: a peer message that names another
// cluster gets 409, and a node started with one cluster's --data among
// another cluster's members stops with one line that says so.
func TestRealProcessesForeignCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real binaries")
	}
	a := newProcCluster(t, 3)
	b := newProcCluster(t, 3)
	ida := a.waitServing(1, 2, 3)
	idb := b.waitServing(1, 2, 3)
	if ida == idb {
		t.Fatalf("two clusters share the identity %s", ida)
	}
	req, _ := http.NewRequest("POST", a.urls[1]+"/paxos/prepare", strings.NewReader(`{"from":2,"b":{"r":1000,"n":2},"slot":1}`))
	req.Header.Set("Authorization", "Bearer procs-test")
	req.Header.Set(clusterHeader, idb)
	resp, err := procClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 409 || !strings.Contains(body.Error, "another cluster") {
		t.Fatalf("prepare naming another cluster: %d %q", resp.StatusCode, body.Error)
	}
	if !strings.Contains(a.nodeLog(1), "refused a peer message from another cluster") {
		t.Fatalf("node 1 did not log the refusal")
	}

	// Node 3 of cluster A started as node 3 of cluster B.
	a.kill(3)
	b.kill(3)
	cmd := exec.Command(a.bin, "--id", "3", "--listen", strings.TrimPrefix(b.urls[3], "http://"),
		"--peers", b.peers, "--data", filepath.Join(a.dir, "3"), "--heartbeat", "20ms", "--election-timeout", "150ms")
	cmd.Env = append(os.Environ(), "PAXOSLOG_CLUSTER_KEY=procs-test")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 {
			t.Fatalf("exit: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("a node with another cluster's data kept running:\n%s", stderr.String())
	}
	var last string
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		last = line
	}
	if !strings.HasPrefix(last, "paxoslog: ") || !strings.Contains(last, "belongs to cluster "+ida) || !strings.Contains(last, idb) {
		t.Fatalf("last line %q, want one that names both clusters", last)
	}
	t.Logf("refused: %s", last)
}
