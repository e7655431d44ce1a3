package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
)

// codec.go: the binary form of what carries entry data on the append
// path: accept requests, forwards, and the acceptor's journal records.
// Entry data travels in them as the client's bytes, length-prefixed, from
// the append's body to every acceptor's disk: no base64, no JSON scan of
// client values. Replies, promises and catch-up stay JSON. Decoders also
// take the JSON form, which journals written by earlier versions hold
// (a JSON form starts with '{', a binary one with its tag).
//
// Layout, every number a uvarint unless said otherwise:
//
//	value:      count, then per entry: id (16 bytes), len(key), key, len(data), data
//	            (in the batch layout: id, len(key), key, count of values, then
//	            each value's length and bytes: Entry.More after Data)
//	slot value: slot, ballot round, ballot node, value
//	accept:     'A' (1 byte), from, ballot round, ballot node, commit, count, slot values
//	forward:    'F' (1 byte), from, value
//	catch-up:   'C' (1 byte), cluster (length, bytes), through, compacted (1 byte),
//	            first, first slot, count, slot values, membership (length, JSON;
//	            0: none) (the reply, to a request that asks for it with
//	            "binary": true)
//	promise:    'P' (1 byte), ok (1 byte), promised round, promised node, floor,
//	            count, slot values, removed (1 byte), commit (the reply, to a
//	            prepare that asks for it with "binary": true)
//	record:     'R' (1 byte), kind (1 byte: 'p', 'a', 'c' or 's'), promised round,
//	            promised node, floor, count, slot values, and for 'c' floor index
//	            (checkpoints of older builds end before it)
//
// A message or record that holds a batch (an entry with More) is written
// with its tag in lower case ('a', 'f', 'r', 'c'), which says its values
// use the batch layout; one without is written as before, so a build
// that predates batches still reads everything but batches.
//
// Decoded entries share the input's memory; nothing here changes it.

const (
	tagAccept  = 'A'
	tagForward = 'F'
	tagRecord  = 'R'
	tagCatchup = 'C'
	tagPromise = 'P'
)

// minEntryBytes is the least an encoded entry takes (id and two lengths):
// a count larger than the input could hold is rejected before allocating.
const minEntryBytes = len(EntryID{}) + 2

var errShortInput = errors.New("input ends early")

// batchTag is the tag that says a message's values use the batch layout.
func batchTag(tag byte) byte { return tag | 0x20 }

// tagFor returns tag, or its batch form if batch.
func tagFor(tag byte, batch bool) byte {
	if batch {
		return batchTag(tag)
	}
	return tag
}

// hasBatch reports whether any of es is a batch.
func hasBatch(es []Entry) bool {
	for _, e := range es {
		if len(e.More) > 0 {
			return true
		}
	}
	return false
}

// valuesHaveBatch reports whether any of vals holds a batch.
func valuesHaveBatch(vals []SlotValue) bool {
	for _, sv := range vals {
		if hasBatch(sv.Value.Entries) {
			return true
		}
	}
	return false
}

func appendValue(b []byte, v Value, batch bool) []byte {
	b = binary.AppendUvarint(b, uint64(len(v.Entries)))
	for _, e := range v.Entries {
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, uint64(len(e.Key)))
		b = append(b, e.Key...)
		if batch {
			b = binary.AppendUvarint(b, uint64(e.values()))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Data)))
		b = append(b, e.Data...)
		for _, d := range e.More {
			b = binary.AppendUvarint(b, uint64(len(d)))
			b = append(b, d...)
		}
	}
	return b
}

func appendSlotValues(b []byte, vals []SlotValue, batch bool) []byte {
	b = binary.AppendUvarint(b, uint64(len(vals)))
	for _, sv := range vals {
		b = binary.AppendUvarint(b, uint64(sv.Slot))
		b = appendBallot(b, sv.Ballot)
		b = appendValue(b, sv.Value, batch)
	}
	return b
}

func appendBallot(b []byte, bal Ballot) []byte {
	b = binary.AppendUvarint(b, bal.Round)
	return binary.AppendUvarint(b, uint64(bal.Node))
}

// valuesSize bounds the encoded size of vals (a capacity hint).
func valuesSize(vals []SlotValue) int {
	n := binary.MaxVarintLen64
	for _, sv := range vals {
		n += 4*binary.MaxVarintLen64 + entriesSize(sv.Value.Entries)
	}
	return n
}

// entriesSize bounds the encoded size of a value holding es.
func entriesSize(es []Entry) int {
	n := binary.MaxVarintLen64
	for _, e := range es {
		n += minEntryBytes + (3+len(e.More))*binary.MaxVarintLen32 + e.size()
	}
	return n
}

// MarshalBinary encodes m in the binary form.
func (m AcceptReq) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 32+valuesSize(m.Values))
	batch := valuesHaveBatch(m.Values)
	b = append(b, tagFor(tagAccept, batch))
	b = binary.AppendUvarint(b, uint64(m.From))
	b = appendBallot(b, m.Ballot)
	b = binary.AppendUvarint(b, uint64(m.Commit))
	return appendSlotValues(b, m.Values, batch), nil
}

// UnmarshalBinary decodes the binary form, or JSON.
func (m *AcceptReq) UnmarshalBinary(p []byte) error {
	if isJSON(p) {
		return json.Unmarshal(p, m)
	}
	d := decoder{b: p}
	d.tag(tagAccept)
	*m = AcceptReq{From: d.node(), Ballot: d.ballot(), Commit: Slot(d.uvarint())}
	m.Values = d.slotValues()
	return d.end("accept")
}

// MarshalBinary encodes m in the binary form.
func (m ForwardReq) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 16+entriesSize(m.Entries))
	batch := hasBatch(m.Entries)
	b = append(b, tagFor(tagForward, batch))
	b = binary.AppendUvarint(b, uint64(m.From))
	return appendValue(b, Value{Entries: m.Entries}, batch), nil
}

// UnmarshalBinary decodes the binary form, or JSON.
func (m *ForwardReq) UnmarshalBinary(p []byte) error {
	if isJSON(p) {
		return json.Unmarshal(p, m)
	}
	d := decoder{b: p}
	d.tag(tagForward)
	*m = ForwardReq{From: d.node(), Entries: d.value().Entries}
	return d.end("forward")
}

// MarshalBinary encodes m in the binary form: 'C' (1 byte), len(cluster),
// cluster, through, compacted (0 or 1), first, first slot, slot values,
// then the length of the memberships' JSON and that JSON (0: none); when
// compacted, then the dedup state: dedup from, dedup through, count, and each record
// with its length before it.
func (m CatchupResp) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 48+len(m.Cluster)+valuesSize(m.Values))
	batch := valuesHaveBatch(m.Values)
	b = append(b, tagFor(tagCatchup, batch))
	b = binary.AppendUvarint(b, uint64(len(m.Cluster)))
	b = append(b, m.Cluster...)
	b = binary.AppendUvarint(b, uint64(m.Through))
	b = append(b, boolByte(m.Compacted))
	b = binary.AppendUvarint(b, uint64(m.First))
	b = binary.AppendUvarint(b, uint64(m.FirstSlot))
	b = appendSlotValues(b, m.Values, batch)
	var mem []byte
	if len(m.Memberships) > 0 {
		var err error
		if mem, err = json.Marshal(m.Memberships); err != nil {
			return nil, err
		}
	}
	b = binary.AppendUvarint(b, uint64(len(mem)))
	b = append(b, mem...)
	if m.Compacted { // the dedup state, only with a prefix (older builds end before it)
		b = binary.AppendUvarint(b, uint64(m.DedupFrom))
		b = binary.AppendUvarint(b, uint64(m.DedupThrough))
		b = appendByteStrings(b, m.Dedup)
	}
	return b, nil
}

// appendByteStrings appends their count, then each with its length.
func appendByteStrings(b []byte, bs [][]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(bs)))
	for _, r := range bs {
		b = binary.AppendUvarint(b, uint64(len(r)))
		b = append(b, r...)
	}
	return b
}

// byteStrings decodes what appendByteStrings wrote.
func (d *decoder) byteStrings() [][]byte {
	n := d.count(1)
	var out [][]byte
	for i := 0; i < n && d.err == nil; i++ {
		out = append(out, d.bytes(d.uvarint()))
	}
	return out
}

// UnmarshalBinary decodes the binary form, or JSON (what builds before
// the binary form answer).
func (m *CatchupResp) UnmarshalBinary(p []byte) error {
	if isJSON(p) {
		return json.Unmarshal(p, m)
	}
	d := decoder{b: p}
	d.tag(tagCatchup)
	*m = CatchupResp{Cluster: string(d.bytes(d.uvarint())), Through: Slot(d.uvarint())}
	m.Compacted = d.byte() == 1
	m.First, m.FirstSlot = Index(d.uvarint()), Slot(d.uvarint())
	m.Values = d.slotValues()
	if mem := d.bytes(d.uvarint()); len(mem) > 0 && d.err == nil {
		if err := json.Unmarshal(mem, &m.Memberships); err != nil {
			d.fail(fmt.Errorf("memberships: %w", err))
		}
	}
	if m.Compacted && len(d.b) > 0 {
		m.DedupFrom, m.DedupThrough = Index(d.uvarint()), Slot(d.uvarint())
		m.Dedup = d.byteStrings()
	}
	return d.end("catch-up reply")
}

// MarshalBinary encodes m in the binary form.
func (m Promise) MarshalBinary() ([]byte, error) {
	batch := valuesHaveBatch(m.Accepted)
	b := make([]byte, 0, 40+valuesSize(m.Accepted))
	b = append(b, tagFor(tagPromise, batch), boolByte(m.OK))
	b = appendBallot(b, m.Promised)
	b = binary.AppendUvarint(b, uint64(m.Floor))
	b = appendSlotValues(b, m.Accepted, batch)
	b = append(b, boolByte(m.Removed))
	return binary.AppendUvarint(b, uint64(m.Commit)), nil
}

// UnmarshalBinary decodes the binary form, or JSON (what builds before
// the binary form answer).
func (m *Promise) UnmarshalBinary(p []byte) error {
	if isJSON(p) {
		return json.Unmarshal(p, m)
	}
	d := decoder{b: p}
	d.tag(tagPromise)
	*m = Promise{OK: d.byte() == 1, Promised: d.ballot(), Floor: Slot(d.uvarint())}
	m.Accepted = d.slotValues()
	m.Removed = d.byte() == 1
	m.Commit = Slot(d.uvarint())
	return d.end("promise")
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// encode returns r in the binary form.
func (r *acceptorRecord) encode() []byte { return r.appendTo(nil) }

// appendTo appends the record's encoding to b, growing b once for all of it.
func (r *acceptorRecord) appendTo(b []byte) []byte {
	b = slices.Grow(b, 32+valuesSize(r.Values))
	batch := valuesHaveBatch(r.Values)
	b = append(b, tagFor(tagRecord, batch), r.Kind[0])
	b = appendBallot(b, r.Promised)
	b = binary.AppendUvarint(b, uint64(r.Floor))
	b = appendSlotValues(b, r.Values, batch)
	if r.FloorIndex != nil {
		b = binary.AppendUvarint(b, uint64(*r.FloorIndex))
	}
	return b
}

// decodeAcceptorRecord decodes a journal record, binary or JSON.
func decodeAcceptorRecord(p []byte) (acceptorRecord, error) {
	var r acceptorRecord
	if isJSON(p) {
		err := json.Unmarshal(p, &r)
		return r, err
	}
	d := decoder{b: p}
	d.tag(tagRecord)
	switch k := d.byte(); k {
	case 'p', 'a', 'c', 's':
		r.Kind = string(rune(k))
	default:
		if d.err == nil {
			d.err = fmt.Errorf("unknown record kind %q", k)
		}
	}
	r.Promised = d.ballot()
	r.Floor = Slot(d.uvarint())
	r.Values = d.slotValues()
	if r.Kind == "c" && d.err == nil && len(d.b) > 0 {
		fi := Index(d.uvarint())
		r.FloorIndex = &fi
	}
	return r, d.end("acceptor record")
}

func isJSON(p []byte) bool { return len(p) > 0 && p[0] == '{' }

// decoder reads the binary form; the first error sticks and later reads
// return zero values.
type decoder struct {
	b     []byte
	err   error
	batch bool // the tag said: values in the batch layout
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail(errShortInput)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// tag reads the tag, want or its batch form.
func (d *decoder) tag(want byte) {
	got := d.byte()
	switch {
	case d.err != nil:
	case got == batchTag(want):
		d.batch = true
	case got != want:
		d.fail(fmt.Errorf("tag %q, want %q", got, want))
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShortInput)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) node() NodeID {
	v := d.uvarint()
	if v > math.MaxUint32 {
		d.fail(fmt.Errorf("node id %d out of range", v))
		return 0
	}
	return NodeID(v)
}

func (d *decoder) ballot() Ballot {
	return Ballot{Round: d.uvarint(), Node: d.node()}
}

// bytes returns the next n bytes, sharing the input, capacity clipped so
// an append to them cannot write into the input.
func (d *decoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errShortInput)
		return nil
	}
	if n == 0 {
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

// count reads a count of items that take at least min bytes each.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.fail(fmt.Errorf("count %d does not fit in %d bytes", n, len(d.b)))
		return 0
	}
	return int(n)
}

func (d *decoder) value() Value {
	n := d.count(minEntryBytes)
	if n == 0 {
		return Value{}
	}
	v := Value{Entries: make([]Entry, n)}
	for i := range v.Entries {
		e := &v.Entries[i]
		copy(e.ID[:], d.bytes(uint64(len(e.ID))))
		e.Key = string(d.bytes(d.uvarint()))
		more := 0
		if d.batch {
			more = d.count(1) - 1 // a length byte each at least
			if more < 0 && d.err == nil {
				d.fail(errors.New("an entry with no values"))
			}
		}
		e.Data = d.bytes(d.uvarint())
		if more > 0 {
			e.More = make([][]byte, more)
			for j := range e.More {
				e.More[j] = d.bytes(d.uvarint())
			}
		}
	}
	return v
}

func (d *decoder) slotValues() []SlotValue {
	n := d.count(4) // slot, round, node, count: a byte each at least
	if n == 0 {
		return nil
	}
	vals := make([]SlotValue, n)
	for i := range vals {
		vals[i] = SlotValue{Slot: Slot(d.uvarint()), Ballot: d.ballot(), Value: d.value()}
	}
	return vals
}

func (d *decoder) end(what string) error {
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes past the end", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("decode %s: %w", what, d.err)
	}
	return nil
}

// peerContentType names the form of a peer message body.
func peerContentType(body []byte) string {
	if isJSON(body) {
		return "application/json"
	}
	return "application/octet-stream"
}
