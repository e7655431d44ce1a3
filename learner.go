package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// learner.go: the learner role. It turns chosen slots into the client log.
//
// Index map: the learner's journal number IS the client index (the
// journal's numbering starts past a base after installPrefix). Record i
// holds the entry at index i plus the slot it came from and its position
// in that slot's batch. Slots are applied strictly in order;
// applied is the last slot applied. A slot <= applied with no record was
// a no-op (or held only duplicates).
//
// Invariants:
//   - L1: every node applies the same value to each slot (values come from
//     a chosen fact: the leader's own quorum, a local acceptance under the
//     very ballot whose leader declared the slot chosen, or a peer's log).
//   - L2: the index assignment is a pure function of the chosen sequence
//     (dedup looks only at the identities of the previous DedupWindow
//     indices, kept apart from the entries: dedup.go, D1-D4), so every
//     node holds the same entry at every index.
//   - L3: records for a slot are written in one batch; a batch cut short by
//     a crash is dropped whole on open and re-learned.
//   - L4: retention cuts the journal only at the first entry of a slot
//     (kept), however much it drops for readers (first >= kept; the
//     records of first's slot before it stay on disk, unread by clients,
//     until a later cut passes them). So a node that installs a peer's
//     compacted prefix (an empty log whose numbering starts at the peer's
//     kept index, every slot before that one's applied) gets whole slots
//     from there on, and the peer's dedup state for the window below it
//     (D3), so its later dedup decisions see what the peer's do.

// defaultDedupWindow is how many of the latest indices are searched for
// an entry's identity (its Idempotency-Key, or else its id) before it is
// given a new index. Nodes resend entries only within RequestTimeout, far
// fewer appends than this at any rate reached; an Idempotency-Key is
// remembered for the window's entries that follow it, whether or not
// retention still keeps its entry (dedup.go). The window must be the same
// on every node (invariant L2), so it is no flag; tests shrink it through
// Config.DedupWindow.
const defaultDedupWindow = 1 << 18

// catchupBatch is the most entries one catch-up reply carries, and
// catchupBytes about the most bytes of entry data (whole slots only: a
// reply holds one slot at least, whatever its size).
const (
	catchupBatch = 1024
	catchupBytes = 16 << 20
)

// learnerRecord is one journal record of the client log, stored as
//
//	0x00 uvarint(slot) uvarint(pos) uvarint(n) uvarint(unix nanos) sum (8 bytes, little endian) id[16] uvarint(len(key)) key data...
//
// where pos is the entry's place among the n entries its slot added, the
// time is when this node applied it (for retention by age), and sum is
// this node's running sum of entry hashes through this index (check.go).
// A batch's later entries (continued records: the zero id, no key) are
// stored shorter, without the time, id and key, which are their slot's
// first record's (that one holds the first value of the slot's first
// entry, so it is never continued, and L4 keeps it as long as them):
//
//	0x00 0x00 uvarint(slot) uvarint(pos) uvarint(n) sum (8 bytes, little endian) data...
//
// Records of older builds lack the leading 0 and the sum (a uvarint slot
// never begins with 0: slots start at 1), and store continued records in
// full.
type learnerRecord struct {
	Slot      Slot
	Pos       int
	N         int
	Time      int64 // 0 in a continued record read from the short form: see appliedAt
	Sum       uint64
	HasSum    bool // the record carries a sum (older records do not)
	Continued bool // stored in the short form
	ID        EntryID
	Key       string
	Data      []byte
}

// learnerRecordOverhead bounds a record's bytes besides its key and data.
const learnerRecordOverhead = 1 + 5*binary.MaxVarintLen64 + 8 + len(EntryID{})

// appendTo appends the encoded record to b, with its sum: in the short
// form if it is a batch's later entry.
func (r learnerRecord) appendTo(b []byte) []byte {
	if r.ID == (EntryID{}) && r.Key == "" {
		b = append(b, 0, 0)
		b = binary.AppendUvarint(b, uint64(r.Slot))
		b = binary.AppendUvarint(b, uint64(r.Pos))
		b = binary.AppendUvarint(b, uint64(r.N))
		b = binary.LittleEndian.AppendUint64(b, r.Sum)
		return append(b, r.Data...)
	}
	b = append(b, 0)
	return r.appendFields(b, true)
}

// appendFields appends what follows the leading 0 of the full form, with
// or without the sum (the older form, appendUnsummed).
func (r learnerRecord) appendFields(b []byte, withSum bool) []byte {
	b = binary.AppendUvarint(b, uint64(r.Slot))
	b = binary.AppendUvarint(b, uint64(r.Pos))
	b = binary.AppendUvarint(b, uint64(r.N))
	b = binary.AppendUvarint(b, uint64(r.Time))
	if withSum {
		b = binary.LittleEndian.AppendUint64(b, r.Sum)
	}
	b = append(b, r.ID[:]...)
	b = binary.AppendUvarint(b, uint64(len(r.Key)))
	b = append(b, r.Key...)
	return append(b, r.Data...)
}

var errBadRecord = errors.New("malformed client log record")

func decodeLearnerRecord(b []byte) (learnerRecord, error) {
	var r learnerRecord
	if len(b) > 0 && b[0] == 0 {
		r.HasSum = true
		b = b[1:]
		if len(b) > 0 && b[0] == 0 {
			r.Continued = true
			b = b[1:]
		}
	}
	var vals [4]uint64
	fields := vals[:]
	if r.Continued {
		fields = vals[:3] // no time
	}
	for i := range fields {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return r, errBadRecord
		}
		fields[i], b = v, b[n:]
	}
	if r.HasSum {
		if len(b) < 8 {
			return r, errBadRecord
		}
		r.Sum, b = binary.LittleEndian.Uint64(b), b[8:]
	}
	if vals[1] >= vals[2] || r.Continued && vals[1] == 0 {
		return r, errBadRecord
	}
	r.Slot, r.Pos, r.N, r.Time = Slot(vals[0]), int(vals[1]), int(vals[2]), int64(vals[3])
	if r.Continued {
		r.Data = b
		return r, nil
	}
	if len(b) < len(r.ID) {
		return r, errBadRecord
	}
	copy(r.ID[:], b)
	b = b[len(r.ID):]
	klen, n := binary.Uvarint(b)
	if n <= 0 || uint64(len(b)-n) < klen {
		return r, errBadRecord
	}
	r.Key = string(b[n : n+int(klen)])
	r.Data = b[n+int(klen):]
	return r, nil
}

// LogEntry is an entry as clients see it. Data is the JSON value exactly
// as appended.
type LogEntry struct {
	Index Index
	Data  []byte
}

// appendJSON writes e as {"index":i,"data":<value>}, the value verbatim.
func (e LogEntry) appendJSON(b []byte) []byte {
	b = append(b, `{"index":`...)
	b = strconv.AppendUint(b, uint64(e.Index), 10)
	b = append(b, `,"data":`...)
	b = append(b, e.Data...)
	return append(b, '}')
}

// Learner owns the client log. Safe for concurrent use.
type Learner struct {
	n       *Node
	journal *journal
	dedup   *journal // identity of the entry at each index of the window (dedup.go)

	compactMu sync.Mutex // one compaction at a time

	mu          sync.Mutex // protects the fields below
	first, last Index      // indices readers get; empty when first == last+1
	kept        Index      // first index in the journal (<= first: L4)
	// logOnly: through this slot, values are applied only from a peer's
	// client log, not from acceptors or leaders, whose values may hold
	// duplicates of entries whose identities an installed prefix did not
	// bring (D3).
	logOnly     Slot
	applied     Slot
	pending     map[Slot]Value      // chosen, waiting for the slots before them
	knownCommit Slot                // highest slot known chosen
	commitFrom  NodeID              // who said so: the peer to catch up from
	window      Index               // the dedup window, in indices
	recent      *dedupWindow        // the identities at the last window indices
	waiters     map[string][]waiter // identity -> appends waiting for it
	// mems are memberships catch-up replies carried whose slots are not
	// applied yet, oldest first: adopted as each slot is applied (M1).
	mems []*membership
	// genesis is the cluster identity of the genesis entry being applied,
	// recorded with its membership (adoptLocked).
	genesis string
	notify  chan struct{} // closed and replaced on every apply
	// appliedHint trails applied (stored after each change; applied
	// only grows), for a look without mu: hasApplied.
	appliedHint atomic.Uint64

	kick chan struct{} // wakes the catch-up loop

	relearn Index  // damage dropped records through this index; learning them again (0: none)
	sum     uint64 // running sum of entry hashes through last (check.go)
	sumFrom Index  // first index whose record carries a sum

	dmgMu      sync.Mutex         // protects damaged
	damaged    map[Index]struct{} // indices that failed their check, not yet repaired
	repairKick chan struct{}      // wakes the repair loop

	scratch applyBufs // applyLocked's, under mu
}

// applyBufs are the buffers applyLocked encodes a slot's records in,
// kept from one slot to the next (the journals copy what they are
// given), each up to maxKeptRecordBuf bytes: a larger one, from a big
// batch, is left to the collector.
type applyBufs struct {
	recs, dedups [][]byte // the records, pointing into rec and dedup
	rec, dedup   []byte
}

// keep holds on to the buffers one apply used, or to none of them past
// the bound (the record slices would pin their buffers).
func (b *applyBufs) keep(recs [][]byte, rec []byte, dedups [][]byte, dedup []byte) {
	clear(recs)
	clear(dedups)
	if cap(rec) > maxKeptRecordBuf || cap(dedup) > maxKeptRecordBuf || cap(recs) > maxKeptRecordBuf/64 {
		*b = applyBufs{}
		return
	}
	*b = applyBufs{recs: recs[:0], dedups: dedups[:0], rec: rec[:0], dedup: dedup[:0]}
}

// learnerFloor is what the acceptor's last checkpoint says of the client
// log (invariant A4): every slot <= slot is chosen and was stored here,
// through index if known.
type learnerFloor struct {
	slot  Slot
	index Index
	known bool
}

// dedupSegmentBytes bounds the dedup journal's segment size.
const dedupSegmentBytes = 1 << 20

func openLearner(n *Node, dir string, floor learnerFloor, onSync func(time.Duration)) (*Learner, error) {
	seg := n.cfg.SegmentBytes
	if seg <= 0 {
		seg = 4 << 20
	}
	var lost Index     // re-learn through this index: records are missing up to it
	var holes []uint64 // damaged records kept as holes, to repair
	onTail := func(d tailDamage) (bool, error) {
		if !d.Damaged {
			n.log.Warn("client log: dropped a torn tail, records a crash cut short", "file", n.relPath(d.Segment), "from", d.From)
			return false, nil
		}
		// Damage: the good records after it stay, the damaged ones become
		// holes, repaired from peers (repair.go) once they are read.
		n.log.Error("client log: records in the newest segment are damaged; keeping the good ones and repairing the rest from peers",
			"file", n.relPath(d.Segment), "from", d.From, "through", d.Through, "damaged", len(d.Holes))
		holes = d.Holes
		return true, nil
	}
	j, err := openJournal(dir, journalOptions{OnSync: onSync, SegmentSize: seg, OnTailDamage: onTail, SparseReads: true})
	if err != nil {
		return nil, err
	}
	// The dedup journal: what its tail lost is filled from the client log
	// as it reconciles (dedupReconcile), or else its loss is handled there.
	// Its segments are at most dedupSegmentBytes: its records are small,
	// and tidwall/wal keeps a position for each record of its tail and
	// cached segments in memory (16 bytes, about as much as the record).
	d, err := openJournal(filepath.Join(filepath.Dir(dir), "dedup"), journalOptions{OnSync: onSync, SegmentSize: min(seg, dedupSegmentBytes)})
	if err != nil {
		j.Close()
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		l := newLearner(n, j, d, holes)
		err := l.resumeInstall()
		if err == nil {
			err = l.load(floor, lost)
		}
		if errors.Is(err, errDedupLost) && attempt == 0 && !aloneAtOpen(n) {
			// D2 cannot be restored from this node's files: learn the
			// client log and its dedup state again from peers.
			n.log.Error("the dedup state under --data is damaged or lost and cannot be rebuilt from the client log; dropping the client log to learn it again, with the dedup state, from peers",
				"file", n.relPath(d.dir), "err", err)
			if err = j.Reset(0, nil); err == nil {
				err = d.Reset(0, nil)
			}
			if err == nil {
				err = removeIfExists(filepath.Join(dir, firstFile))
			}
			if err == nil {
				floor = learnerFloor{slot: floor.slot, index: max(floor.index, 1), known: true}
				holes, lost = nil, 0
				continue
			}
		}
		if errors.Is(err, errDedupLost) {
			err = fmt.Errorf("%w, and no other member holds it: restore --data from a backup", err)
		}
		if err != nil {
			j.Close()
			d.Close()
			return nil, fmt.Errorf("learner: %w", err)
		}
		return l, nil
	}
}

func newLearner(n *Node, j, d *journal, holes []uint64) *Learner {
	l := &Learner{
		n: n, journal: j, dedup: d,
		pending: make(map[Slot]Value),
		recent:  newDedupWindow(n.cfg.DedupWindow),
		window:  Index(n.cfg.DedupWindow),
		waiters: make(map[string][]waiter),
		notify:  make(chan struct{}),
		kick:    make(chan struct{}, 1),
		damaged: make(map[Index]struct{}),

		repairKick: make(chan struct{}, 1),
	}
	for _, h := range holes {
		l.damaged[Index(h)] = struct{}{}
	}
	return l
}

// load rebuilds the learner's memory from its journal (L3 repair first).
// lost, if not 0, is an index that damage dropped from the tail.
func (l *Learner) load(floor learnerFloor, lost Index) error {
	first, last := l.journal.Bounds()
	for last >= first {
		rec, err := l.record(Index(last))
		keep := last
		switch {
		case errors.Is(err, errJournalCorrupt):
			keep = last - 1 // damaged at the very end: dropped, and learned again by slot
		case err != nil:
			return err
		case rec.Pos+1 < rec.N:
			keep = last - uint64(rec.Pos) - 1 // the batch of rec.Slot was cut short: drop its records
		}
		if keep == last {
			break
		}
		if err := l.journal.TruncateBack(keep); err != nil {
			return err
		}
		last = keep
	}
	l.first, l.last, l.kept = Index(first), Index(last), Index(first)
	l.sumFrom = l.last + 1
	if last >= first {
		rec, err := l.record(Index(last))
		if err != nil {
			return err
		}
		l.applied = rec.Slot
		if rec.HasSum {
			l.sum = rec.Sum
			if l.sumFrom, err = l.firstSummed(); err != nil {
				return err
			}
		}
	}
	// Slots up to the floor are applied, even past the last record (they
	// were no-ops), unless the log lost records that were stored when the
	// floor was set: then they are learned again from peers (A4).
	if !floor.known || l.last >= floor.index {
		l.applied = max(l.applied, floor.slot)
	} else {
		l.n.log.Error("client log: records stored before the last acceptor checkpoint are missing; learning them again from peers",
			"file", l.n.relPath(l.journal.dir), "last", l.last, "stored_through", floor.index, "slot", floor.slot)
		lost = max(lost, floor.index)
	}
	l.applied = max(l.applied, l.installedSlot())
	l.appliedHint.Store(uint64(l.applied))
	l.knownCommit = max(l.applied, floor.slot)
	if lost > l.last {
		l.relearn = lost
	}
	if err := l.dedupReconcile(); err != nil {
		return err
	}
	l.first = max(l.first, min(l.visibleFirst(), l.last))
	return nil
}

func (l *Learner) close() error { return errors.Join(l.journal.Close(), l.dedup.Close()) }

// crash drops what was not synced in both journals (tests).
func (l *Learner) crash() error { return errors.Join(l.journal.crash(), l.dedup.crash()) }

// firstFile, in the client log's directory, holds the first index readers
// get when it is past the first one the journal holds (L4).
const firstFile = "FIRST"

// visibleFirst reads firstFile (0 if there is none).
func (l *Learner) visibleFirst() Index {
	b, err := os.ReadFile(filepath.Join(l.journal.dir, firstFile))
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return Index(v)
}

// writeVisibleFirst records first in firstFile, durably.
func (l *Learner) writeVisibleFirst(first Index) error {
	return replaceFileSync(filepath.Join(l.journal.dir, firstFile), strconv.AppendUint(nil, uint64(first), 10))
}

// record reads and decodes the record at index i. A record that fails
// its check is noted for repair (repair.go).
func (l *Learner) record(i Index) (learnerRecord, error) {
	p, err := l.journal.Read(uint64(i))
	if err != nil {
		if errors.Is(err, errJournalCorrupt) {
			l.noteDamaged(i)
		}
		return learnerRecord{}, fmt.Errorf("read index %d: %w", i, err)
	}
	r, err := decodeLearnerRecord(p)
	if err != nil {
		return r, fmt.Errorf("decode index %d: %w", i, err)
	}
	return r, nil
}

// appliedAt returns when this node applied the entry at index i (unix
// nanoseconds): its record's time, or for a continued record its slot's
// first record's. Should the journal not hold that one (L4 says it
// does), the entry counts as applied now: retention by age then keeps
// more than it could, never less than it must. Not under l.mu.
func (l *Learner) appliedAt(i Index) (int64, error) {
	rec, err := l.record(i)
	if err != nil || !rec.Continued {
		return rec.Time, err
	}
	first := i - Index(rec.Pos)
	l.mu.Lock()
	held := first >= l.kept
	l.mu.Unlock()
	if !held {
		return time.Now().UnixNano(), nil
	}
	rec, err = l.record(first)
	return rec.Time, err
}

// appliedEntry is where an identity went: the indices index..last (more
// than one for a batch) and the id of the entry that got them.
type appliedEntry struct {
	index, last Index
	id          EntryID
}

// Applied is what an append's waiter learns: the entry's index (a
// batch's first and last), and whether an earlier append with the same
// Idempotency-Key got it.
type Applied struct {
	Index     Index
	Last      Index
	Duplicate bool
}

// applied is what an append of id learns from where its identity went.
func (a appliedEntry) applied(id EntryID) Applied {
	return Applied{Index: a.index, Last: a.last, Duplicate: a.id != id}
}

// chosen hands the learner a chosen slot. Slots may arrive in any order
// and more than once; they are applied in slot order.
func (l *Learner) chosen(vals ...SlotValue) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chosenLocked(nil, false, vals)
}

// chosenWith is chosen, plus the memberships a peer's catch-up reply
// carries (the system entries that set them are not in the values it
// serves): each adopted as the slot that set it is applied, before any
// later slot is (M1).
func (l *Learner) chosenWith(ms []*membership, vals ...SlotValue) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chosenLocked(ms, true, vals)
}

// chosenLocked takes chosen values; fromLog says they come from a peer's
// client log (a catch-up reply), which holds only entries that got an
// index. Through l.logOnly, only those are taken (D3).
func (l *Learner) chosenLocked(ms []*membership, fromLog bool, vals []SlotValue) {
	if err := l.holdMembershipsLocked(ms); err != nil {
		l.n.fatal(err)
		return
	}
	for _, sv := range vals {
		if sv.Slot > l.applied && (fromLog || sv.Slot > l.logOnly) {
			l.pending[sv.Slot] = sv.Value
		}
		if sv.Slot > l.knownCommit {
			l.knownCommit = sv.Slot
		}
	}
	l.drainLocked(Ballot{}, 0)
}

// drainLocked applies every slot it can, in order: pending ones, and, for
// slots <= commit that the leader of ballot b declared chosen, values this
// node's acceptor accepted under exactly b (the only values of b's leader
// for those slots, hence the chosen ones). Only b's own commit counts: a
// higher commit heard from another leader says nothing about b's values.
func (l *Learner) drainLocked(b Ballot, commit Slot) {
	for {
		next := l.applied + 1
		v, ok := l.pending[next]
		if !ok && !b.IsZero() && next <= commit && next > l.logOnly {
			v, ok = l.n.acceptor.valueExactly(next, b)
		}
		if !ok {
			break
		}
		delete(l.pending, next)
		if err := l.applyLocked(next, v); err != nil {
			l.n.fatal(err)
			return
		}
	}
	if l.applied < l.knownCommit {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// applyLocked appends slot's entries to the client log (L2, L3).
func (l *Learner) applyLocked(slot Slot, v Value) error {
	// Within one value entry ids are unique (the leader queues an id
	// once); Idempotency-Keys may repeat, so only keyed entries are
	// checked against each other.
	var fresh []Entry
	var seenKeys map[string]bool // Idempotency-Keys of the fresh entries
	var setMem *membership
	for _, e := range v.Entries {
		if e.isSystem() {
			if m := l.applySystem(slot, e); m != nil {
				setMem = m
			}
			continue
		}
		if _, dup := l.recent.lookup(e.ID, e.Key); dup {
			continue
		}
		if e.Key != "" {
			if seenKeys[e.Key] {
				continue
			}
			if seenKeys == nil {
				seenKeys = make(map[string]bool)
			}
			seenKeys[e.Key] = true
		}
		fresh = append(fresh, e)
	}
	if len(fresh) > 0 {
		// Every value of a fresh entry gets an index: a batch's first
		// one the record with its id and key, the rest records with the
		// zero id and no key (continued records: no client entry's id is
		// zero), so that the log alone says where each batch begins.
		count, size, dsize := 0, 0, 0
		for _, e := range fresh {
			count += e.values()
			size += e.values()*learnerRecordOverhead + e.size()
			dsize += 1 + len(e.ID) + len(e.Key) + len(e.More)
		}
		sc := &l.scratch
		payloads := slices.Grow(sc.recs[:0], count)
		buf := slices.Grow(sc.rec[:0], size) // room for every record: none moves
		dd := slices.Grow(sc.dedups[:0], count)
		dbuf := slices.Grow(sc.dedup[:0], dsize) // D1: and for every dedup record
		now := time.Now().UnixNano()
		sum := l.sum
		add := func(id EntryID, key string, data []byte) {
			start := len(buf)
			r := learnerRecord{Slot: slot, Pos: len(payloads), N: count, Time: now, ID: id, Key: key, Data: data}
			sum += r.hash(l.last + 1 + Index(len(payloads)))
			r.Sum = sum
			buf = r.appendTo(buf)
			payloads = append(payloads, buf[start:len(buf):len(buf)])
			start = len(dbuf)
			dbuf = appendDedupRecord(dbuf, id, key)
			dd = append(dd, dbuf[start:len(dbuf):len(dbuf)])
		}
		for _, e := range fresh {
			add(e.ID, e.Key, e.Data)
			for _, d := range e.More {
				add(EntryID{}, "", d)
			}
		}
		lastRec, err := l.journal.Append(payloads...)
		if err != nil {
			return fmt.Errorf("apply slot %d: %w", slot, err)
		}
		if Index(lastRec) != l.last+Index(count) {
			return fmt.Errorf("apply slot %d: log at %d, expected %d", slot, lastRec, l.last+Index(count))
		}
		lastDedup, err := l.dedup.Append(dd...)
		if err != nil {
			return fmt.Errorf("apply slot %d: dedup journal: %w", slot, err)
		}
		if lastDedup != lastRec {
			return fmt.Errorf("apply slot %d: dedup journal at %d, client log at %d", slot, lastDedup, lastRec)
		}
		sc.keep(payloads, buf, dd, dbuf)
		l.sum = sum
		for _, e := range fresh {
			l.last++
			got := appliedEntry{index: l.last, last: l.last + Index(len(e.More)), id: e.ID}
			l.recent.remember(l.last, e.ID, e.Key)
			if l.n.onApply != nil {
				l.n.onApply(l.last, e.Data)
			}
			for _, d := range e.More {
				l.last++
				l.recent.rememberContinued(l.last)
				if l.n.onApply != nil {
					l.n.onApply(l.last, d)
				}
			}
			if len(l.waiters) == 0 {
				continue
			}
			k := e.identity()
			for _, w := range l.waiters[k] { // from got: a batch longer than the window is forgotten already
				w.ch <- got.applied(w.id)
			}
			delete(l.waiters, k)
		}
	}
	l.applied = slot
	l.appliedHint.Store(uint64(slot))
	if slot > l.knownCommit {
		l.knownCommit = slot
	}
	if setMem != nil {
		l.mems = withEarlier(l.mems, setMem)
	}
	if err := l.adoptDueLocked(); err != nil {
		return err
	}
	if l.relearn != 0 && l.last >= l.relearn {
		l.n.log.Error("client log: learned the dropped records again from peers", "file", l.n.relPath(l.journal.dir), "through", l.relearn)
		l.n.metrics.repairs.WithLabelValues("log").Inc()
		l.relearn = 0
	}
	l.n.metrics.lastIndex.Set(float64(l.last))
	l.n.metrics.appliedSlot.Set(float64(l.applied))
	l.n.metrics.commitSlot.Set(float64(l.knownCommit))
	close(l.notify)
	l.notify = make(chan struct{})
	return nil
}

// applySystem applies a system entry of slot. The first genesis entry in
// the log gives the cluster its identity and first membership; any later
// one is ignored. A membership entry sets the membership: it is returned,
// to be adopted once the slot is applied.
func (l *Learner) applySystem(slot Slot, e Entry) *membership {
	v, ok := decodeSystem(e)
	if !ok {
		return nil
	}
	if v.Genesis != "" {
		switch cid := l.n.ClusterID(); cid {
		case "":
			if len(v.Members) == 0 {
				l.n.adoptCluster(v.Genesis, fmt.Sprintf("genesis entry in slot %d", slot))
			}
			l.genesis = v.Genesis // recorded with the membership it sets
		case v.Genesis:
			// The identity came first (a hello, a catch-up reply: a
			// rebuilt disk); the entry still sets the first membership.
		default:
			return nil // a later genesis entry: ignored
		}
	}
	if len(v.Members) > 0 {
		return newMembership(v.Members, slot, v.Removed)
	}
	return nil
}

// noteCommit records that every slot <= commit is chosen, as the leader of
// ballot b says, and applies what it can now.
func (l *Learner) noteCommit(b Ballot, commit Slot, from NodeID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if commit > l.knownCommit {
		l.knownCommit = commit
		l.commitFrom = from
	} else if commit == l.knownCommit && l.commitFrom == 0 {
		l.commitFrom = from
	}
	if commit <= l.applied {
		return
	}
	l.drainLocked(b, commit)
}

// waiter is an append waiting for its entry's identity to get an index.
type waiter struct {
	id EntryID
	ch chan Applied
}

// watchDedupKeys calls f with the size of the dedup window's key buffer
// now and each time it grows, under l.mu (serve raises the default
// memory limit with it: the keys' bytes depend on the clients).
func (l *Learner) watchDedupKeys(f func(bytes int)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recent.grew = f
	f(len(l.recent.keys.buf))
}

// await registers interest in e's identity. The channel receives once an
// entry with that identity is applied: e itself, or, for an Idempotency-Key,
// whichever append with that key was chosen first (Duplicate is then set
// for everyone else). If the identity is already in the window, the
// channel is ready at once. Waiting on the identity rather than on e's
// slot matters: a duplicate never reaches the client log, so a node that
// learns the slot from a peer's log would not see e at all.
func (l *Learner) await(e Entry) <-chan Applied {
	ch := make(chan Applied, 1)
	k := e.identity()
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.recent.lookup(e.ID, e.Key); ok {
		ch <- a.applied(e.ID)
		return ch
	}
	l.waiters[k] = append(l.waiters[k], waiter{id: e.ID, ch: ch})
	return ch
}

// unawait drops e's waiter, if it is still there.
func (l *Learner) unawait(e Entry) {
	k := e.identity()
	l.mu.Lock()
	defer l.mu.Unlock()
	ws := l.waiters[k]
	for i, w := range ws {
		if w.id == e.ID {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(l.waiters, k)
	} else {
		l.waiters[k] = ws
	}
}

// hasApplied reports whether slot is applied here, without waiting for
// mu; it may answer false for a slot applied a moment ago.
func (l *Learner) hasApplied(slot Slot) bool { return Slot(l.appliedHint.Load()) >= slot }

// Applied returns the last applied slot.
func (l *Learner) Applied() Slot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applied
}

// KnownCommit returns the highest slot known to be chosen.
func (l *Learner) KnownCommit() Slot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.knownCommit
}

// Bounds returns the first retained and the last index.
func (l *Learner) Bounds() (first, last Index) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first, l.last
}

// keptBounds returns the first index the journal holds and the last one.
func (l *Learner) keptBounds() (kept, last Index) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.kept, l.last
}

// Notify returns a channel closed at the next apply.
func (l *Learner) Notify() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.notify
}

// Get returns the entry at index i.
func (l *Learner) Get(i Index) (LogEntry, error) {
	first, last := l.Bounds()
	if i < first {
		return LogEntry{}, ErrCompacted
	}
	if i > last {
		return LogEntry{}, ErrPastEnd
	}
	rec, err := l.record(i)
	if errors.Is(err, errNotFound) {
		if first, _ := l.Bounds(); i < first {
			return LogEntry{}, ErrCompacted // retention moved first meanwhile
		}
	}
	if errors.Is(err, errJournalCorrupt) {
		return LogEntry{}, fmt.Errorf("index %d: %w", i, ErrDamaged)
	}
	if err != nil {
		return LogEntry{}, err
	}
	return LogEntry{Index: i, Data: rec.Data}, nil
}

// Range returns up to limit entries from index from on.
func (l *Learner) Range(from Index, limit int) ([]LogEntry, error) {
	first, last := l.Bounds()
	if from < first {
		return nil, ErrCompacted
	}
	out := []LogEntry{}
	for i := from; i <= last && len(out) < limit; {
		ps, err := l.journal.ReadRun(uint64(i), int(min(Index(limit-len(out)), last-i+1)))
		if err != nil { // Get tells damage, compaction meanwhile, ... apart
			e, err := l.Get(i)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
			i++
			continue
		}
		for _, p := range ps {
			rec, err := decodeLearnerRecord(p)
			if err != nil {
				return nil, fmt.Errorf("decode index %d: %w", i, err)
			}
			out = append(out, LogEntry{Index: i, Data: rec.Data})
			i++
		}
	}
	return out, nil
}

// durableApplied syncs the client log and returns a slot s such that every
// slot <= s is chosen and stored on disk here, and the last index then.
func (l *Learner) durableApplied() (Slot, Index, error) {
	l.mu.Lock()
	applied, last := l.applied, l.last
	l.mu.Unlock()
	// The dedup journal too, though D2 does not need it: so that what a
	// crash leaves for it to fill in from the client log stays short.
	if err := l.syncJournals(); err != nil {
		return 0, 0, err
	}
	return applied, last, nil
}

// slotOf returns the slot of the entry at index i.
func (l *Learner) slotOf(i Index) (Slot, error) {
	rec, err := l.record(i)
	return rec.Slot, err
}

// readChosen serves catch-up: chosen values for slots from `from` on, at
// most about max entries, whole slots only.
func (l *Learner) readChosen(from Slot, next Index, max int) (CatchupResp, error) {
	if max <= 0 || max > catchupBatch {
		max = catchupBatch
	}
	l.mu.Lock()
	applied, first, last := l.applied, l.kept, l.last
	var dedupFrom Index
	var dedup [][]byte
	if next > 0 && next < first {
		dedupFrom, dedup = l.dedupDataFor(first)
	}
	l.mu.Unlock()
	resp := CatchupResp{Through: from - 1}
	if from > applied {
		return resp, nil
	}
	if next > 0 && next < first {
		// The entries the requester needs next are gone here: hand it the
		// compacted prefix instead, with the dedup state below it (L4).
		s, err := l.slotOf(first)
		if err != nil {
			return resp, err
		}
		return CatchupResp{Compacted: true, First: first, FirstSlot: s, Through: from - 1,
			DedupFrom: dedupFrom, Dedup: dedup, DedupThrough: applied}, nil
	}
	// The first index whose slot >= from. A requester that holds every
	// entry of the slots before from (and nothing else) names it: next,
	// its own last index + 1 (L2). Checked with the two records around
	// it; a binary search otherwise, which reads across the whole log
	// (each read of another segment loads all of it).
	lo, hi := first, last+1
	if next > first && next <= last {
		before, err1 := l.slotOf(next - 1)
		at, err2 := l.slotOf(next)
		if err1 == nil && err2 == nil && before < from && at >= from {
			lo, hi = next, next
		}
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		s, err := l.slotOf(mid)
		if err != nil {
			return resp, err
		}
		if s < from {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	// With next >= first, slots from `from` up to the slot of index lo
	// hold no entries the requester lacks: they were no-ops (or held only
	// duplicates) and are answered as such by their absence.
	count, size := 0, 0
	for i := lo; i <= last; i++ {
		rec, err := l.record(i)
		if err != nil {
			return resp, err
		}
		if rec.Slot > applied {
			break
		}
		n := len(resp.Values)
		if n == 0 || resp.Values[n-1].Slot != rec.Slot {
			if count >= max || size >= catchupBytes {
				resp.Through = rec.Slot - 1
				return resp, nil
			}
			resp.Values = append(resp.Values, SlotValue{Slot: rec.Slot})
			n++
		}
		es := resp.Values[n-1].Value.Entries
		if rec.ID == (EntryID{}) && len(es) > 0 { // a batch's later value (applyLocked)
			es[len(es)-1].More = append(es[len(es)-1].More, rec.Data)
		} else {
			resp.Values[n-1].Value.Entries = append(es, Entry{ID: rec.ID, Key: rec.Key, Data: rec.Data})
		}
		count++
		size += len(rec.Key) + len(rec.Data)
	}
	resp.Through = applied
	return resp, nil
}

// waitApplied returns once slot is applied here, catching up from peer.
func (l *Learner) waitApplied(ctx context.Context, slot Slot, peer NodeID) error {
	l.mu.Lock()
	if slot > l.knownCommit {
		l.knownCommit = slot
		l.commitFrom = peer
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
	for {
		l.mu.Lock()
		done, ch := l.applied >= slot, l.notify
		l.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return l.n.waitErr(ctx)
		case <-l.n.stopped:
			return ErrStopped
		}
	}
}

// run is the learner's loop: catch up whenever a chosen slot is known that
// cannot be applied from local state, and sync the client log now and then
// so a restart has less to re-learn.
func (l *Learner) run(ctx context.Context) {
	sync := time.NewTicker(200 * time.Millisecond)
	defer sync.Stop()
	retention := time.NewTicker(l.n.cfg.RetentionInterval)
	defer retention.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sync.C:
			if err := l.journal.Sync(); err != nil {
				l.n.fatal(fmt.Errorf("learner: %w", err))
				return
			}
			continue
		case <-retention.C:
			if err := l.retain(); errors.Is(err, errJournalCorrupt) {
				continue // noted for repair; retention runs again later
			} else if err != nil {
				l.n.fatal(err)
				return
			}
			if err := l.trimDedup(); err != nil {
				l.n.fatal(err)
				return
			}
			continue
		case <-l.kick:
		case <-retry.C:
		}
		if err := l.catchUp(ctx); err != nil && ctx.Err() == nil {
			l.n.log.Debug("catch-up failed", "err", err)
			retry.Reset(l.n.cfg.HeartbeatInterval)
		}
	}
}

// errNoProgress: the peer had nothing newer than we do.
var errNoProgress = errors.New("catch-up made no progress")

// catchUp pulls chosen values from the peer that announced them until
// applied reaches knownCommit.
func (l *Learner) catchUp(ctx context.Context) error {
	for {
		l.mu.Lock()
		from, target, peer, next := l.applied+1, l.knownCommit, l.commitFrom, l.last+1
		l.mu.Unlock()
		if from > target {
			return nil
		}
		if peer == 0 || peer == l.n.cfg.ID {
			peer = l.n.proposer.anyPeer()
		}
		if peer == 0 {
			return errNoProgress
		}
		cctx, cancel := context.WithTimeout(ctx, l.n.cfg.RequestTimeout)
		var resp CatchupResp
		err := l.n.call(cctx, peer, methodCatchup, CatchupReq{From: l.n.cfg.ID, Slot: from, Index: next, Max: catchupBatch, Binary: true}, &resp)
		cancel()
		if err == nil && resp.Cluster != "" {
			l.n.adoptCluster(resp.Cluster, fmt.Sprintf("catch-up from node %d", peer))
		}
		if err == nil && resp.Compacted {
			if err := l.installPrefix(resp, resp.Memberships); err != nil {
				l.n.fatal(err)
				return err
			}
			continue
		}
		if err != nil {
			l.mu.Lock()
			if l.commitFrom == peer {
				l.commitFrom = 0 // try someone else next time
			}
			l.mu.Unlock()
			return err
		}
		if resp.Through < from {
			l.mu.Lock()
			if l.commitFrom == peer {
				l.commitFrom = 0
			}
			l.mu.Unlock()
			return errNoProgress
		}
		byslot := make(map[Slot]Value, len(resp.Values))
		for _, sv := range resp.Values {
			byslot[sv.Slot] = sv.Value
		}
		vals := make([]SlotValue, 0, resp.Through-from+1)
		for s := from; s <= resp.Through; s++ {
			vals = append(vals, SlotValue{Slot: s, Value: byslot[s]})
		}
		l.chosenWith(resp.Memberships, vals...)
	}
}

// holdMembershipsLocked takes the memberships a catch-up reply carried:
// those whose slots are applied are adopted now, the rest as their slots
// are applied.
func (l *Learner) holdMembershipsLocked(ms []*membership) error {
	for _, m := range ms {
		if m != nil && m.Slot > 0 {
			l.mems = withEarlier(l.mems, m)
		}
	}
	return l.adoptDueLocked()
}

// adoptDueLocked adopts the held memberships whose slots are applied.
func (l *Learner) adoptDueLocked() error {
	for len(l.mems) > 0 && l.mems[0].Slot <= l.applied {
		m := l.mems[0]
		l.mems = l.mems[1:]
		if err := l.adoptLocked(m); err != nil {
			return err
		}
	}
	return nil
}

// adoptLocked records m, whose slot is applied, once the client log is
// synced through what is applied: IDENTITY then says that every slot up
// to the applied one is on disk, so a restart counts them applied even
// where they left no record (system entries, no-ops), and goes by m
// (M1). Without that, a restart would find its applied slot below the
// memberships it recorded.
func (l *Learner) adoptLocked(m *membership) error {
	if err := l.journal.Sync(); err != nil {
		return fmt.Errorf("learner: sync before recording a membership: %w", err)
	}
	cluster := ""
	if l.genesis != "" && m.Slot == l.applied {
		cluster, l.genesis = l.genesis, ""
	}
	l.n.adoptMembershipApplied(m, l.applied, l.last, cluster)
	return nil
}

// installedSlot is the slot applied when the journal's numbering was last
// reset by installPrefix (0 if never).
func (l *Learner) installedSlot() Slot {
	v, _ := strconv.ParseUint(string(l.journal.Meta()), 10, 64)
	return Slot(v)
}

// installPrefix makes this node's client log continue at a peer's first
// kept index, resp.First: its own entries, all older than that, are
// dropped, every slot before resp.FirstSlot counts as applied, and the
// dedup state becomes the one the peer sent for the window below it
// (D3). Used when a peer has compacted away what this node would need to
// catch up entry by entry.
func (l *Learner) installPrefix(resp CatchupResp, ms []*membership) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	first, firstSlot := resp.First, resp.FirstSlot
	if l.last+1 >= first || firstSlot == 0 {
		return l.holdMembershipsLocked(ms) // caught up meanwhile
	}
	if len(resp.Dedup) > 0 && resp.DedupFrom+Index(len(resp.Dedup)) != first {
		return fmt.Errorf("learner: install prefix at %d: dedup records from %d do not end below it", first, resp.DedupFrom)
	}
	for k, p := range resp.Dedup {
		if _, _, err := decodeDedupRecord(p); err != nil {
			return fmt.Errorf("learner: install prefix at %d: index %d: %w", first, resp.DedupFrom+Index(k), err)
		}
	}
	applied := max(l.applied, firstSlot-1)
	in := prefixInstall{First: first, Applied: applied, DedupFrom: resp.DedupFrom, Dedup: resp.Dedup,
		LogOnly: max(l.logOnly, resp.DedupThrough)}
	if err := l.beginInstall(in); err != nil {
		return fmt.Errorf("learner: install prefix at %d: %w", first, err)
	}
	if err := l.finishInstall(in); err != nil {
		return fmt.Errorf("learner: install prefix at %d: %w", first, err)
	}
	l.n.log.Warn("installed a peer's compacted prefix", "first", first, "slot", firstSlot, "dedup_records", len(resp.Dedup))
	l.n.metrics.prefixInstalls.Inc()
	l.first, l.kept, l.last, l.applied, l.logOnly = first, first, first-1, applied, in.LogOnly
	l.appliedHint.Store(uint64(applied))
	l.n.metrics.lastIndex.Set(float64(l.last))
	l.sum, l.sumFrom = 0, first
	l.n.metrics.firstIndex.Set(float64(first))
	if l.knownCommit < applied {
		l.knownCommit = applied
	}
	for s := range l.pending {
		if s <= applied {
			delete(l.pending, s)
		}
	}
	l.recent.reset()
	for k, p := range resp.Dedup {
		if err := l.rememberRecord(resp.DedupFrom+Index(k), p); err != nil {
			return err
		}
	}
	for _, p := range resp.Dedup { // appends here whose entry got an index in the prefix
		id, key, _ := decodeDedupRecord(p)
		if id == (EntryID{}) {
			continue
		}
		ident := identityOf(id, key)
		if a, ok := l.recent.lookup(id, key); ok {
			for _, w := range l.waiters[ident] {
				w.ch <- a.applied(w.id)
			}
			delete(l.waiters, ident)
		}
	}
	if err := l.holdMembershipsLocked(ms); err != nil {
		return err
	}
	close(l.notify)
	l.notify = make(chan struct{})
	l.drainLocked(Ballot{}, 0)
	return nil
}

// retain applies the retention policy: it moves the first index readers
// get forward to the most any limit asks for (the last entry stays).
func (l *Learner) retain() error {
	cfg := l.n.cfg
	if cfg.RetainEntries <= 0 && cfg.RetainAge <= 0 && cfg.RetainBytes <= 0 {
		return nil
	}
	l.mu.Lock()
	first, last, kept := l.first, l.last, l.kept
	l.mu.Unlock()
	if last < first {
		return nil
	}
	var cut Index
	if cfg.RetainEntries > 0 && last >= Index(cfg.RetainEntries) {
		cut = max(cut, last-Index(cfg.RetainEntries)+1)
	}
	if cfg.RetainAge > 0 {
		oldest := time.Now().Add(-cfg.RetainAge).UnixNano()
		lo, hi := first, last+1 // first index applied at or after oldest
		for lo < hi {
			mid := lo + (hi-lo)/2
			at, err := l.appliedAt(mid)
			if err != nil {
				return err
			}
			if at < oldest {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		cut = max(cut, lo)
	}
	if cfg.RetainBytes > 0 {
		if size := dirSize(l.journal.dir); size > cfg.RetainBytes {
			count := int64(last - kept + 1)
			drop := Index(count * (size - cfg.RetainBytes) / size)
			cut = max(cut, kept+drop)
		}
	}
	_, err := l.compactBefore(cut)
	return err
}

// compactBefore drops the entries below index cut, all but the last one
// if cut asks for more, and returns the first index readers get now. The
// journal is cut at the first entry of cut's slot (L4), after the dedup
// journal is synced (D2).
func (l *Learner) compactBefore(cut Index) (Index, error) {
	l.compactMu.Lock()
	defer l.compactMu.Unlock()
	l.mu.Lock()
	cut = min(cut, l.last)
	if cut <= l.first {
		defer l.mu.Unlock()
		return l.first, nil
	}
	at := cut // where the journal is cut: the first record of cut's slot
	for at > l.kept {
		rec, err := l.record(at)
		if err != nil {
			defer l.mu.Unlock()
			return l.first, err
		}
		if rec.Pos == 0 {
			break
		}
		at -= Index(min(rec.Pos, int(at-l.kept)))
	}
	kept := l.kept
	l.mu.Unlock()
	// Sync first, without holding up applies: the records kept must be
	// durable, so that after any crash the log still holds a record at
	// or past the cut, and with it the slot that maps slots to indices;
	// and the dedup journal must hold every identity the client log
	// drops (D2).
	if err := l.syncJournals(); err != nil {
		return cut, fmt.Errorf("compact before %d: %w", cut, err)
	}
	if cut > at {
		if err := l.writeVisibleFirst(cut); err != nil {
			return cut, fmt.Errorf("learner: compact before %d: %w", cut, err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kept != kept {
		return l.first, nil // a prefix was installed meanwhile: nothing left to cut
	}
	if at > l.kept {
		if err := l.journal.TruncateFront(uint64(at)); err != nil {
			return l.first, fmt.Errorf("learner: compact before %d: %w", cut, err)
		}
		l.kept = at
	}
	l.first = cut
	l.n.metrics.firstIndex.Set(float64(cut))
	return cut, nil
}
