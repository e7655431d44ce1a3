package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// dedup_test.go: the dedup state apart from the entries (dedup.go), and
// retention that drops what it is asked.

// keyedEntry is an entry with an Idempotency-Key and data derived from it.
func keyedEntry(key string) Entry {
	var id EntryID
	copy(id[:], "id-"+key)
	return Entry{ID: id, Key: key, Data: []byte(fmt.Sprintf("%q", key))}
}

// appendKeys appends n entries with the keys k0, k1, ... through node via
// and returns the index each got.
func (c *testCluster) appendKeys(via NodeID, n int) map[string]Index {
	c.t.Helper()
	keys := map[string]Index{}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%d", i)
		a, err := c.appendKeyed(context.Background(), via, fmt.Sprintf("%q", key), key)
		if err != nil {
			c.t.Fatal(err)
		}
		keys[key] = a.Index
	}
	return keys
}

// retainFew is a config that retains keep entries, compacts often, in
// small segments; more, if set, changes it further.
func retainFew(keep int, more func(*Config)) func(*Config) {
	return func(cfg *Config) {
		cfg.RetainEntries = keep
		cfg.RetentionInterval = 20 * time.Millisecond
		cfg.SegmentBytes = 4096
		cfg.CheckpointEvery = 32
		if more != nil {
			more(cfg)
		}
	}
}

// applyKeyed applies slots 1..n, slot s holding one entry with key ks.
func applyKeyed(n *Node, count int) {
	for s := 1; s <= count; s++ {
		n.learner.chosen(SlotValue{Slot: Slot(s), Value: Value{Entries: []Entry{keyedEntry(fmt.Sprint("k", s))}}})
	}
}

// remembered reports where the learner says key's entry went, if anywhere.
func remembered(l *Learner, key string) (Index, bool) {
	ch := l.await(Entry{Key: key})
	select {
	case a := <-ch:
		return a.Index, true
	default:
		l.unawait(Entry{Key: key})
		return 0, false
	}
}

// Compaction down to a handful of entries on every node while keyed
// appends go on; then every node is cut off at once and restarted, and a
// retry of every key, through every node, answers the index its entry got
// although no node holds the entry any more.
func TestCompactToAHandfulUnderLoad(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) { cfg.SegmentBytes = 8 << 10 })
	c.leader(5 * time.Second)
	var mu sync.Mutex
	keys := map[string]Index{}
	stop := make(chan struct{})
	compacted := make(chan int)
	go func() { // the compactor: every node down to its last three entries, over and over
		passes := 0
		defer func() { compacted <- passes }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond): // pacing between passes
			}
			for _, id := range c.live() {
				if n := c.node(id); n != nil {
					if _, last := n.learner.Bounds(); last > 3 {
						if _, err := n.learner.compactBefore(last - 2); err != nil && !errors.Is(err, errJournalClosed) {
							t.Errorf("compact node %d: %v", id, err)
						}
					}
				}
			}
			passes++
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				via := c.members[(w+i)%len(c.members)]
				a, err := c.appendKeyed(context.Background(), via, fmt.Sprintf("%q", key), key)
				if err != nil {
					t.Errorf("append %s: %v", key, err)
					return
				}
				mu.Lock()
				keys[key] = a.Index
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	t.Logf("%d compaction passes under load", <-compacted)
	for _, id := range c.members {
		l := c.node(id).learner
		_, last := l.Bounds()
		if first, err := l.compactBefore(last - 2); err != nil || first != last-2 {
			t.Fatalf("node %d: compactBefore(%d) = %d, %v: want exactly that", id, last-2, first, err)
		}
		if _, err := l.Get(1); !errors.Is(err, ErrCompacted) {
			t.Fatalf("node %d: index 1 reads %v, want ErrCompacted", id, err)
		}
	}
	for _, id := range c.members {
		c.crash(id) // a power cut: what was not synced is gone
	}
	for _, id := range c.members {
		c.start(id)
	}
	c.leader(5 * time.Second)
	for _, id := range c.members {
		n := c.node(id)
		if first, last := n.learner.Bounds(); last-first > 2+64 {
			t.Fatalf("node %d retains %d..%d after the restart: more than it was left with", id, first, last)
		}
		for key, idx := range keys {
			a, err := c.appendKeyed(context.Background(), id, fmt.Sprintf("%q", key), key)
			if err != nil || a.Index != idx || !a.Duplicate {
				t.Fatalf("retry of %s through node %d: %+v %v, want index %d, a duplicate", key, id, a, err, idx)
			}
		}
	}
	c.check()
}

// A follower down while its peers retain only five entries catches up by
// installing a prefix with their dedup state: keys of entries it never
// held are recognised through it, after a power cut too, and it then
// carries its share of a majority.
func TestFollowerDownPastRetentionKeepsKeys(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), retainFew(5, nil))
	leader := c.leader(5 * time.Second)
	lagging := leader%3 + 1
	other := 6 - leader - lagging
	c.crash(lagging)
	keys := c.appendKeys(leader, 200)
	c.restartPastRetention(leader, lagging, 5)
	retry := func(via NodeID) {
		t.Helper()
		for i := 0; i < 200; i += 7 {
			key := fmt.Sprintf("k%d", i)
			a, err := c.appendKeyed(context.Background(), via, fmt.Sprintf("%q", key), key)
			if err != nil || a.Index != keys[key] || !a.Duplicate {
				t.Fatalf("retry of %s through node %d: %+v %v, want index %d, a duplicate", key, via, a, err, keys[key])
			}
		}
	}
	retry(lagging)
	c.syncedThrough(lagging, keys["k199"])
	c.crash(lagging)
	c.start(lagging)
	retry(lagging)
	c.crash(other) // a majority now needs the node that installed
	for i := 0; i < 20; i++ {
		c.mustAppend(lagging, fmt.Sprintf(`{"after":%d}`, i))
	}
	retry(lagging)
	c.start(other)
	c.check()
}

// An install a crash cuts short is finished as the node opens (D3): after
// the install file is written, and again after the dedup journal is reset.
func TestPrefixInstallInterrupted(t *testing.T) {
	for _, stage := range []string{"file written", "dedup journal reset"} {
		t.Run(stage, func(t *testing.T) {
			dir := t.TempDir()
			n := newIdleNode(t, dir)
			for s := 1; s <= 5; s++ {
				n.learner.chosen(SlotValue{Slot: Slot(s), Value: entryValue(fmt.Sprint(s))})
			}
			in := prefixInstall{First: 50, Applied: 30, DedupFrom: 40}
			for i := 40; i < 50; i++ {
				e := keyedEntry(fmt.Sprint("p", i))
				in.Dedup = append(in.Dedup, dedupRecord(e.ID, e.Key))
			}
			if err := n.learner.beginInstall(in); err != nil {
				t.Fatal(err)
			}
			if stage == "dedup journal reset" {
				if err := n.learner.dedup.Reset(39, nil); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.crash(); err != nil {
				t.Fatal(err)
			}
			n2 := newIdleNode(t, dir)
			if first, last := n2.learner.Bounds(); first != 50 || last != 49 || n2.learner.Applied() != 30 {
				t.Fatalf("after the restart: bounds %d..%d, applied %d; want 50..49, applied 30", first, last, n2.learner.Applied())
			}
			for i := 40; i < 50; i++ {
				if idx, ok := remembered(n2.learner, fmt.Sprint("p", i)); !ok || idx != Index(i) {
					t.Fatalf("key p%d: remembered at %d (%v), want %d", i, idx, ok, i)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, prefixInstallFile)); !os.IsNotExist(err) {
				t.Fatalf("the install file is still there: %v", err)
			}
		})
	}
}

// The dedup window is DedupWindow indices: a key is recognised while its
// index is in it, whatever retention keeps, across restarts, and the dedup
// journal keeps about the window on disk.
func TestDedupWindowBounds(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{ID: 1, DataDir: dir, DedupWindow: 64, SegmentBytes: 1024}
	open := func() *Node {
		n, err := NewNode(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	n := open()
	applyKeyed(n, 300)
	if first, err := n.learner.compactBefore(300); err != nil || first != 300 {
		t.Fatalf("compactBefore(300) = %d, %v", first, err)
	}
	if err := n.learner.trimDedup(); err != nil {
		t.Fatal(err)
	}
	df, dl := n.learner.dedup.Bounds()
	if dl != 300 || df > 300-64+1 || 300-df+1 > 64+64/8+64 {
		t.Fatalf("dedup journal holds %d..%d: want the window (the last 64) and a little more", df, dl)
	}
	check := func(n *Node) {
		t.Helper()
		for s := 1; s <= 300; s++ {
			idx, ok := remembered(n.learner, fmt.Sprint("k", s))
			if in := s > 300-64; ok != in || (ok && idx != Index(s)) {
				t.Fatalf("key k%d: remembered %v at %d; in the window: %v", s, ok, idx, in)
			}
		}
	}
	check(n)
	if err := n.crash(); err != nil {
		t.Fatal(err)
	}
	check(open())
}

// A lost dedup journal: rebuilt from the client log where that holds the
// window; where it does not, a lone node stops with one clear error.
func TestDedupJournalLostAlone(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{ID: 1, DataDir: dir, DedupWindow: 16}
	n, err := NewNode(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	applyKeyed(n, 40)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "dedup")); err != nil {
		t.Fatal(err)
	}
	n, err = NewNode(cfg, nil)
	if err != nil {
		t.Fatalf("reopen with the dedup journal gone and the window in the client log: %v", err)
	}
	if idx, ok := remembered(n.learner, "k30"); !ok || idx != 30 {
		t.Fatalf("k30 after the rebuild: %d %v", idx, ok)
	}
	if _, err := n.learner.compactBefore(40); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "dedup")); err != nil {
		t.Fatal(err)
	}
	_, err = NewNode(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "restore --data from a backup") {
		t.Fatalf("reopen alone with the dedup journal gone and the log compacted: %v, want a clear refusal", err)
	}
}

// A member whose dedup journal is lost under a compacted client log drops
// the log and learns it again, with the dedup state, from its peers.
func TestDedupJournalLostInCluster(t *testing.T) {
	c := newTestClusterWith(t, 3, testSeed(t), func(cfg *Config) {
		cfg.RetainEntries = 5
		cfg.RetentionInterval = 20 * time.Millisecond
	})
	leader := c.leader(5 * time.Second)
	victim := leader%3 + 1
	keys := c.appendKeys(leader, 60)
	waitFor(t, 10*time.Second, "every node to compact", func() bool {
		for _, id := range c.members {
			if kept, _ := c.node(id).learner.keptBounds(); kept <= 30 {
				return false
			}
		}
		return true
	})
	c.syncedThrough(victim, keys["k59"])
	c.crash(victim)
	if err := os.RemoveAll(filepath.Join(c.dirs[victim], "dedup")); err != nil {
		t.Fatal(err)
	}
	c.start(victim)
	n := c.node(victim)
	waitFor(t, 10*time.Second, "the victim to learn the log again", func() bool {
		_, last := n.learner.Bounds()
		return last >= keys["k59"]
	})
	// It learned the log again: from a peer's prefix, or slot by slot
	// from its own acceptor's values and its peers (every value chosen,
	// the window rebuilt from index 1).
	if v := scrape(t, n, `paxoslog_repairs_total{journal="log"}`); v < 1 {
		t.Fatalf(`paxoslog_repairs_total{journal="log"} = %v: the victim did not drop its log and learn it again`, v)
	}
	for key, idx := range keys {
		a, err := c.appendKeyed(context.Background(), victim, fmt.Sprintf("%q", key), key)
		if err != nil || a.Index != idx || !a.Duplicate {
			t.Fatalf("retry of %s through the victim: %+v %v, want index %d, a duplicate", key, a, err, idx)
		}
	}
	c.check()
}

// A damaged dedup record is written again: as the node opens, from the
// client log; while it runs, from memory (the scrub).
func TestDamagedDedupRecordRepaired(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{ID: 1, DataDir: dir, DedupWindow: 4096, SegmentBytes: 1024, ScrubInterval: 20 * time.Millisecond}
	n, err := NewNode(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	applyKeyed(n, 200)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	bad := damageClosedRecord(t, filepath.Join(dir, "dedup"), 2)
	n, err = NewNode(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if v := scrape(t, n, `paxoslog_repairs_total{journal="dedup"}`); v != 1 {
		t.Fatalf("dedup repairs after the open = %v, want 1", v)
	}
	if idx, ok := remembered(n.learner, fmt.Sprint("k", bad)); !ok || idx != Index(bad) {
		t.Fatalf("the damaged record's key: %d %v, want %d", idx, ok, bad)
	}
	bad = damageClosedRecord(t, filepath.Join(dir, "dedup"), 3)
	n.learner.scrubDedup()
	if v := scrape(t, n, `paxoslog_repairs_total{journal="dedup"}`); v != 2 {
		t.Fatalf("dedup repairs after the scrub = %v, want 2", v)
	}
	p, err := n.learner.dedup.Read(bad)
	if err != nil {
		t.Fatalf("dedup record %d after the scrub: %v", bad, err)
	}
	if _, k, err := decodeDedupRecord(p); err != nil || k != fmt.Sprint("k", bad) {
		t.Fatalf("dedup record %d after the scrub holds %q, %v", bad, k, err)
	}
}

// After an install that brought no dedup records (the peer's window did
// not reach below its first index), a dedup journal that a crash left
// behind the client log is filled from it, not taken for lost (D2).
func TestInstallWithoutDedupThenDedupBehind(t *testing.T) {
	dir := t.TempDir()
	n := newIdleNode(t, dir)
	l := n.learner
	if err := l.installPrefix(CatchupResp{Compacted: true, First: 50, FirstSlot: 31}, nil); err != nil {
		t.Fatal(err)
	}
	for s := 31; s <= 35; s++ {
		l.chosenWith(nil, SlotValue{Slot: Slot(s), Value: Value{Entries: []Entry{keyedEntry(fmt.Sprint("k", s))}}})
	}
	if err := l.journal.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := l.dedup.TruncateBack(49); err != nil { // what a power cut may leave
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n2 := newIdleNode(t, dir)
	if first, last := n2.learner.Bounds(); first != 50 || last != 54 {
		t.Fatalf("bounds %d..%d after the restart, want 50..54 (the log kept, not learned again)", first, last)
	}
	if idx, ok := remembered(n2.learner, "k33"); !ok || idx != 52 {
		t.Fatalf("k33: %d %v, want 52", idx, ok)
	}
}

// Through the slot the peer had applied when it sent its prefix, values
// are taken only from logs: a value from an acceptor or a leader may hold
// a duplicate whose first entry the install's dedup state does not show.
func TestInstallTakesOnlyLogValuesThroughPeersApplied(t *testing.T) {
	n := newIdleNode(t, t.TempDir())
	l := n.learner
	if err := l.installPrefix(CatchupResp{Compacted: true, First: 50, FirstSlot: 31, DedupThrough: 40}, nil); err != nil {
		t.Fatal(err)
	}
	l.chosen(SlotValue{Slot: 31, Value: Value{Entries: []Entry{keyedEntry("raw")}}})
	if l.Applied() != 30 {
		t.Fatalf("applied %d after a value not from a log for slot 31, want 30 (not taken)", l.Applied())
	}
	l.chosenWith(nil, SlotValue{Slot: 31, Value: Value{Entries: []Entry{keyedEntry("logged")}}})
	if _, ok := remembered(l, "logged"); !ok || l.Applied() != 31 {
		t.Fatalf("applied %d after slot 31 from a log, want 31", l.Applied())
	}
	l.chosen(SlotValue{Slot: 41, Value: Value{}}) // past the peer's applied slot: taken (pending until 32..40 come)
	if _, ok := l.pending[41]; !ok {
		t.Fatal("a value for slot 41, past the peer's applied slot, was not kept")
	}
}

// A dedup journal trimmed to the window, then a client log that lost
// records at its end: the window reaches below the dedup journal now, and
// is rebuilt from the client log (D2).
func TestDedupRebuiltWhenTheLogLosesItsTail(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{ID: 1, DataDir: dir, DedupWindow: 64, SegmentBytes: 1024}
	n, err := NewNode(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	applyKeyed(n, 300)
	if err := n.learner.trimDedup(); err != nil {
		t.Fatal(err)
	}
	if err := n.learner.journal.TruncateBack(260); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n, err = NewNode(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for s := 260 - 63; s <= 260; s++ {
		if idx, ok := remembered(n.learner, fmt.Sprint("k", s)); !ok || idx != Index(s) {
			t.Fatalf("k%d: %d %v after the restart, want %d", s, idx, ok, s)
		}
	}
}

// refWindow is the dedup window as a map from identity to where it went
// and a ring of identities: the model dedupWindow must agree with.
type refWindow struct {
	size   Index
	recent map[string]appliedEntry
	ring   []string // identity at each index, "+" for a continued one
	tail   string
}

func (r *refWindow) forgetBelow(i Index) {
	if i > r.size {
		if old := r.ring[i%r.size]; old != "+" && r.recent[old].index == i-r.size {
			delete(r.recent, old)
		}
	}
}

func (r *refWindow) remember(i Index, id EntryID, key string) {
	r.forgetBelow(i)
	k := identityOf(id, key)
	r.ring[i%r.size] = k
	r.recent[k] = appliedEntry{index: i, last: i, id: id}
	r.tail = k
}

func (r *refWindow) rememberContinued(i Index) {
	r.forgetBelow(i)
	r.ring[i%r.size] = "+"
	if a, ok := r.recent[r.tail]; ok && a.last == i-1 {
		a.last = i
		r.recent[r.tail] = a
	} else {
		r.tail = ""
	}
}

func (r *refWindow) record(i Index) ([]byte, bool) {
	k := r.ring[i%r.size]
	if k == "+" {
		return continuedRecord, true
	}
	a, ok := r.recent[k]
	if !ok || a.index != i {
		return nil, false
	}
	if k[0] == 'k' {
		return dedupRecord(a.id, k[1:]), true
	}
	return dedupRecord(a.id, ""), true
}

// TestDedupWindowMatchesModel drives dedupWindow and the map model with
// the same random appends, batches and prefix installs (a reset, then
// records from a later index), over small windows so that identities
// leave and come back, with the hash narrowed to three bits in half the
// runs so that most identities share a hash with another; every lookup,
// every record in the window and the identity count must agree.
func TestDedupWindowMatchesModel(t *testing.T) {
	seed := testSeed(t)
	for run := range 40 {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(run)))
		size := Index(1 + rng.IntN(80))
		w := newDedupWindow(int(size))
		if run%2 == 1 {
			w.mask = 7
		}
		ref := &refWindow{size: size, recent: map[string]appliedEntry{}, ring: make([]string, size)}
		type ident struct {
			id  EntryID
			key string
		}
		pool := make([]ident, 3*int(size)+2)
		for p := range pool {
			pool[p].id[0], pool[p].id[1], pool[p].id[15] = byte(p), byte(p>>8), 1
			if rng.IntN(2) == 0 {
				pool[p].key = strings.Repeat(string(rune('a'+p%26)), 1+rng.IntN(maxKeyBytes-4)) + fmt.Sprint(p)
			}
		}
		last := Index(0)
		for step := range 3000 {
			switch op := rng.IntN(100); {
			case op < 1: // a prefix install: forget everything, remember from a later index
				w.reset()
				clear(ref.recent)
				clear(ref.ring)
				ref.tail = ""
				last += Index(rng.IntN(3 * int(size)))
			case op < 3 && last > 0: // indices this window does not see (it never happens in a learner)
				gap := Index(1 + rng.IntN(2*int(size)))
				for j := last + 1; j <= last+gap; j++ {
					ref.forgetBelow(j)
					ref.ring[j%size] = ""
				}
				last += gap + 1
				p := pool[rng.IntN(len(pool))]
				if _, ok := ref.recent[identityOf(p.id, p.key)]; ok {
					p = ident{id: EntryID{0xff, byte(step), byte(step >> 8)}} // not in the pool
				}
				w.remember(last, p.id, p.key)
				ref.remember(last, p.id, p.key)
			case op < 30 && last > 0:
				last++
				w.rememberContinued(last)
				ref.rememberContinued(last)
			default:
				p := pool[rng.IntN(len(pool))]
				if _, ok := ref.recent[identityOf(p.id, p.key)]; ok {
					continue // applyLocked gives a remembered identity no index
				}
				last++
				w.remember(last, p.id, p.key)
				ref.remember(last, p.id, p.key)
			}
			p := pool[rng.IntN(len(pool))]
			got, ok := w.lookup(p.id, p.key)
			want, wok := ref.recent[identityOf(p.id, p.key)]
			if got != want || ok != wok {
				t.Fatalf("run %d (window %d) step %d: lookup %q = %+v %v, want %+v %v", run, size, step, p.key, got, ok, want, wok)
			}
			if step%50 != 0 && step != 2999 {
				continue
			}
			if n := w.identities(); n != len(ref.recent) {
				t.Fatalf("run %d step %d: %d identities, want %d", run, step, n, len(ref.recent))
			}
			for i := last; i > 0 && i+size > last; i-- {
				got, ok := w.record(i)
				want, wok := ref.record(i)
				if !bytes.Equal(got, want) || ok != wok {
					t.Fatalf("run %d step %d: record %d = %x %v, want %x %v", run, step, i, got, ok, want, wok)
				}
			}
		}
		if w.keys.end-w.keys.start > uint64(size)*(maxKeyBytes+4) {
			t.Fatalf("run %d: the key ring holds %d bytes for a window of %d", run, w.keys.end-w.keys.start, size)
		}
	}
}

// TestKeyRingKeepsKeysWhole adds and releases keys of every length
// through several growths and wraps: each key reads back whole and as
// added, and the buffer stays a power of two no larger than twice what
// it must hold (the live keys, and a key's worth of padding before the
// end of the buffer).
func TestKeyRingKeepsKeysWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(uint64(testSeed(t)), 1))
	var r keyRing
	type held struct {
		off uint64
		key string
	}
	var live []held
	bytesLive, most := 0, 0
	for step := range 20000 {
		if len(live) > 0 && rng.IntN(100) < 45+step/1000 { // the window fills, then drains
			bytesLive -= len(live[0].key)
			r.release(live[0].off + uint64(len(live[0].key)))
			live = live[1:]
		} else {
			k := fmt.Sprintf("%d:%s", step, strings.Repeat("x", rng.IntN(maxKeyBytes)))
			live = append(live, held{r.add(k), k})
			bytesLive += len(k)
			most = max(most, bytesLive)
		}
		if step%97 == 0 {
			for _, h := range live {
				if got := string(r.get(h.off, len(h.key))); got != h.key {
					t.Fatalf("step %d: key at %d reads %q, want %q", step, h.off, got, h.key)
				}
			}
		}
	}
	c := len(r.buf)
	if c&(c-1) != 0 || c > max(4096, 2*(most+2*(maxKeyBytes+16))) {
		t.Fatalf("buffer of %d bytes for at most %d live", c, most)
	}
}

// TestWatchDedupKeys: the watcher hears the key buffer's size at once
// and again each time keys make it grow, and only then.
func TestWatchDedupKeys(t *testing.T) {
	n, err := NewNode(Config{ID: 1, DataDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var mu sync.Mutex
	var sizes []int
	n.learner.watchDedupKeys(func(b int) {
		mu.Lock()
		sizes = append(sizes, b)
		mu.Unlock()
	})
	for s := 1; s <= 100; s++ {
		var id EntryID
		copy(id[:], fmt.Sprintf("watch-%d", s))
		e := Entry{ID: id, Key: fmt.Sprintf("%0100d", s), Data: []byte(`1`)}
		n.learner.chosen(SlotValue{Slot: Slot(s), Value: Value{Entries: []Entry{e}}})
	}
	waitFor(t, 5*time.Second, "100 keyed entries applied", func() bool { _, last := n.learner.Bounds(); return last == 100 })
	mu.Lock()
	defer mu.Unlock()
	if want := []int{0, 4096, 8192, 16384}; !slices.Equal(sizes, want) { // 100 keys of 100 bytes
		t.Fatalf("key buffer sizes heard %v, want %v", sizes, want)
	}
}
