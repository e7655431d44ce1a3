package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc64"
	"math/rand"
	"path/filepath"
	"testing"
)

// newIdleNode opens a node that runs no loops, to drive its roles by hand.
func newIdleNode(t *testing.T, dir string) *Node {
	t.Helper()
	n, err := NewNode(Config{ID: 1, Members: []NodeID{1, 2, 3}, DataDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func entryValue(data ...string) Value {
	var v Value
	for i, d := range data {
		var id EntryID
		copy(id[:], fmt.Sprintf("e-%s-%d", d, i))
		v.Entries = append(v.Entries, Entry{ID: id, Data: json.RawMessage(d)})
	}
	return v
}

// Regression: a learn from an old leader with a low commit must not let
// the learner take that leader's accepted values for slots that only a
// newer leader declared chosen (a value accepted under the old ballot in
// such a slot may never have been chosen).
func TestLearnerUsesOnlyTheDeclaringBallotsCommit(t *testing.T) {
	n := newIdleNode(t, t.TempDir())
	old, newer := Ballot{Round: 1, Node: 2}, Ballot{Round: 2, Node: 3}
	if _, err := n.acceptor.Accept(old, []SlotValue{{Slot: 1, Value: entryValue(`"a"`)}, {Slot: 2, Value: entryValue(`"maybe-not-chosen"`)}}); err != nil {
		t.Fatal(err)
	}
	n.learner.noteCommit(newer, 2, 3) // slots 1-2 chosen, values unknown here
	if got := n.learner.Applied(); got != 0 {
		t.Fatalf("applied %d with no value accepted under %s", got, newer)
	}
	n.learner.noteCommit(old, 1, 2) // the old leader only vouches for slot 1
	if got := n.learner.Applied(); got != 1 {
		t.Fatalf("applied through slot %d, want 1", got)
	}
	if _, last := n.learner.Bounds(); last != 1 {
		t.Fatalf("last index %d, want 1", last)
	}
}

// A slot whose entries were all applied before is a no-op for indices,
// and dedup survives a restart (it is rebuilt from the log).
func TestLearnerDedupAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	n := newIdleNode(t, dir)
	a := entryValue(`"a"`, `"b"`)
	n.learner.chosen(SlotValue{Slot: 1, Value: a})
	n.learner.chosen(SlotValue{Slot: 2, Value: a}) // resent after a leader change
	if _, last := n.learner.Bounds(); last != 2 {
		t.Fatalf("last = %d, want 2", last)
	}
	n.Close()
	n2, err := NewNode(Config{ID: 1, Members: []NodeID{1, 2, 3}, DataDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	// Slot 2 produced no record, so it is learned again after a restart.
	if got := n2.learner.Applied(); got != 1 {
		t.Fatalf("applied after restart = %d, want 1", got)
	}
	n2.learner.chosen(SlotValue{Slot: 2, Value: a}, SlotValue{Slot: 3, Value: a}, SlotValue{Slot: 4, Value: entryValue(`"c"`)})
	if _, last := n2.learner.Bounds(); last != 3 {
		t.Fatalf("after restart last = %d, want 3", last)
	}
	if got := n2.learner.Applied(); got != 4 {
		t.Fatalf("applied %d, want 4", got)
	}
}

// readChosen serves whole slots; slots it skips in its range were no-ops.
func TestLearnerReadChosen(t *testing.T) {
	n := newIdleNode(t, filepath.Join(t.TempDir(), "n"))
	n.learner.chosen(
		SlotValue{Slot: 1, Value: entryValue(`1`, `2`)},
		SlotValue{Slot: 2}, // no-op
		SlotValue{Slot: 3, Value: entryValue(`3`)},
	)
	resp, err := n.learner.readChosen(1, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Through != 3 || len(resp.Values) != 2 || resp.Values[0].Slot != 1 || len(resp.Values[0].Value.Entries) != 2 || resp.Values[1].Slot != 3 {
		t.Fatalf("readChosen(1) = %+v", resp)
	}
	resp, err = n.learner.readChosen(2, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Through != 3 || len(resp.Values) != 1 || resp.Values[0].Slot != 3 {
		t.Fatalf("readChosen(2) = %+v", resp)
	}
	resp, err = n.learner.readChosen(1, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Through != 2 || len(resp.Values) != 1 {
		t.Fatalf("readChosen(1, max 1) = %+v, want slot 1 only, through 2", resp)
	}
	resp, _ = n.learner.readChosen(4, 0, 10)
	if resp.Through != 3 || len(resp.Values) != 0 {
		t.Fatalf("readChosen past the end = %+v", resp)
	}
}

// L3: a slot's batch cut short by a crash is dropped whole on open, and
// the slot is learned again.
func TestLearnerDropsPartialBatch(t *testing.T) {
	dir := t.TempDir()
	n := newIdleNode(t, dir)
	n.learner.chosen(SlotValue{Slot: 1, Value: entryValue(`1`, `2`, `3`)}, SlotValue{Slot: 2, Value: entryValue(`4`, `5`)})
	n.Close()
	j, err := openJournal(filepath.Join(dir, "log"), journalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.TruncateBack(4); err != nil { // slot 2 lost its last record
		t.Fatal(err)
	}
	j.Close()
	n2 := newIdleNode(t, dir)
	if _, last := n2.learner.Bounds(); last != 3 {
		t.Fatalf("last = %d after a torn batch, want 3", last)
	}
	if got := n2.learner.Applied(); got != 1 {
		t.Fatalf("applied = %d, want 1", got)
	}
	n2.learner.chosen(SlotValue{Slot: 2, Value: entryValue(`4`, `5`)})
	if e, err := n2.learner.Get(5); err != nil || string(e.Data) != "5" {
		t.Fatalf("index 5 = %v %v", e, err)
	}
}

// Regression (found by TestIdempotentConcurrentDuplicates): an append whose
// key another append got chosen with first must learn that index even when
// its own, duplicate, entry never reaches this node: slots learned from a
// peer's client log carry no duplicates.
func TestLearnerWaiterLearnsKeyFromOtherEntry(t *testing.T) {
	n := newIdleNode(t, t.TempDir())
	mine := Entry{ID: EntryID{1}, Key: "k", Data: []byte(`"x"`)}
	theirs := Entry{ID: EntryID{2}, Key: "k", Data: []byte(`"x"`)}
	ch := n.learner.await(mine)
	n.learner.chosen(SlotValue{Slot: 1, Value: Value{Entries: []Entry{theirs}}})
	select {
	case a := <-ch:
		if a.Index != 1 || !a.Duplicate {
			t.Fatalf("waiter got %+v, want index 1, duplicate", a)
		}
	default:
		t.Fatal("waiter not told that its key got index 1")
	}
	// Registering after the fact answers at once.
	late := n.learner.await(Entry{ID: EntryID{3}, Key: "k"})
	select {
	case a := <-late:
		if a.Index != 1 || !a.Duplicate {
			t.Fatalf("late waiter got %+v", a)
		}
	default:
		t.Fatal("late waiter not answered at once")
	}
}

// Regression (found by TestCompactionWithLaggingNode): compaction must
// leave a durable record at or past the cut, or a crash can leave an empty
// log whose first index no longer maps to a slot.
func TestCompactionKeepsSlotMappingThroughACrash(t *testing.T) {
	dir := t.TempDir()
	n, err := NewNode(Config{ID: 1, DataDir: dir, DedupWindow: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for s := 1; s <= 10; s++ {
		n.learner.chosen(SlotValue{Slot: Slot(s), Value: entryValue(fmt.Sprint(s))})
	}
	if first, err := n.learner.compactBefore(9); err != nil || first != 9 {
		t.Fatalf("compactBefore(9) = %d, %v", first, err)
	}
	if err := n.crash(); err != nil { // drops whatever was not synced
		t.Fatal(err)
	}
	n2 := newIdleNode(t, dir)
	first, last := n2.learner.Bounds()
	if last < first {
		t.Fatalf("log empty after the crash (first %d, last %d): the slot mapping is lost", first, last)
	}
	rec, err := n2.learner.record(last)
	if err != nil || n2.learner.Applied() != rec.Slot {
		t.Fatalf("applied %d, last record's slot %d (%v)", n2.learner.Applied(), rec.Slot, err)
	}
}

// TestEntryHashIsTheCRCOfItsParts: an entry's hash is the same however
// hash feeds its bytes to the CRC (whole, or part by part for a large
// entry), and the same as this reference, which feeds them part by part
// as older builds did: the sums on disk and those of peers on older
// builds must agree.
func TestEntryHashIsTheCRCOfItsParts(t *testing.T) {
	reference := func(r learnerRecord, i Index) uint64 {
		var hdr [32]byte
		binary.LittleEndian.PutUint64(hdr[0:], uint64(i))
		binary.LittleEndian.PutUint64(hdr[8:], uint64(r.Slot))
		binary.LittleEndian.PutUint64(hdr[16:], uint64(r.Pos)<<32|uint64(r.N))
		binary.LittleEndian.PutUint64(hdr[24:], uint64(len(r.Key)))
		h := crc64.Update(0, entryHashTable, hdr[:])
		h = crc64.Update(h, entryHashTable, r.ID[:])
		h = crc64.Update(h, entryHashTable, []byte(r.Key))
		h = crc64.Update(h, entryHashTable, r.Data)
		return spread(h)
	}
	seed := testSeed(t)
	rng := rand.New(rand.NewSource(seed))
	for k := 0; k < 2000; k++ {
		r := learnerRecord{Slot: Slot(rng.Uint64() >> rng.Intn(64)), Pos: rng.Intn(1 << 16), N: 1 + rng.Intn(1<<16)}
		rng.Read(r.ID[:])
		key := make([]byte, rng.Intn(300)*rng.Intn(2)) // no key half the time; long keys cross the stack buffer
		rng.Read(key)
		r.Key = string(key)
		r.Data = make([]byte, rng.Intn(600))
		rng.Read(r.Data)
		i := Index(rng.Uint64() >> rng.Intn(64))
		if got, want := r.hash(i), reference(r, i); got != want {
			t.Fatalf("record %d (key %d bytes, data %d): hash %#x, want %#x", k, len(r.Key), len(r.Data), got, want)
		}
	}
	// And a fixed one, should the reference itself be changed.
	r := learnerRecord{Slot: 7, Pos: 1, N: 3, ID: EntryID{1, 2, 3}, Key: "k", Data: []byte(`{"a":1}`)}
	if got := r.hash(42); got != 0x47c88658780336e8 {
		t.Errorf("hash of the fixed record: %#x", got)
	}
}
