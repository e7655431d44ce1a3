package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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
//	slot value: slot, ballot round, ballot node, value
//	accept:     'A' (1 byte), from, ballot round, ballot node, commit, count, slot values
//	forward:    'F' (1 byte), from, value
//	catch-up:   'C' (1 byte), cluster (length, bytes), through, compacted (1 byte),
//	            first, first slot, count, slot values, membership (length, JSON;
//	            0: none) (the reply, to a request that asks for it with
//	            "binary": true)
//	record:     'R' (1 byte), kind (1 byte: 'p', 'a', 'c' or 's'), promised round,
//	            promised node, floor, count, slot values, and for 'c' floor index
//	            (checkpoints of older builds end before it)
//
// Decoded entries share the input's memory; nothing here changes it.

const (
	tagAccept  = 'A'
	tagForward = 'F'
	tagRecord  = 'R'
	tagCatchup = 'C'
)

// minEntryBytes is the least an encoded entry takes (id and two lengths):
// a count larger than the input could hold is rejected before allocating.
const minEntryBytes = len(EntryID{}) + 2

var errShortInput = errors.New("input ends early")

func appendValue(b []byte, v Value) []byte {
	b = binary.AppendUvarint(b, uint64(len(v.Entries)))
	for _, e := range v.Entries {
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, uint64(len(e.Key)))
		b = append(b, e.Key...)
		b = binary.AppendUvarint(b, uint64(len(e.Data)))
		b = append(b, e.Data...)
	}
	return b
}

func appendSlotValues(b []byte, vals []SlotValue) []byte {
	b = binary.AppendUvarint(b, uint64(len(vals)))
	for _, sv := range vals {
		b = binary.AppendUvarint(b, uint64(sv.Slot))
		b = appendBallot(b, sv.Ballot)
		b = appendValue(b, sv.Value)
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
		n += minEntryBytes + 2*binary.MaxVarintLen32 + len(e.Key) + len(e.Data)
	}
	return n
}

// MarshalBinary encodes m in the binary form.
func (m AcceptReq) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 32+valuesSize(m.Values))
	b = append(b, tagAccept)
	b = binary.AppendUvarint(b, uint64(m.From))
	b = appendBallot(b, m.Ballot)
	b = binary.AppendUvarint(b, uint64(m.Commit))
	return appendSlotValues(b, m.Values), nil
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
	b = append(b, tagForward)
	b = binary.AppendUvarint(b, uint64(m.From))
	return appendValue(b, Value{Entries: m.Entries}), nil
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
	b = append(b, tagCatchup)
	b = binary.AppendUvarint(b, uint64(len(m.Cluster)))
	b = append(b, m.Cluster...)
	b = binary.AppendUvarint(b, uint64(m.Through))
	compacted := byte(0)
	if m.Compacted {
		compacted = 1
	}
	b = append(b, compacted)
	b = binary.AppendUvarint(b, uint64(m.First))
	b = binary.AppendUvarint(b, uint64(m.FirstSlot))
	b = appendSlotValues(b, m.Values)
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

// encode returns r in the binary form.
func (r *acceptorRecord) encode() []byte {
	b := make([]byte, 0, 32+valuesSize(r.Values))
	b = append(b, tagRecord, r.Kind[0])
	b = appendBallot(b, r.Promised)
	b = binary.AppendUvarint(b, uint64(r.Floor))
	b = appendSlotValues(b, r.Values)
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
	b   []byte
	err error
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

func (d *decoder) tag(want byte) {
	if got := d.byte(); d.err == nil && got != want {
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
		e.Data = d.bytes(d.uvarint())
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
