package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

// randomSlotValues makes n slot values with random batches: no-ops,
// entries with and without keys, data of varied size.
func randomSlotValues(rng *rand.Rand, n int) []SlotValue {
	var vals []SlotValue
	for i := 0; i < n; i++ {
		sv := SlotValue{Slot: Slot(rng.Uint64() >> rng.Intn(64)), Ballot: Ballot{Round: uint64(rng.Intn(1000)), Node: NodeID(rng.Intn(7) + 1)}}
		for k := rng.Intn(5); k > 0; k-- {
			var e Entry
			rng.Read(e.ID[:])
			if rng.Intn(3) == 0 {
				e.Key = strings.Repeat("k", rng.Intn(128)+1)
			}
			e.Data = []byte(`{"v":"` + strings.Repeat("x", rng.Intn(300)) + `"}`)
			if rng.Intn(4) == 0 { // a batch
				for m := rng.Intn(4) + 1; m > 0; m-- {
					e.More = append(e.More, []byte(fmt.Sprint(rng.Intn(1000))))
				}
			}
			sv.Value.Entries = append(sv.Value.Entries, e)
		}
		vals = append(vals, sv)
	}
	return vals
}

func TestCodecRoundTrip(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 200; i++ {
		acc := AcceptReq{From: NodeID(rng.Intn(5) + 1), Ballot: Ballot{Round: rng.Uint64(), Node: NodeID(rng.Uint32())},
			Commit: Slot(rng.Uint64()), Values: randomSlotValues(rng, rng.Intn(4))}
		body, _ := acc.MarshalBinary()
		var gotAcc AcceptReq
		if err := gotAcc.UnmarshalBinary(body); err != nil {
			t.Fatalf("accept %v: %v", acc, err)
		}
		if !reflect.DeepEqual(gotAcc, acc) {
			t.Fatalf("accept round trip:\n got %+v\nwant %+v", gotAcc, acc)
		}

		pr := Promise{OK: rng.Intn(2) == 0, Promised: Ballot{Round: rng.Uint64(), Node: NodeID(rng.Uint32())}, Floor: Slot(rng.Uint64()),
			Accepted: randomSlotValues(rng, rng.Intn(4)), Removed: rng.Intn(4) == 0, Commit: Slot(rng.Uint64())}
		body, _ = pr.MarshalBinary()
		var gotPr Promise
		if err := gotPr.UnmarshalBinary(body); err != nil {
			t.Fatalf("promise %v: %v", pr, err)
		}
		if !reflect.DeepEqual(gotPr, pr) {
			t.Fatalf("promise round trip:\n got %+v\nwant %+v", gotPr, pr)
		}
		if js, _ := json.Marshal(pr); gotPr.UnmarshalBinary(js) != nil || !reflect.DeepEqual(gotPr, pr) {
			t.Fatalf("promise from JSON (older builds): %+v", gotPr)
		}

		fwd := ForwardReq{From: NodeID(rng.Intn(5) + 1)}
		for _, sv := range randomSlotValues(rng, 2) {
			fwd.Entries = append(fwd.Entries, sv.Value.Entries...)
		}
		body, _ = fwd.MarshalBinary()
		var gotFwd ForwardReq
		if err := gotFwd.UnmarshalBinary(body); err != nil {
			t.Fatalf("forward: %v", err)
		}
		if !reflect.DeepEqual(gotFwd, fwd) {
			t.Fatalf("forward round trip:\n got %+v\nwant %+v", gotFwd, fwd)
		}

		cu := CatchupResp{Through: Slot(rng.Uint64()), Compacted: rng.Intn(2) == 0, First: Index(rng.Intn(1000)),
			FirstSlot: Slot(rng.Intn(1000)), Values: randomSlotValues(rng, rng.Intn(4))}
		if rng.Intn(2) == 0 {
			cu.Cluster = newClusterID()
			for k := rng.Intn(3) + 1; k > 0; k-- {
				cu.Memberships = append(cu.Memberships, newMembership([]member{{ID: 1, URL: "http://a", Voter: true}, {ID: NodeID(2 + rng.Intn(5)), URL: "http://b"}},
					Slot(rng.Intn(100)), []NodeID{9}))
			}
		}
		if cu.Compacted && rng.Intn(2) == 0 { // a prefix with the dedup state below it
			cu.DedupFrom = cu.First
			for k := rng.Intn(5) + 1; k > 0 && cu.DedupFrom > 1; k-- {
				var id EntryID
				rng.Read(id[:])
				cu.Dedup = append([][]byte{dedupRecord(id, fmt.Sprint("key", k))}, cu.Dedup...)
				cu.DedupFrom--
			}
		}
		body, _ = cu.MarshalBinary()
		var gotCu CatchupResp
		if err := gotCu.UnmarshalBinary(body); err != nil {
			t.Fatalf("catch-up reply: %v", err)
		}
		if !reflect.DeepEqual(gotCu, cu) {
			t.Fatalf("catch-up reply round trip:\n got %+v\nwant %+v", gotCu, cu)
		}
		js, _ := json.Marshal(cu)
		gotCu = CatchupResp{}
		if err := gotCu.UnmarshalBinary(js); err != nil || !reflect.DeepEqual(gotCu, cu) {
			t.Fatalf("catch-up reply from JSON: %v\n got %+v\nwant %+v", err, gotCu, cu)
		}

		rec := acceptorRecord{Kind: string("pac"[rng.Intn(3)]), Promised: Ballot{Round: rng.Uint64(), Node: 3},
			Floor: Slot(rng.Intn(100)), Values: randomSlotValues(rng, rng.Intn(4))}
		gotRec, err := decodeAcceptorRecord(rec.encode())
		if err != nil {
			t.Fatalf("record: %v", err)
		}
		if !reflect.DeepEqual(gotRec, rec) {
			t.Fatalf("record round trip:\n got %+v\nwant %+v", gotRec, rec)
		}
	}
}

// TestCodecReadsJSON: the decoders take the JSON form too (journals
// written before the binary form, peers that send JSON).
func TestCodecReadsJSON(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	acc := AcceptReq{From: 2, Ballot: Ballot{Round: 4, Node: 2}, Commit: 9, Values: randomSlotValues(rng, 3)}
	body, _ := json.Marshal(acc)
	var got AcceptReq
	if err := got.UnmarshalBinary(body); err != nil || !reflect.DeepEqual(got, acc) {
		t.Fatalf("accept from JSON: %v\n got %+v\nwant %+v", err, got, acc)
	}
	rec := acceptorRecord{Kind: "a", Promised: Ballot{Round: 4, Node: 2}, Values: randomSlotValues(rng, 2)}
	body, _ = json.Marshal(rec)
	gotRec, err := decodeAcceptorRecord(body)
	if err != nil || !reflect.DeepEqual(gotRec, rec) {
		t.Fatalf("record from JSON: %v\n got %+v\nwant %+v", err, gotRec, rec)
	}
	if peerContentType(body) != "application/json" {
		t.Errorf("content type of JSON: %s", peerContentType(body))
	}
	bin, _ := acc.MarshalBinary()
	if peerContentType(bin) != "application/octet-stream" {
		t.Errorf("content type of binary: %s", peerContentType(bin))
	}
}

// TestCodecRejectsBadInput: every cut of a valid encoding, a wrong tag,
// trailing bytes, an unknown record kind and an impossible count are
// errors, never a panic or a partial value taken for whole.
func TestCodecRejectsBadInput(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	acc := AcceptReq{From: 1, Ballot: Ballot{Round: 3, Node: 1}, Commit: 7, Values: randomSlotValues(rng, 3)}
	body, _ := acc.MarshalBinary()
	for n := 0; n < len(body); n++ {
		var got AcceptReq
		if err := got.UnmarshalBinary(body[:n]); err == nil {
			t.Fatalf("accept cut to %d of %d bytes decoded without error", n, len(body))
		}
	}
	rec := acceptorRecord{Kind: "c", Promised: Ballot{Round: 3, Node: 1}, Floor: 5, Values: randomSlotValues(rng, 2)}
	rb := rec.encode()
	for n := 0; n < len(rb); n++ {
		if _, err := decodeAcceptorRecord(rb[:n]); err == nil {
			t.Fatalf("record cut to %d of %d bytes decoded without error", n, len(rb))
		}
	}
	bad := map[string][]byte{
		"trailing byte":    append(append([]byte(nil), body...), 0),
		"record as accept": rb,
		"huge count":       {tagAccept, 1, 3, 1, 7, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"node too large":   {tagAccept, 0xff, 0xff, 0xff, 0xff, 0x7f, 3, 1, 7, 0},
	}
	for name, b := range bad {
		var got AcceptReq
		if err := got.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if _, err := decodeAcceptorRecord([]byte{tagRecord, 'x', 1, 1, 0, 0}); err == nil {
		t.Error("record kind 'x' decoded without error")
	}
	var fwd ForwardReq
	if err := fwd.UnmarshalBinary([]byte{tagForward, 1, 2, 0}); err == nil {
		t.Error("forward claiming 2 entries in 1 byte decoded without error")
	}
}

// TestCodecSharesNoWritableMemory: appending to decoded data must not
// write into the input (the acceptor keeps decoded values).
func TestCodecSharesNoWritableMemory(t *testing.T) {
	v := Value{Entries: []Entry{{Data: []byte(`"a"`)}, {Data: []byte(`"b"`)}}}
	body, _ := AcceptReq{From: 1, Values: []SlotValue{{Slot: 1, Value: v}}}.MarshalBinary()
	orig := bytes.Clone(body)
	var got AcceptReq
	if err := got.UnmarshalBinary(body); err != nil {
		t.Fatal(err)
	}
	_ = append(got.Values[0].Value.Entries[0].Data, "zzzz"...)
	if !bytes.Equal(body, orig) {
		t.Fatal("appending to decoded data changed the input")
	}
}

func FuzzDecodeAccept(f *testing.F) {
	rng := rand.New(rand.NewSource(3))
	good, _ := AcceptReq{From: 1, Ballot: Ballot{Round: 2, Node: 1}, Commit: 1, Values: randomSlotValues(rng, 2)}.MarshalBinary()
	f.Add(good)
	f.Add([]byte{tagAccept})
	f.Add([]byte(`{"from":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m AcceptReq
		if err := m.UnmarshalBinary(b); err != nil || isJSON(b) {
			return
		}
		again, _ := m.MarshalBinary()
		var m2 AcceptReq
		if err := m2.UnmarshalBinary(again); err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoding a decoded accept: %v\n%+v\n%+v", err, m, m2)
		}
	})
}

// TestAcceptorReplaysJSONJournal: an acceptor journal written by a build
// that stored JSON records, then continued in the binary form, replays
// into the same state as the records describe.
func TestAcceptorReplaysJSONJournal(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(4))
	b1, b2 := Ballot{Round: 1, Node: 1}, Ballot{Round: 2, Node: 3}
	vals1 := []SlotValue{{Slot: 1, Ballot: b1, Value: randomSlotValues(rng, 1)[0].Value}, {Slot: 2, Ballot: b1}}
	vals2 := []SlotValue{{Slot: 2, Ballot: b2, Value: randomSlotValues(rng, 1)[0].Value}}
	j, err := openJournal(dir, journalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var old [][]byte
	for _, rec := range []acceptorRecord{{Kind: "p", Promised: b1}, {Kind: "a", Promised: b1, Values: vals1}} {
		body, _ := json.Marshal(rec)
		old = append(old, body)
	}
	newer := (&acceptorRecord{Kind: "a", Promised: b2, Values: vals2}).encode()
	if _, err := j.Append(append(old, newer)...); err != nil {
		t.Fatal(err)
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.Close()

	a, err := openAcceptor(dir, nil, nil)
	if err != nil {
		t.Fatalf("open a journal with JSON records: %v", err)
	}
	defer a.close()
	if got := a.Promised(); got != b2 {
		t.Errorf("promised %v, want %v", got, b2)
	}
	if v, ok := a.valueExactly(1, b1); !ok || !reflect.DeepEqual(v, vals1[0].Value) {
		t.Errorf("slot 1 under %v: %+v %v, want %+v", b1, v, ok, vals1[0].Value)
	}
	if v, ok := a.valueExactly(2, b2); !ok || !reflect.DeepEqual(v, vals2[0].Value) {
		t.Errorf("slot 2 under %v: %+v %v, want %+v", b2, v, ok, vals2[0].Value)
	}
}

// A message or record holding a batch is tagged in lower case (the batch
// layout); one without keeps the layout builds before batches read.
func TestCodecBatchTags(t *testing.T) {
	single := Entry{ID: EntryID{1}, Key: "k", Data: []byte(`1`)}
	batch := Entry{ID: EntryID{2}, Data: []byte(`1`), More: [][]byte{[]byte(`2`), []byte(`"three"`)}}
	for _, tc := range []struct {
		es   []Entry
		want byte
	}{{[]Entry{single}, 'A'}, {[]Entry{single, batch}, 'a'}} {
		vals := []SlotValue{{Slot: 3, Ballot: Ballot{Round: 1, Node: 1}, Value: Value{Entries: tc.es}}}
		acc, _ := AcceptReq{From: 1, Values: vals}.MarshalBinary()
		fwd, _ := ForwardReq{From: 1, Entries: tc.es}.MarshalBinary()
		cu, _ := CatchupResp{Values: vals}.MarshalBinary()
		rec := (&acceptorRecord{Kind: "a", Values: vals}).encode()
		pr, _ := Promise{OK: true, Accepted: vals}.MarshalBinary()
		for _, got := range [][]byte{acc, fwd, cu, rec, pr} {
			if (got[0] >= 'a') != (tc.want >= 'a') {
				t.Fatalf("%d entries: tag %q, want the case of %q", len(tc.es), got[0], tc.want)
			}
		}
		var back AcceptReq
		if err := back.UnmarshalBinary(acc); err != nil || !reflect.DeepEqual(back.Values, vals) {
			t.Fatalf("accept round trip: %+v %v", back.Values, err)
		}
		if r, err := decodeAcceptorRecord(rec); err != nil || !reflect.DeepEqual(r.Values, vals) {
			t.Fatalf("record round trip: %+v %v", r.Values, err)
		}
	}
	// The JSON form (promises, old journals) carries More too.
	b, _ := json.Marshal(batch)
	var back Entry
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, batch) {
		t.Fatalf("JSON round trip: %+v %v", back, err)
	}
	// A batch-layout entry must hold a value.
	bad := []byte{batchTag(tagForward), 1, 1}
	bad = append(bad, make([]byte, 16)...)
	bad = append(bad, 0, 0, 1, '1') // no key, zero values, then what would be a value
	var fwd ForwardReq
	if err := fwd.UnmarshalBinary(bad); err == nil {
		t.Fatalf("an entry with no values decoded: %+v", fwd)
	}
}
