package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"
)

// Tests of the acceptor: the pure transitions of acceptorState (invariants
// A1, A2, A4 of acceptor.go), the records they return, and the durable
// Acceptor that journals those records (A3).

func accBal(round uint64, node NodeID) Ballot { return Ballot{Round: round, Node: node} }

// val is a one-entry value whose data is the JSON string s.
func accVal(s string) Value {
	return Value{Entries: []Entry{{Data: json.RawMessage(fmt.Sprintf("%q", s))}}}
}

// sv is slot's value s accepted under b.
func accSV(slot Slot, b Ballot, s string) SlotValue {
	return SlotValue{Slot: slot, Ballot: b, Value: accVal(s)}
}

// prop is a proposal for slot as a leader sends it (the acceptor stamps
// the ballot of the request).
func accProp(slot Slot, s string) SlotValue { return SlotValue{Slot: slot, Value: accVal(s)} }

// acceptorOp is one call of a transition.
type acceptorOp struct {
	kind   string // "prepare", "accept" or "compact"
	ballot Ballot
	slot   Slot        // prepare: the first slot asked about; compact: the floor
	vals   []SlotValue // accept only
}

func (op acceptorOp) String() string {
	switch op.kind {
	case "prepare":
		return fmt.Sprintf("prepare(%s, from %d)", op.ballot, op.slot)
	case "accept":
		return fmt.Sprintf("accept(%s, %d slots)", op.ballot, len(op.vals))
	default:
		return fmt.Sprintf("compact(%d)", op.slot)
	}
}

// apply runs op on s and returns its reply (a Promise, an Accepted, or nil
// for compact) and its record.
func (op acceptorOp) apply(s *acceptorState) (any, *acceptorRecord) {
	switch op.kind {
	case "prepare":
		return s.prepare(op.ballot, op.slot)
	case "accept":
		return s.accept(op.ballot, op.vals)
	case "compact":
		return nil, s.compact(op.slot, Index(2*op.slot)) // two entries a slot
	}
	panic("unknown op " + op.kind)
}

func prepareOp(b Ballot, from Slot) acceptorOp {
	return acceptorOp{kind: "prepare", ballot: b, slot: from}
}

func acceptOp(b Ballot, vals ...SlotValue) acceptorOp {
	return acceptorOp{kind: "accept", ballot: b, vals: vals}
}

func compactOp(floor Slot) acceptorOp { return acceptorOp{kind: "compact", slot: floor} }

// idx is a pointer to i, for a checkpoint's floor index.
func idx(i Index) *Index { return &i }

// acceptorStep is an op with the reply and the record it must give; a nil
// record means nothing is to be journaled.
type acceptorStep struct {
	op    acceptorOp
	reply any
	rec   *acceptorRecord
}

func acceptedSet(slots ...SlotValue) map[Slot]SlotValue {
	m := make(map[Slot]SlotValue, len(slots))
	for _, v := range slots {
		m[v.Slot] = v
	}
	return m
}

func TestAcceptorStateTransitions(t *testing.T) {
	t.Parallel()
	b11, b12, b21, b22, b31 := accBal(1, 1), accBal(1, 2), accBal(2, 1), accBal(2, 2), accBal(3, 1)
	tests := []struct {
		name  string
		steps []acceptorStep
		want  acceptorState // the state after every step
	}{
		{
			name: "first prepare is promised and journaled",
			steps: []acceptorStep{
				{prepareOp(b11, 1), Promise{OK: true, Promised: b11}, &acceptorRecord{Kind: "p", Promised: b11}},
			},
			want: acceptorState{promised: b11, accepted: acceptedSet()},
		},
		{
			name: "higher prepares raise the promise, ordered by round then node",
			steps: []acceptorStep{
				{prepareOp(b11, 1), Promise{OK: true, Promised: b11}, &acceptorRecord{Kind: "p", Promised: b11}},
				{prepareOp(b12, 1), Promise{OK: true, Promised: b12}, &acceptorRecord{Kind: "p", Promised: b12}},
				{prepareOp(b21, 1), Promise{OK: true, Promised: b21}, &acceptorRecord{Kind: "p", Promised: b21}},
			},
			want: acceptorState{promised: b21, accepted: acceptedSet()},
		},
		{
			name: "prepare below the promise is refused with the current promise",
			steps: []acceptorStep{
				{prepareOp(b22, 1), Promise{OK: true, Promised: b22}, &acceptorRecord{Kind: "p", Promised: b22}},
				{prepareOp(b21, 1), Promise{OK: false, Promised: b22}, nil},
				{prepareOp(b12, 1), Promise{OK: false, Promised: b22}, nil},
				{prepareOp(Ballot{}, 1), Promise{OK: false, Promised: b22}, nil},
			},
			want: acceptorState{promised: b22, accepted: acceptedSet()},
		},
		{
			name: "refused prepare does not report accepted values",
			steps: []acceptorStep{
				{acceptOp(b21, accProp(1, "a")), Accepted{OK: true, Promised: b21}, &acceptorRecord{Kind: "a", Promised: b21, Values: []SlotValue{accSV(1, b21, "a")}}},
				{prepareOp(b11, 1), Promise{OK: false, Promised: b21}, nil},
			},
			want: acceptorState{promised: b21, accepted: acceptedSet(accSV(1, b21, "a"))},
		},
		{
			name: "repeated prepare is answered again without a record",
			steps: []acceptorStep{
				{prepareOp(b21, 1), Promise{OK: true, Promised: b21}, &acceptorRecord{Kind: "p", Promised: b21}},
				{prepareOp(b21, 1), Promise{OK: true, Promised: b21}, nil},
				{acceptOp(b21, accProp(3, "x")), Accepted{OK: true, Promised: b21}, &acceptorRecord{Kind: "a", Promised: b21, Values: []SlotValue{accSV(3, b21, "x")}}},
				{prepareOp(b21, 1), Promise{OK: true, Promised: b21, Accepted: []SlotValue{accSV(3, b21, "x")}}, nil},
			},
			want: acceptorState{promised: b21, accepted: acceptedSet(accSV(3, b21, "x"))},
		},
		{
			name: "accept at the promise is stored under the request's ballot",
			steps: []acceptorStep{
				{prepareOp(b21, 1), Promise{OK: true, Promised: b21}, &acceptorRecord{Kind: "p", Promised: b21}},
				{
					acceptOp(b21, SlotValue{Slot: 1, Ballot: b11, Value: accVal("a")}, accProp(2, "b")),
					Accepted{OK: true, Promised: b21},
					&acceptorRecord{Kind: "a", Promised: b21, Values: []SlotValue{accSV(1, b21, "a"), accSV(2, b21, "b")}},
				},
			},
			want: acceptorState{promised: b21, accepted: acceptedSet(accSV(1, b21, "a"), accSV(2, b21, "b"))},
		},
		{
			name: "accept with no promise yet is taken",
			steps: []acceptorStep{
				{acceptOp(b11, accProp(1, "a")), Accepted{OK: true, Promised: b11}, &acceptorRecord{Kind: "a", Promised: b11, Values: []SlotValue{accSV(1, b11, "a")}}},
			},
			want: acceptorState{promised: b11, accepted: acceptedSet(accSV(1, b11, "a"))},
		},
		{
			name: "accept above the promise raises it",
			steps: []acceptorStep{
				{prepareOp(b11, 1), Promise{OK: true, Promised: b11}, &acceptorRecord{Kind: "p", Promised: b11}},
				{acceptOp(b22, accProp(1, "a")), Accepted{OK: true, Promised: b22}, &acceptorRecord{Kind: "a", Promised: b22, Values: []SlotValue{accSV(1, b22, "a")}}},
				{prepareOp(b21, 1), Promise{OK: false, Promised: b22}, nil},
				{acceptOp(b21, accProp(2, "b")), Accepted{OK: false, Promised: b22}, nil},
				{prepareOp(b22, 1), Promise{OK: true, Promised: b22, Accepted: []SlotValue{accSV(1, b22, "a")}}, nil},
			},
			want: acceptorState{promised: b22, accepted: acceptedSet(accSV(1, b22, "a"))},
		},
		{
			name: "accept below the promise is refused and stores nothing",
			steps: []acceptorStep{
				{prepareOp(b31, 1), Promise{OK: true, Promised: b31}, &acceptorRecord{Kind: "p", Promised: b31}},
				{acceptOp(b22, accProp(1, "a"), accProp(2, "b")), Accepted{OK: false, Promised: b31}, nil},
			},
			want: acceptorState{promised: b31, accepted: acceptedSet()},
		},
		{
			name: "a later ballot's value replaces the earlier one",
			steps: []acceptorStep{
				{acceptOp(b11, accProp(1, "a"), accProp(2, "b")), Accepted{OK: true, Promised: b11}, &acceptorRecord{Kind: "a", Promised: b11, Values: []SlotValue{accSV(1, b11, "a"), accSV(2, b11, "b")}}},
				{acceptOp(b21, accProp(2, "c")), Accepted{OK: true, Promised: b21}, &acceptorRecord{Kind: "a", Promised: b21, Values: []SlotValue{accSV(2, b21, "c")}}},
				{prepareOp(b31, 1), Promise{OK: true, Promised: b31, Accepted: []SlotValue{accSV(1, b11, "a"), accSV(2, b21, "c")}}, &acceptorRecord{Kind: "p", Promised: b31}},
			},
			want: acceptorState{promised: b31, accepted: acceptedSet(accSV(1, b11, "a"), accSV(2, b21, "c"))},
		},
		{
			name: "promise reports every accepted slot from the prepare's slot on, in slot order",
			steps: []acceptorStep{
				{
					acceptOp(b11, accProp(7, "g"), accProp(2, "b"), accProp(5, "e"), accProp(3, "c")),
					Accepted{OK: true, Promised: b11},
					&acceptorRecord{Kind: "a", Promised: b11, Values: []SlotValue{accSV(7, b11, "g"), accSV(2, b11, "b"), accSV(5, b11, "e"), accSV(3, b11, "c")}},
				},
				{acceptOp(b12, accProp(4, "d")), Accepted{OK: true, Promised: b12}, &acceptorRecord{Kind: "a", Promised: b12, Values: []SlotValue{accSV(4, b12, "d")}}},
				{prepareOp(b21, 3), Promise{OK: true, Promised: b21, Accepted: []SlotValue{accSV(3, b11, "c"), accSV(4, b12, "d"), accSV(5, b11, "e"), accSV(7, b11, "g")}}, &acceptorRecord{Kind: "p", Promised: b21}},
				{prepareOp(b21, 0), Promise{OK: true, Promised: b21, Accepted: []SlotValue{accSV(2, b11, "b"), accSV(3, b11, "c"), accSV(4, b12, "d"), accSV(5, b11, "e"), accSV(7, b11, "g")}}, nil},
				{prepareOp(b21, 7), Promise{OK: true, Promised: b21, Accepted: []SlotValue{accSV(7, b11, "g")}}, nil},
				{prepareOp(b21, 8), Promise{OK: true, Promised: b21}, nil},
			},
			want: acceptorState{promised: b21, accepted: acceptedSet(accSV(2, b11, "b"), accSV(3, b11, "c"), accSV(4, b12, "d"), accSV(5, b11, "e"), accSV(7, b11, "g"))},
		},
		{
			name: "slots at or below the floor are acknowledged without being stored",
			steps: []acceptorStep{
				{compactOp(5), nil, &acceptorRecord{Kind: "c", Floor: 5, FloorIndex: idx(10)}},
				{
					acceptOp(b11, accProp(4, "d"), accProp(5, "e"), accProp(6, "f")),
					Accepted{OK: true, Promised: b11},
					&acceptorRecord{Kind: "a", Promised: b11, Values: []SlotValue{accSV(6, b11, "f")}},
				},
				// Nothing to store, but the raised promise must be journaled.
				{acceptOp(b21, accProp(1, "a")), Accepted{OK: true, Promised: b21}, &acceptorRecord{Kind: "a", Promised: b21}},
				{prepareOp(b31, 1), Promise{OK: true, Promised: b31, Floor: 5, Accepted: []SlotValue{accSV(6, b11, "f")}}, &acceptorRecord{Kind: "p", Promised: b31}},
				{prepareOp(b21, 1), Promise{OK: false, Promised: b31, Floor: 5}, nil},
			},
			want: acceptorState{promised: b31, floor: 5, floorIndex: 10, indexKnown: true, accepted: acceptedSet(accSV(6, b11, "f"))},
		},
		{
			name: "compact drops slots at or below the floor and checkpoints the rest",
			steps: []acceptorStep{
				{
					acceptOp(b11, accProp(1, "a"), accProp(2, "b"), accProp(3, "c"), accProp(4, "d")),
					Accepted{OK: true, Promised: b11},
					&acceptorRecord{Kind: "a", Promised: b11, Values: []SlotValue{accSV(1, b11, "a"), accSV(2, b11, "b"), accSV(3, b11, "c"), accSV(4, b11, "d")}},
				},
				{prepareOp(b21, 1), Promise{OK: true, Promised: b21, Accepted: []SlotValue{accSV(1, b11, "a"), accSV(2, b11, "b"), accSV(3, b11, "c"), accSV(4, b11, "d")}}, &acceptorRecord{Kind: "p", Promised: b21}},
				{compactOp(2), nil, &acceptorRecord{Kind: "c", Promised: b21, Floor: 2, Values: []SlotValue{accSV(3, b11, "c"), accSV(4, b11, "d")}, FloorIndex: idx(4)}},
				{prepareOp(b31, 1), Promise{OK: true, Promised: b31, Floor: 2, Accepted: []SlotValue{accSV(3, b11, "c"), accSV(4, b11, "d")}}, &acceptorRecord{Kind: "p", Promised: b31}},
			},
			want: acceptorState{promised: b31, floor: 2, floorIndex: 4, indexKnown: true, accepted: acceptedSet(accSV(3, b11, "c"), accSV(4, b11, "d"))},
		},
		{
			name: "compact never lowers the floor",
			steps: []acceptorStep{
				{acceptOp(b11, accProp(3, "c"), accProp(6, "f")), Accepted{OK: true, Promised: b11}, &acceptorRecord{Kind: "a", Promised: b11, Values: []SlotValue{accSV(3, b11, "c"), accSV(6, b11, "f")}}},
				{compactOp(4), nil, &acceptorRecord{Kind: "c", Promised: b11, Floor: 4, Values: []SlotValue{accSV(6, b11, "f")}, FloorIndex: idx(8)}},
				{compactOp(2), nil, &acceptorRecord{Kind: "c", Promised: b11, Floor: 4, Values: []SlotValue{accSV(6, b11, "f")}, FloorIndex: idx(8)}},
				{compactOp(6), nil, &acceptorRecord{Kind: "c", Promised: b11, Floor: 6, FloorIndex: idx(12)}},
			},
			want: acceptorState{promised: b11, floor: 6, floorIndex: 12, indexKnown: true, accepted: acceptedSet()},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newAcceptorState()
			var recs []*acceptorRecord
			for i, st := range tc.steps {
				before := s.promised
				reply, rec := st.op.apply(s)
				if !reflect.DeepEqual(reply, st.reply) {
					t.Errorf("step %d %s: reply\n got %+v\nwant %+v", i, st.op, reply, st.reply)
				}
				if !reflect.DeepEqual(rec, st.rec) {
					t.Errorf("step %d %s: record\n got %+v\nwant %+v", i, st.op, rec, st.rec)
				}
				if s.promised.Less(before) {
					t.Errorf("step %d %s: promise lowered from %s to %s", i, st.op, before, s.promised)
				}
				if rec != nil {
					recs = append(recs, rec)
				}
			}
			if !reflect.DeepEqual(*s, tc.want) {
				t.Errorf("final state\n got %+v\nwant %+v", *s, tc.want)
			}
			checkReplay(t, s, recs)
		})
	}
}

// checkReplay feeds recs through their binary form, as the journal stores
// them, into a fresh state and checks that it equals s.
func checkReplay(t *testing.T, s *acceptorState, recs []*acceptorRecord) {
	t.Helper()
	r := newAcceptorState()
	for i, rec := range recs {
		body := rec.encode()
		dec, err := decodeAcceptorRecord(body)
		if err != nil {
			t.Fatalf("decode record %d %s: %v", i, body, err)
		}
		r.replay(dec)
	}
	if !reflect.DeepEqual(r, s) {
		t.Errorf("replay of %d records\n got %+v\nwant %+v", len(recs), *r, *s)
	}
}

// TestAcceptorStateRandom runs seeded random sequences of transitions and
// checks the invariants after each one, and that replaying the records
// rebuilds the state.
func TestAcceptorStateRandom(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0x9e3779b9))
		s := newAcceptorState()
		var recs []*acceptorRecord
		for step := 0; step < 60; step++ {
			b := accBal(rng.Uint64N(6), NodeID(1+rng.IntN(3)))
			var op acceptorOp
			switch k := rng.IntN(10); {
			case k < 4:
				op = prepareOp(b, Slot(rng.IntN(12)))
			case k < 9:
				var vals []SlotValue
				for n := rng.IntN(4); n >= 0; n-- {
					vals = append(vals, accProp(Slot(1+rng.IntN(12)), fmt.Sprintf("v%d.%d", seed, step)))
				}
				op = acceptOp(b, vals...)
			default:
				op = compactOp(Slot(rng.IntN(10)))
			}
			before := s.promised
			beforeFloor := s.floor
			reply, rec := op.apply(s)
			if rec != nil {
				recs = append(recs, rec)
			}
			if err := checkAcceptorStep(op, before, beforeFloor, s, reply, rec); err != nil {
				t.Fatalf("seed %d step %d %s: %v", seed, step, op, err)
			}
		}
		checkReplay(t, s, recs)
		if t.Failed() {
			t.Fatalf("seed %d: replay differs", seed)
		}
	}
}

func checkAcceptorStep(op acceptorOp, before Ballot, beforeFloor Slot, s *acceptorState, reply any, rec *acceptorRecord) error {
	if s.promised.Less(before) {
		return fmt.Errorf("promise lowered from %s to %s", before, s.promised)
	}
	if s.floor < beforeFloor {
		return fmt.Errorf("floor lowered from %d to %d", beforeFloor, s.floor)
	}
	for slot, v := range s.accepted {
		if slot <= s.floor {
			return fmt.Errorf("slot %d kept at or below floor %d", slot, s.floor)
		}
		if v.Slot != slot {
			return fmt.Errorf("slot %d holds a value for slot %d", slot, v.Slot)
		}
		if s.promised.Less(v.Ballot) {
			return fmt.Errorf("slot %d accepted at %s above promise %s", slot, v.Ballot, s.promised)
		}
	}
	if s.promised != before && rec == nil {
		return fmt.Errorf("promise raised to %s without a record", s.promised)
	}
	switch r := reply.(type) {
	case Promise:
		if r.OK != !op.ballot.Less(before) {
			return fmt.Errorf("promise ok=%v with ballot %s against promise %s", r.OK, op.ballot, before)
		}
		if r.Promised != s.promised || r.Floor != s.floor {
			return fmt.Errorf("promise reports %s floor %d, state has %s floor %d", r.Promised, r.Floor, s.promised, s.floor)
		}
		if (rec != nil) != before.Less(op.ballot) {
			return fmt.Errorf("record %v for ballot %s against promise %s", rec, op.ballot, before)
		}
		if !r.OK {
			return nil
		}
		n := 0
		for slot := range s.accepted {
			if slot >= op.slot {
				n++
			}
		}
		if len(r.Accepted) != n {
			return fmt.Errorf("promise reports %d values, want %d", len(r.Accepted), n)
		}
		for i, v := range r.Accepted {
			if i > 0 && r.Accepted[i-1].Slot >= v.Slot {
				return fmt.Errorf("promise values out of order: %v", r.Accepted)
			}
			if v.Slot < op.slot || !reflect.DeepEqual(v, s.accepted[v.Slot]) {
				return fmt.Errorf("promise reports %+v, state has %+v", v, s.accepted[v.Slot])
			}
		}
	case Accepted:
		if r.OK != !op.ballot.Less(before) {
			return fmt.Errorf("accepted ok=%v with ballot %s against promise %s", r.OK, op.ballot, before)
		}
		if r.Promised != s.promised {
			return fmt.Errorf("accepted reports %s, state has %s", r.Promised, s.promised)
		}
		if r.OK != (rec != nil) {
			return fmt.Errorf("accepted ok=%v with record %v", r.OK, rec)
		}
		if !r.OK {
			return nil
		}
		for _, v := range op.vals {
			got, ok := s.accepted[v.Slot]
			if v.Slot <= s.floor {
				if ok {
					return fmt.Errorf("slot %d at or below floor %d stored", v.Slot, s.floor)
				}
				continue
			}
			if !ok || got.Ballot != op.ballot {
				return fmt.Errorf("slot %d not accepted at %s: %+v", v.Slot, op.ballot, got)
			}
		}
	case nil:
		if rec == nil || rec.Kind != "c" || rec.Floor != s.floor || rec.Promised != s.promised || len(rec.Values) != len(s.accepted) {
			return fmt.Errorf("checkpoint %+v does not restate state %+v", rec, *s)
		}
	}
	return nil
}

func openTestAcceptor(t *testing.T, dir string) *Acceptor {
	t.Helper()
	a, err := openAcceptor(dir, nil, nil)
	if err != nil {
		t.Fatalf("open acceptor: %v", err)
	}
	return a
}

// checkAcceptorSynced checks invariant A3 after a reply: every journal record is on
// disk.
func checkAcceptorSynced(t *testing.T, a *Acceptor, what string) {
	t.Helper()
	if _, last := a.journal.Bounds(); a.journal.Synced() < last {
		t.Fatalf("%s returned with records up to %d unsynced (synced %d)", what, last, a.journal.Synced())
	}
}

func mustPrepareDurable(t *testing.T, a *Acceptor, b Ballot, from Slot) Promise {
	t.Helper()
	p, err := a.Prepare(b, from)
	if err != nil {
		t.Fatalf("Prepare(%s, %d): %v", b, from, err)
	}
	checkAcceptorSynced(t, a, "Prepare")
	return p
}

func mustAcceptDurable(t *testing.T, a *Acceptor, b Ballot, vals ...SlotValue) Accepted {
	t.Helper()
	r, err := a.Accept(b, vals)
	if err != nil {
		t.Fatalf("Accept(%s): %v", b, err)
	}
	checkAcceptorSynced(t, a, "Accept")
	return r
}

func TestAcceptorDurable(t *testing.T) {
	t.Parallel()
	for _, stop := range []string{"close", "crash"} {
		t.Run(stop, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			b11, b21, b31 := accBal(1, 1), accBal(2, 1), accBal(3, 1)
			a := openTestAcceptor(t, dir)
			if p := mustPrepareDurable(t, a, b21, 1); !p.OK {
				t.Fatalf("first prepare refused: %v", p)
			}
			if r := mustAcceptDurable(t, a, b21, accProp(1, "a"), accProp(2, "b")); !r.OK {
				t.Fatalf("accept at promise refused: %v", r)
			}
			if p := mustPrepareDurable(t, a, b11, 1); p.OK || p.Promised != b21 {
				t.Fatalf("lower prepare: got %v, want refusal with %s", p, b21)
			}
			// Replies must not depend on the journal being closed cleanly:
			// crash drops whatever was not synced.
			var err error
			if stop == "crash" {
				err = a.journal.crash()
			} else {
				err = a.close()
			}
			if err != nil {
				t.Fatalf("%s: %v", stop, err)
			}

			a = openTestAcceptor(t, dir)
			defer a.close()
			if got := a.Promised(); got != b21 {
				t.Errorf("promise after reopen = %s, want %s", got, b21)
			}
			for slot, want := range map[Slot]string{1: "a", 2: "b"} {
				got, ok := a.valueExactly(slot, b21)
				if !ok || !reflect.DeepEqual(got, accVal(want)) {
					t.Errorf("slot %d after reopen = %v %v, want %v", slot, got, ok, accVal(want))
				}
			}
			if r := mustAcceptDurable(t, a, b11, accProp(3, "c")); r.OK || r.Promised != b21 {
				t.Errorf("accept below promise after reopen: got %v, want refusal with %s", r, b21)
			}
			p := mustPrepareDurable(t, a, b31, 2)
			want := Promise{OK: true, Promised: b31, Accepted: []SlotValue{accSV(2, b21, "b")}}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("prepare after reopen\n got %v %+v\nwant %v %+v", p, p.Accepted, want, want.Accepted)
			}
		})
	}
}

func TestAcceptorCompactReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b11, b21 := accBal(1, 1), accBal(2, 1)
	a := openTestAcceptor(t, dir)
	mustAcceptDurable(t, a, b11, accProp(1, "a"), accProp(2, "b"), accProp(3, "c"))
	mustAcceptDurable(t, a, b11, accProp(4, "d"), accProp(5, "e"))
	mustPrepareDurable(t, a, b21, 1)
	if err := a.compact(3, 7); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if first, last := a.journal.Bounds(); first != last {
		t.Errorf("journal after compact holds records %d..%d, want only the checkpoint", first, last)
	}
	checkAcceptorSynced(t, a, "compact")
	if r := mustAcceptDurable(t, a, b21, accProp(3, "late"), accProp(6, "f")); !r.OK {
		t.Fatalf("accept after compact refused: %v", r)
	}
	if err := a.journal.crash(); err != nil {
		t.Fatalf("crash: %v", err)
	}

	a = openTestAcceptor(t, dir)
	defer a.close()
	if got := a.Floor(); got != 3 {
		t.Errorf("floor after reopen = %d, want 3", got)
	}
	if fi, known := a.FloorIndex(); fi != 7 || !known {
		t.Errorf("floor index after reopen = %d (known %v), want 7", fi, known)
	}
	if got := a.Promised(); got != b21 {
		t.Errorf("promise after reopen = %s, want %s", got, b21)
	}
	for _, slot := range []Slot{1, 2, 3} {
		if v, ok := a.valueExactly(slot, b11); ok {
			t.Errorf("slot %d at or below the floor survived: %v", slot, v)
		}
	}
	if _, ok := a.valueExactly(3, b21); ok {
		t.Errorf("slot 3 at the floor was stored by a later accept")
	}
	p := mustPrepareDurable(t, a, accBal(3, 1), 1)
	want := Promise{OK: true, Promised: accBal(3, 1), Floor: 3, Accepted: []SlotValue{accSV(4, b11, "d"), accSV(5, b11, "e"), accSV(6, b21, "f")}}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("prepare after reopen\n got %v %+v\nwant %v %+v", p, p.Accepted, want, want.Accepted)
	}
}

// TestAcceptorSealsOnClose: a clean close seals the journal, so damage to
// the last promise while the node is down is told from a torn tail: the
// node must rebuild, not vote with the promise gone.
func TestAcceptorSealsOnClose(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := openTestAcceptor(t, dir)
	mustPrepareDurable(t, a, accBal(1, 1), 1)
	mustPrepareDurable(t, a, accBal(5, 2), 1)
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	path := newestSegment(t, dir)
	data, _ := os.ReadFile(path)
	starts, _ := segmentRecordOffsets(t, data)
	if len(starts) != 3 {
		t.Fatalf("%d records after close, want two promises and a seal", len(starts))
	}
	data[starts[2]-1] ^= 0x01 // the last byte of the second promise
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	var damage []string
	a, err := openAcceptor(dir, nil, func(what string) error {
		damage = append(damage, what)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.journal.Close()
	if !a.damaged || len(damage) != 1 {
		t.Fatalf("damaged %v, reports %v: a damaged promise before a seal must count as damage", a.damaged, damage)
	}
}

// TestAcceptorAsksForCheckpointByBytes: once checkpointBytes of records
// have built up, the acceptor wakes its loop for a checkpoint at once
// (the accepted values are held in memory until then), not at its next
// tick; below that it does not.
func TestAcceptorAsksForCheckpointByBytes(t *testing.T) {
	t.Parallel()
	a := openTestAcceptor(t, t.TempDir())
	defer a.close()
	b := accBal(1, 1)
	big := strings.Repeat("x", 64<<10)
	slot := Slot(1)
	for ; slot*Slot(len(big)) < checkpointBytes*3/4; slot++ {
		mustAcceptDurable(t, a, b, accProp(slot, big))
	}
	select {
	case <-a.bytesDue:
		t.Fatalf("asked for a checkpoint after %d bytes", a.bytesSince)
	default:
	}
	for ; slot*Slot(len(big)) < checkpointBytes*5/4; slot++ {
		mustAcceptDurable(t, a, b, accProp(slot, big))
	}
	select {
	case <-a.bytesDue:
	default:
		t.Fatalf("no checkpoint asked for after %d bytes", a.bytesSince)
	}
}
