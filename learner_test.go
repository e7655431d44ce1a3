package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc64"
	"math/rand"
	"path/filepath"
	"testing"
	"time"
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

// A batch's later entries are stored in the short form and read back as
// written; records in the forms of older builds (a continued record in
// full, a record without a sum) still decode; a short record that says
// it is its slot's first, or runs out, is refused.
func TestLearnerRecordForms(t *testing.T) {
	first := learnerRecord{Slot: 300, Pos: 0, N: 1000, Time: 1_700_000_000_000_000_000, Sum: 0xfeedface, HasSum: true, ID: EntryID{9}, Key: "k", Data: []byte(`{"a":1}`)}
	later := learnerRecord{Slot: 300, Pos: 999, N: 1000, Sum: 0xdeadbeef, HasSum: true, Continued: true, Data: []byte(`[2]`)}
	for _, want := range []learnerRecord{first, later} {
		b := want.appendTo(nil)
		got, err := decodeLearnerRecord(b)
		if err != nil {
			t.Fatalf("decode %x: %v", b, err)
		}
		if got.Slot != want.Slot || got.Pos != want.Pos || got.N != want.N || got.Time != want.Time || got.Sum != want.Sum ||
			got.HasSum != want.HasSum || got.Continued != want.Continued || got.ID != want.ID || got.Key != want.Key || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("round trip of %+v: %+v", want, got)
		}
	}
	full, short := later, later
	full.Time, full.Continued = first.Time, false
	if d := len(full.appendFields([]byte{0}, true)) - len(short.appendTo(nil)); d != 25 {
		t.Errorf("the short form saves %d bytes, want 25 (time, id, key length, less the tag)", d)
	}
	got, err := decodeLearnerRecord(full.appendFields([]byte{0}, true)) // as builds before the short form wrote it
	if err != nil || got.Continued || got.Time != first.Time || got.ID != (EntryID{}) || !bytes.Equal(got.Data, later.Data) || got.Sum != later.Sum {
		t.Fatalf("a continued record in full: %+v, %v", got, err)
	}
	got, err = decodeLearnerRecord(appendUnsummed(first))
	if err != nil || got.HasSum || got.ID != first.ID || got.Key != first.Key || got.Time != first.Time || !bytes.Equal(got.Data, first.Data) {
		t.Fatalf("a record without a sum: %+v, %v", got, err)
	}
	bad := later
	bad.Pos = 0
	if _, err := decodeLearnerRecord(bad.appendTo(nil)); err == nil {
		t.Error("a short record at position 0 decoded")
	}
	b := later.appendTo(nil)
	if _, err := decodeLearnerRecord(b[:2+2+2+2+4]); err == nil { // cut inside the sum
		t.Error("a short record cut inside its sum decoded")
	}
}

// Retention by age reads a batch's later entries' time from their slot's
// first record, so it cuts a log of batches where it cuts one of singles.
// (The young slots are the larger part of the log, so that its binary
// search looks at short records among them, which alone carry no time.)
func TestRetentionByAgeOverBatches(t *testing.T) {
	n, err := NewNode(Config{ID: 1, DataDir: t.TempDir(), DedupWindow: 4, RetainAge: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	batch := func(id byte, values int) Value {
		e := Entry{ID: EntryID{id}, Data: []byte(`0`)}
		for k := 1; k < values; k++ {
			e.More = append(e.More, []byte(fmt.Sprint(k)))
		}
		return Value{Entries: []Entry{e}}
	}
	n.learner.chosen(SlotValue{Slot: 1, Value: batch(1, 5)}, SlotValue{Slot: 2, Value: batch(2, 5)})
	old := time.Now()
	waitFor(t, 5*time.Second, "the entries to age", func() bool { return time.Since(old) > 60*time.Millisecond })
	n.learner.chosen(SlotValue{Slot: 3, Value: batch(3, 20)}, SlotValue{Slot: 4, Value: batch(4, 20)})
	rec, err := n.learner.record(13)
	if err != nil || !rec.Continued || rec.Time != 0 {
		t.Fatalf("record 13 (third of slot 3): %+v, %v: want the short form", rec, err)
	}
	if at, err := n.learner.appliedAt(13); err != nil || at < old.UnixNano() {
		t.Fatalf("applied at %d, %v: want slot 3's time, after %d", at, err, old.UnixNano())
	}
	if err := n.learner.retain(); err != nil {
		t.Fatal(err)
	}
	if first, _ := n.learner.Bounds(); first != 11 {
		t.Fatalf("first = %d after retention by age, want 11 (slot 3's first entry)", first)
	}
}
