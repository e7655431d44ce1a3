package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// acceptor.go: the acceptor role.
//
// Invariants, kept by the transitions below and by Acceptor's wrapper:
//   - A1: promised never decreases.
//   - A2: a value is accepted only under a ballot >= promised, and accepting
//     raises promised to that ballot.
//   - A3: no reply leaves before the journal holds, synced, every record
//     written up to and including the request's own (group commit may
//     share one fsync among many requests, never skip one). The one
//     exception answers no one: AcceptUnsynced, the leader's acceptance of
//     its own proposals, which its proposer counts only after Sync
//     (proposer invariant P5). Any later reply syncs it too, as it syncs
//     every record before its own.
//   - A4: state for slots <= floor is dropped only once those slots are
//     chosen and stored, synced, in this node's learner log; every promise
//     reports floor so a new leader learns those slots before it proposes.
//     The checkpoint that drops them also records floorIndex, the last
//     client index the learner held then: a learner that finds fewer at
//     start lost synced records and must not take slots <= floor for
//     applied (Learner.load).

// acceptorState is the acceptor's memory: pure data, changed only by the
// transition methods, which return the record that must be made durable
// before their reply is sent.
type acceptorState struct {
	promised   Ballot
	floor      Slot
	floorIndex Index              // the learner's last index when floor was set (A4)
	indexKnown bool               // floorIndex was recorded (checkpoints of older builds lack it)
	accepted   map[Slot]SlotValue // slot > floor only
}

// acceptorRecord is one journal record: a promise, an acceptance of a
// batch of slots, a checkpoint that restates the whole state, or a seal
// (no state: a record that says every one before it is synced).
type acceptorRecord struct {
	Kind       string      `json:"k"` // "p", "a", "c" or "s"
	Promised   Ballot      `json:"p"`
	Floor      Slot        `json:"f,omitempty"`
	Values     []SlotValue `json:"v,omitempty"`
	FloorIndex *Index      `json:"fi,omitempty"` // checkpoints only; nil in older builds' records
}

func newAcceptorState() *acceptorState {
	return &acceptorState{accepted: make(map[Slot]SlotValue)}
}

// prepare implements phase 1b: "If an acceptor receives a prepare request
// with number n greater than that of any prepare request to which it has
// already responded, then it responds with a promise not to accept any
// more proposals numbered less than n and with the highest-numbered
// proposal (if any) that it has accepted." A repeat of the promised ballot
// is answered again (duplicated messages are harmless); a lower one is
// refused with the current promise so the proposer can move past it.
func (s *acceptorState) prepare(b Ballot, from Slot) (Promise, *acceptorRecord) {
	if b.Less(s.promised) {
		return Promise{OK: false, Promised: s.promised, Floor: s.floor}, nil
	}
	var rec *acceptorRecord
	if s.promised.Less(b) {
		s.promised = b
		rec = &acceptorRecord{Kind: "p", Promised: b}
	}
	p := Promise{OK: true, Promised: b, Floor: s.floor}
	for slot, sv := range s.accepted {
		if slot >= from {
			p.Accepted = append(p.Accepted, sv)
		}
	}
	sort.Slice(p.Accepted, func(i, j int) bool { return p.Accepted[i].Slot < p.Accepted[j].Slot })
	return p, rec
}

// accept implements phase 2b: "If an acceptor receives an accept request
// for a proposal numbered n, it accepts the proposal unless it has already
// responded to a prepare request having a number greater than n." Slots
// at or below the floor are already chosen; any proposal for them under a
// live ballot carries the chosen value, so they are acknowledged without
// being stored again.
func (s *acceptorState) accept(b Ballot, vals []SlotValue) (Accepted, *acceptorRecord) {
	if b.Less(s.promised) {
		return Accepted{OK: false, Promised: s.promised}, nil
	}
	s.promised = b
	rec := &acceptorRecord{Kind: "a", Promised: b}
	for _, v := range vals {
		if v.Slot <= s.floor {
			continue
		}
		sv := SlotValue{Slot: v.Slot, Ballot: b, Value: v.Value}
		s.accepted[v.Slot] = sv
		rec.Values = append(rec.Values, sv)
	}
	return Accepted{OK: true, Promised: b}, rec
}

// compact drops the state of every slot <= floor, where index is the
// learner's last index with every slot <= floor applied, and returns the
// checkpoint record that restates what is left.
func (s *acceptorState) compact(floor Slot, index Index) *acceptorRecord {
	if floor > s.floor || (floor == s.floor && !s.indexKnown) {
		s.floor = floor
		s.floorIndex, s.indexKnown = index, true
	}
	rec := &acceptorRecord{Kind: "c", Promised: s.promised, Floor: s.floor}
	if s.indexKnown {
		fi := s.floorIndex
		rec.FloorIndex = &fi
	}
	for slot, sv := range s.accepted {
		if slot <= s.floor {
			delete(s.accepted, slot)
			continue
		}
		rec.Values = append(rec.Values, sv)
	}
	sort.Slice(rec.Values, func(i, j int) bool { return rec.Values[i].Slot < rec.Values[j].Slot })
	return rec
}

// replay applies a journal record at start.
func (s *acceptorState) replay(r acceptorRecord) {
	if r.Kind == "c" {
		s.floor = r.Floor
		s.floorIndex, s.indexKnown = 0, r.FloorIndex != nil
		if r.FloorIndex != nil {
			s.floorIndex = *r.FloorIndex
		}
		s.accepted = make(map[Slot]SlotValue, len(r.Values))
	}
	if s.promised.Less(r.Promised) {
		s.promised = r.Promised
	}
	for _, sv := range r.Values {
		if sv.Slot > s.floor {
			s.accepted[sv.Slot] = sv
		}
	}
}

// Acceptor is the durable acceptor: acceptorState behind a mutex, with a
// journal under it. Safe for concurrent use.
type Acceptor struct {
	journal *journal

	damaged   bool       // its journal held damage at open: the state is incomplete (see openAcceptor)
	compactMu sync.Mutex // serialises compact: each truncates before its own checkpoint

	mu         sync.Mutex // protects the fields below
	state      *acceptorState
	sinceCheck int           // records written since the last checkpoint
	bytesSince int           // and their bytes (checkpointBytes)
	lastWrite  time.Time     // when the last record was appended
	sealed     uint64        // the last seal record written
	recBuf     []byte        // step's encoding buffer, kept up to maxKeptRecordBuf
	bytesDue   chan struct{} // wakes run once checkpointBytes have built up

	// hook, nil outside tests, is called at "written" and "synced"; an
	// error (wrapping errInjected) fails the request there.
	hook func(point string) error
}

// maxKeptRecordBuf bounds the encoding buffer an acceptor keeps between
// records: a larger one (a big batch's accept) is left to the collector.
const maxKeptRecordBuf = 1 << 20

// errInjected marks a failure a test injected: it fails one request and,
// unlike a real storage error, does not stop the node.
var errInjected = errors.New("injected fault")

// openAcceptor opens the acceptor's journal in dir and replays it. A
// record that fails its check, at the tail (other than a torn one) or
// before it, is a forgotten promise or acceptance: onDamage, if set, hears
// of it before anything is dropped (so that the node can make its
// decision to rebuild durable first), and the acceptor comes back with
// damaged set and its state incomplete. Without onDamage, damage is an
// error.
func openAcceptor(dir string, onSync func(time.Duration), onDamage func(what string) error) (*Acceptor, error) {
	damaged := false
	onTail := func(d tailDamage) (bool, error) {
		if !d.Damaged {
			return false, nil // a crash tore what was never synced, never acknowledged
		}
		if onDamage == nil {
			return false, fmt.Errorf("acceptor: records %d.. of %s are damaged: %w", d.From, d.Segment, errJournalCorrupt)
		}
		damaged = true
		return false, onDamage(fmt.Sprintf("records from %d at the end of %s", d.From, filepath.Base(d.Segment)))
	}
	j, err := openJournal(dir, journalOptions{OnSync: onSync, OnTailDamage: onTail})
	if err != nil {
		return nil, err
	}
	a := &Acceptor{journal: j, state: newAcceptorState(), damaged: damaged, bytesDue: make(chan struct{}, 1)}
	first, last := j.Bounds()
	for i := first; i <= last && last > 0 && !a.damaged; i++ {
		p, err := j.Read(i)
		if errors.Is(err, errJournalCorrupt) && onDamage != nil {
			if err := onDamage(fmt.Sprintf("record %d in %s", i, j.segmentOf(i))); err != nil {
				j.Close()
				return nil, err
			}
			a.damaged = true
			break
		}
		if err != nil {
			j.Close()
			return nil, fmt.Errorf("acceptor: replay record %d: %w", i, err)
		}
		r, err := decodeAcceptorRecord(p)
		if err != nil {
			j.Close()
			return nil, fmt.Errorf("acceptor: replay record %d: %w", i, err)
		}
		a.state.replay(r)
		a.sinceCheck++
		a.bytesSince += len(p)
	}
	return a, nil
}

// close seals the journal (see seal: after a clean stop, damage to the
// last records is then told from a torn tail) and closes it.
func (a *Acceptor) close() error {
	err := a.sealNow()
	if errors.Is(err, errJournalClosed) {
		err = nil
	}
	return errors.Join(err, a.journal.Close())
}

// step runs a transition under the lock, appends its record, and returns
// the journal position the reply must wait for.
func (a *Acceptor) step(f func(*acceptorState) *acceptorRecord) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec := f(a.state)
	if rec == nil {
		_, last := a.journal.Bounds()
		return last, nil
	}
	p := rec.appendTo(a.recBuf[:0])
	seq, err := a.journal.Append(p) // copies p
	if cap(p) <= maxKeptRecordBuf {
		a.recBuf = p
	}
	if err != nil {
		return 0, fmt.Errorf("acceptor: %w", err)
	}
	a.sinceCheck++
	a.bytesSince += len(p)
	if a.bytesSince >= checkpointBytes {
		select {
		case a.bytesDue <- struct{}{}:
		default:
		}
	}
	a.lastWrite = time.Now()
	return seq, nil
}

// Prepare handles phase 1a durably.
func (a *Acceptor) Prepare(b Ballot, from Slot) (Promise, error) {
	var p Promise
	err := a.transition(func(s *acceptorState) *acceptorRecord {
		var rec *acceptorRecord
		p, rec = s.prepare(b, from)
		return rec
	})
	if err != nil {
		return Promise{}, fmt.Errorf("prepare %s: %w", b, err)
	}
	return p, nil
}

// Accept handles phase 2a durably.
func (a *Acceptor) Accept(b Ballot, vals []SlotValue) (Accepted, error) {
	r, seq, err := a.AcceptUnsynced(b, vals)
	if err != nil {
		return Accepted{}, err
	}
	if err := a.Sync(seq); err != nil {
		return Accepted{}, fmt.Errorf("accept %s: %w", b, err)
	}
	return r, nil
}

// AcceptUnsynced is Accept for the leader's own proposals without the
// fsync: it journals the acceptance and returns its record number, to
// pass to Sync before the acceptance may count toward a majority (A3, P5).
// Should the node crash first, the acceptance is lost, which is safe: no
// one was told of it.
func (a *Acceptor) AcceptUnsynced(b Ballot, vals []SlotValue) (Accepted, uint64, error) {
	var r Accepted
	seq, err := a.write(func(s *acceptorState) *acceptorRecord {
		var rec *acceptorRecord
		r, rec = s.accept(b, vals)
		return rec
	})
	if err != nil {
		return Accepted{}, 0, fmt.Errorf("accept %s: %w", b, err)
	}
	return r, seq, nil
}

// Sync returns once record seq and every one before it are synced. The
// test hook may fail it after the sync, as a crash before the reply would.
func (a *Acceptor) Sync(seq uint64) error {
	err := a.journal.SyncTo(seq)
	if err == nil && a.hook != nil {
		err = a.hook("synced")
	}
	return err
}

// write runs f under the lock and journals its record, unsynced. The test
// hook may fail it after the write, as a crash before the sync would.
func (a *Acceptor) write(f func(*acceptorState) *acceptorRecord) (uint64, error) {
	seq, err := a.step(f)
	if err == nil && a.hook != nil {
		err = a.hook("written")
	}
	return seq, err
}

// transition runs f under the lock, journals its record and returns once
// that record and every one before it are synced (A3).
func (a *Acceptor) transition(f func(*acceptorState) *acceptorRecord) error {
	seq, err := a.write(f)
	if err != nil {
		return err
	}
	return a.Sync(seq)
}

// Promised returns the highest ballot promised.
func (a *Acceptor) Promised() Ballot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.promised
}

// Floor returns the last slot whose state was dropped as chosen and stored.
func (a *Acceptor) Floor() Slot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.floor
}

// valueExactly returns the value accepted for slot under ballot b exactly.
// The leader of b proposes one value per slot, so if that leader declares
// the slot chosen, this is the chosen value (learner invariant L1). A value
// accepted under any other ballot proves nothing about what was chosen.
func (a *Acceptor) valueExactly(slot Slot, b Ballot) (Value, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sv, ok := a.state.accepted[slot]
	if !ok || sv.Ballot != b {
		return Value{}, false
	}
	return sv.Value, true
}

// compact checkpoints the state above the learner's durable applied slot
// floor, whose last index is index, and drops the journal before the
// checkpoint (invariant A4).
func (a *Acceptor) compact(floor Slot, index Index) error {
	a.compactMu.Lock() // the run loop's and a scrub's checkpoints, one at a time
	defer a.compactMu.Unlock()
	a.mu.Lock()
	rec := a.state.compact(floor, index)
	seq, err := a.journal.Append(rec.encode())
	if err == nil {
		a.sinceCheck, a.bytesSince = 0, 0
	}
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("acceptor checkpoint: %w", err)
	}
	if err := a.journal.SyncTo(seq); err != nil {
		return fmt.Errorf("acceptor checkpoint: %w", err)
	}
	if err := a.journal.TruncateFront(seq); err != nil {
		return fmt.Errorf("acceptor checkpoint: %w", err)
	}
	return nil
}

// install replaces the acceptor's state with promised, floor (whose last
// client index is index) and the accepted values vals (slots above floor
// only), in one synced checkpoint: a node that founds a cluster, with
// empty state, or that rebuilt its state from its peers (recovery.go).
func (a *Acceptor) install(promised Ballot, floor Slot, index Index, vals []SlotValue) error {
	a.mu.Lock()
	s := &acceptorState{promised: promised, floor: floor, floorIndex: index, indexKnown: true, accepted: make(map[Slot]SlotValue, len(vals))}
	for _, sv := range vals {
		if sv.Slot > floor {
			s.accepted[sv.Slot] = sv
		}
	}
	rec := s.compact(floor, index)
	seq, err := a.journal.Append(rec.encode())
	if err == nil {
		a.state, a.sinceCheck, a.bytesSince, a.lastWrite = s, 0, 0, time.Now()
	}
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("acceptor install: %w", err)
	}
	if err := a.journal.SyncTo(seq); err != nil {
		return fmt.Errorf("acceptor install: %w", err)
	}
	return nil
}

// forget drops the acceptor's state and its journal: the state cannot be
// trusted (damaged, or a rebuild a crash cut short) and is rebuilt from
// peers before the node votes (recovery.go).
func (a *Acceptor) forget() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.state, a.sinceCheck, a.bytesSince, a.sealed = newAcceptorState(), 0, 0, 0
	if err := a.journal.Reset(0, nil); err != nil {
		return fmt.Errorf("acceptor: forget: %w", err)
	}
	return nil
}

// voted reports whether the state records any vote: a promise, an
// acceptance or a floor.
func (a *Acceptor) voted() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.state.promised.IsZero() || a.state.floor > 0 || len(a.state.accepted) > 0
}

// FloorIndex returns the learner's last index when the floor was set,
// and whether a checkpoint recorded it (A4).
func (a *Acceptor) FloorIndex() (Index, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.floorIndex, a.state.indexKnown
}

// sealIdle is how long the journal must have been written to no more
// before seal writes its record.
const sealIdle = 200 * time.Millisecond

// seal, once no record has been written for sealIdle, syncs the journal
// and appends and syncs a seal record: one whose synced mark covers every
// record before it. Damage to the last records before a pause is then
// told from a crash's torn tail at the next open (the seal is a good
// record written once they were synced: see tailDamage); without it, the
// last record written before the node went idle could be damaged and
// dropped as torn. Under load each record's mark covers the records
// synced before it, so the window where the two cannot be told apart is
// the last group commit before a crash.
func (a *Acceptor) seal(now time.Time) error {
	a.mu.Lock()
	due := now.Sub(a.lastWrite) >= sealIdle
	a.mu.Unlock()
	if !due {
		return nil
	}
	return a.sealNow()
}

// sealNow writes a seal unless the last record is one.
func (a *Acceptor) sealNow() error {
	a.mu.Lock()
	_, last := a.journal.Bounds()
	due := last > a.sealed
	promised := a.state.promised
	a.mu.Unlock()
	if !due {
		return nil
	}
	if err := a.journal.SyncTo(last); err != nil {
		return fmt.Errorf("acceptor seal: %w", err)
	}
	a.mu.Lock()
	if _, cur := a.journal.Bounds(); cur != last {
		a.mu.Unlock()
		return nil // written to meanwhile: not idle after all
	}
	seq, err := a.journal.Append((&acceptorRecord{Kind: "s", Promised: promised}).encode())
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("acceptor seal: %w", err)
	}
	if err := a.journal.SyncTo(seq); err != nil {
		return fmt.Errorf("acceptor seal: %w", err)
	}
	a.mu.Lock()
	a.sealed = max(a.sealed, seq)
	a.mu.Unlock()
	return nil
}

// checkpointBytes: a checkpoint is also due once this many bytes of
// records have built up, however few records they are. Until then the
// accepted values stay in memory (they point into the messages that
// brought them), so with batch appends a count of records alone would
// let memory grow to CheckpointEvery whole slots. The record that
// crosses it wakes the loop (bytesDue) rather than leave the values for
// its next tick: at a few hundred batches a second the tick kept about
// twice as many in memory, and the collector running under the memory
// limit for them.
const checkpointBytes = 4 << 20

// run returns the acceptor's background loop: it compacts the journal once
// enough records (or bytes of them) have built up and the learner has
// stored more slots, and seals it when it goes idle.
func (a *Acceptor) run(n *Node) func(context.Context) {
	return func(ctx context.Context) {
		t := time.NewTicker(min(250*time.Millisecond, n.cfg.RetentionInterval))
		defer t.Stop()
		for {
			var now time.Time
			select {
			case <-ctx.Done():
				return
			case now = <-t.C:
			case <-a.bytesDue:
				now = time.Now()
			}
			if err := a.seal(now); err != nil {
				n.storageFailed(err)
				return
			}
			a.mu.Lock()
			due := a.sinceCheck >= n.cfg.CheckpointEvery || a.bytesSince >= checkpointBytes
			floor := a.state.floor
			a.mu.Unlock()
			if !due {
				continue
			}
			stored, index, err := n.learner.durableApplied()
			if err != nil {
				n.fatal(err)
				return
			}
			if stored <= floor {
				continue
			}
			if err := a.compact(stored, index); err != nil {
				n.fatal(err)
				return
			}
		}
	}
}
