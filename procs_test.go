package main

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// procs_test.go: real paxoslog processes on loopback, SIGKILLed at random
// moments under load and restarted from the same --data, plus a torn WAL
// tail on disk that a node repairs at start.

// procCluster runs real paxoslog binaries.
type procCluster struct {
	t     *testing.T
	bin   string
	dir   string
	urls  map[NodeID]string
	peers string
	mu    sync.Mutex
	procs map[NodeID]*proc
	boots map[NodeID]int
	// joinFlags holds the --join flags of nodes added after the start.
	joinFlags map[NodeID][]string
}

// proc is one running binary; done closes once it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// built is the binary the real-process tests share: built once, with the
// race detector, and removed by TestMain.
var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func buildBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "paxoslog-bin-"); built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "paxoslog")
		out, err := exec.Command("go", "build", "-race", "-o", built.bin, ".").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return addrs
}

func newProcCluster(t *testing.T, size int) *procCluster {
	pc := &procCluster{t: t, bin: buildBinary(t), dir: t.TempDir(), urls: map[NodeID]string{},
		procs: map[NodeID]*proc{}, boots: map[NodeID]int{}, joinFlags: map[NodeID][]string{}}
	var parts []string
	for i, addr := range freePorts(t, size) {
		id := NodeID(i + 1)
		pc.urls[id] = "http://" + addr
		parts = append(parts, fmt.Sprintf("%d=http://%s", id, addr))
	}
	pc.peers = strings.Join(parts, ",")
	for id := range pc.urls {
		pc.start(id)
	}
	t.Cleanup(func() {
		for id := range pc.urls {
			pc.kill(id)
		}
	})
	return pc
}

func (pc *procCluster) start(id NodeID) {
	pc.t.Helper()
	pc.mu.Lock()
	flags := pc.joinFlags[id]
	pc.mu.Unlock()
	if flags == nil {
		flags = []string{"--peers", pc.peers}
	}
	pc.startWith(id, flags...)
}

// startWith starts node id with membership flags (--peers or --join).
func (pc *procCluster) startWith(id NodeID, flags ...string) {
	pc.t.Helper()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.boots[id]++
	logf, err := os.Create(filepath.Join(pc.dir, fmt.Sprintf("node%d.%d.log", id, pc.boots[id])))
	if err != nil {
		pc.t.Fatal(err)
	}
	args := append([]string{"--id", fmt.Sprint(id), "--listen", strings.TrimPrefix(pc.urls[id], "http://")}, flags...)
	cmd := exec.Command(pc.bin, append(args, "--data", filepath.Join(pc.dir, fmt.Sprint(id)),
		"--heartbeat", "20ms", "--election-timeout", "150ms", "--request-timeout", "2s")...)
	cmd.Env = append(os.Environ(), "PAXOSLOG_CLUSTER_KEY=procs-test")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		pc.t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	pc.procs[id] = p
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
}

// kill SIGKILLs node id, if it runs.
func (pc *procCluster) kill(id NodeID) {
	pc.mu.Lock()
	p := pc.procs[id]
	delete(pc.procs, id)
	pc.mu.Unlock()
	if p != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// dumpLogs prints every node's stderr, for a failing test.
func (pc *procCluster) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(pc.dir, "node*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		pc.t.Logf("--- %s\n%s", filepath.Base(f), b)
	}
}

var procClient = &http.Client{Timeout: 3 * time.Second}

func getJSON(url string, v any) error {
	resp, err := procClient.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// logOfURL pages through a node's log with stale reads.
func logOfURL(url string) ([]string, error) {
	var out []string
	for {
		var page struct {
			Entries []struct {
				Index Index           `json:"index"`
				Data  json.RawMessage `json:"data"`
			} `json:"entries"`
			Last Index `json:"last"`
		}
		if err := getJSON(fmt.Sprintf("%s/v1/log?stale=true&limit=1000&from=%d", url, len(out)+1), &page); err != nil {
			return nil, err
		}
		for _, e := range page.Entries {
			out = append(out, string(e.Data))
		}
		if len(page.Entries) == 0 || Index(len(out)) >= page.Last {
			return out, nil
		}
	}
}

func TestRealProcessesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real binaries")
	}
	seed := testSeed(t)
	rng := rand.New(rand.NewSource(seed))
	pc := newProcCluster(t, 3)
	defer func() {
		if t.Failed() {
			pc.dumpLogs()
		}
	}()
	ids := []NodeID{1, 2, 3}

	load := pc.startLoad(seed, 6, func() []NodeID { return ids })
	load.waitAcks(t, 20, "first")

	for round := 0; round < 6; round++ {
		victim := ids[rng.Intn(3)]
		time.Sleep(time.Duration(50+rng.Intn(400)) * time.Millisecond) // a random moment under load
		pc.kill(victim)
		if round == 3 {
			// A torn tail on disk: half a record at the end of both journals.
			for _, sub := range []string{"acceptor", "log"} {
				segs, _ := segmentFiles(filepath.Join(pc.dir, fmt.Sprint(victim), sub))
				if len(segs) > 0 {
					f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
					if err == nil {
						f.Write([]byte{0xff, 0x03, 1, 2})
						f.Close()
					}
				}
			}
		}
		load.waitAcks(t, 10, "with a node down")
		pc.start(victim)
		t.Logf("round %d: killed and restarted node %d", round, victim)
	}
	load.waitAcks(t, 20, "after the last restart")
	load.halt()

	// Every node converges to the same log holding every acked append once.
	var logs map[NodeID][]string
	waitFor(t, 30*time.Second, "nodes to converge", func() bool {
		logs = map[NodeID][]string{}
		for _, id := range ids {
			l, err := logOfURL(pc.urls[id])
			if err != nil {
				return false
			}
			logs[id] = l
		}
		return len(logs[1]) == len(logs[2]) && len(logs[2]) == len(logs[3])
	})
	ref := logs[1]
	for _, id := range ids {
		for i := range ref {
			if logs[id][i] != ref[i] {
				t.Fatalf("index %d: node %d has %s, node 1 has %s", i+1, id, logs[id][i], ref[i])
			}
		}
	}
	load.check(t, ref)
	t.Logf("%d entries identical on 3 nodes; %d acknowledged appends all present once", len(ref), load.acks())
}
