package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"time"
)

// repair.go: damage to the client log, found and repaired from peers.
//
// Every read of a client log record checks it (wal.go): a record that
// fails its check is never served, proposed or handed to a peer. The
// learner notes its index as damaged and the repair loop fetches the
// record from a peer that holds it (the entry at an index is the same on
// every node, invariant L2; only the time it was applied differs, which
// retention by age may see), rewrites the segment file that holds it
// (journal.RewriteRecords), logs an ERROR naming the file and the range,
// and counts it in paxoslog_repairs_total{journal="log"}.
//
// Damage is found where records are read: serving reads and feeds,
// catch-up for peers, retention, and a scrub that reads every closed
// segment file soon after start and then on a schedule. Damage at the
// end of the tail segment is found as the journal opens; those records
// are dropped and learned again by slot, like a torn tail (Learner.load).
// The dedup state has its own journal (dedup.go): a damaged record there
// is rewritten from the client log as the node opens, or from memory when
// the scrub finds it.
//
// Only when every other member has answered and none holds a damaged
// record any more (each compacted past it) does the node stop, with one
// line that says so.

// ErrDamaged: the entry at an index is damaged on this node's disk and is
// being repaired from its peers.
var ErrDamaged = errors.New("entry is damaged on this node's disk and is being repaired from its peers")

// methodRecords fetches client log records by index (repair).
const methodRecords = "records"

// maxRepairRecords bounds the records one repair request asks for.
const maxRepairRecords = 1024

// RecordsReq asks for the client log records at indices First..Last.
type RecordsReq struct {
	From  NodeID `json:"from"`
	First Index  `json:"first"`
	Last  Index  `json:"last"`
}

// RecordsResp carries the records asked for that the peer holds, as
// their payloads (learnerRecord encoding), from index First of the
// request on; FirstHeld and LastHeld are the peer's own bounds.
type RecordsResp struct {
	Records   [][]byte `json:"records"`
	FirstHeld Index    `json:"first_held"`
	LastHeld  Index    `json:"last_held"`
}

// readRecords serves methodRecords: the records of req.First..req.Last
// this node holds, checked, or none if it does not hold req.First.
func (l *Learner) readRecords(req RecordsReq) (RecordsResp, error) {
	first, last := l.keptBounds()
	resp := RecordsResp{FirstHeld: first, LastHeld: last}
	if req.First < first || req.First > last || req.Last < req.First {
		return resp, nil
	}
	to := min(req.Last, last, req.First+maxRepairRecords-1)
	for i := req.First; i <= to; i++ {
		p, err := l.journal.Read(uint64(i))
		if err != nil {
			if errors.Is(err, errJournalCorrupt) {
				l.noteDamaged(i)
			}
			return RecordsResp{}, fmt.Errorf("records: index %d: %w", i, err)
		}
		resp.Records = append(resp.Records, p)
	}
	return resp, nil
}

// noteDamaged records that index i failed its check here, and wakes the
// repair loop. Safe to call with or without l.mu held.
func (l *Learner) noteDamaged(i Index) {
	l.dmgMu.Lock()
	_, known := l.damaged[i]
	if !known {
		l.damaged[i] = struct{}{}
	}
	l.dmgMu.Unlock()
	// (A hole left at open is known already: logged there, not again.)
	if !known {
		l.n.log.Error("client log record fails its check; repairing it from peers", "file", l.journal.segmentOf(uint64(i)), "index", i)
	}
	select {
	case l.repairKick <- struct{}{}:
	default:
	}
}

// isDamaged reports whether index i is known damaged and not repaired.
func (l *Learner) isDamaged(i Index) bool {
	l.dmgMu.Lock()
	defer l.dmgMu.Unlock()
	_, ok := l.damaged[i]
	return ok
}

// damagedRuns returns the damaged indices still retained, as runs of
// consecutive indices of at most maxRepairRecords, and forgets those that
// retention dropped meanwhile.
func (l *Learner) damagedRuns() [][2]Index {
	first, last := l.keptBounds()
	l.dmgMu.Lock()
	var idx []Index
	for i := range l.damaged {
		if i < first || i > last {
			delete(l.damaged, i) // dropped (retention, or at the end as the log opened)
			continue
		}
		idx = append(idx, i)
	}
	l.dmgMu.Unlock()
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	var runs [][2]Index
	for _, i := range idx {
		if k := len(runs); k > 0 && runs[k-1][1]+1 == i && i-runs[k-1][0] < maxRepairRecords {
			runs[k-1][1] = i
			continue
		}
		runs = append(runs, [2]Index{i, i})
	}
	return runs
}

// errNoPeerHolds: every other member answered, and none holds a record
// that is damaged here.
var errNoPeerHolds = errors.New("no peer holds the damaged records any more")

// repairLoop repairs damaged records, and runs the scrub.
func (l *Learner) repairLoop(ctx context.Context) {
	retry := time.NewTimer(0) // a first pass at once: holes found as the journal opened
	defer retry.Stop()
	// The first scrub soon after start: a restart (a crash, a power cut)
	// is when damage is most likely to be new, and the dedup window is no
	// longer read from the client log as the node opens.
	scrub := time.NewTimer(min(l.n.cfg.ScrubInterval, l.n.cfg.ElectionTimeout))
	defer scrub.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.repairKick:
		case <-retry.C:
		case <-scrub.C:
			l.scrub(ctx)
			scrub.Reset(l.n.cfg.ScrubInterval)
		}
		for _, run := range l.damagedRuns() {
			err := l.repair(ctx, run[0], run[1])
			if errors.Is(err, errNoPeerHolds) {
				l.n.fatal(fmt.Errorf("client log records %d..%d in %s are damaged and no other member holds them any more: restore this node's data from a backup or replace the node",
					run[0], run[1], l.journal.segmentOf(uint64(run[0]))))
				return
			}
			if err != nil && ctx.Err() == nil {
				l.n.log.Debug("repair failed; trying again", "from", run[0], "through", run[1], "err", err)
				retry.Reset(l.n.cfg.ElectionTimeout)
			}
		}
	}
}

// repair fetches the records of first..last from a peer that holds them
// and rewrites them here.
func (l *Learner) repair(ctx context.Context, first, last Index) error {
	others := l.n.others()
	if len(others) == 0 {
		return errNoPeerHolds
	}
	rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	if leader, _, _ := l.n.proposer.leaderInfo(); leader != 0 && leader != l.n.cfg.ID {
		for i, id := range others {
			if id == leader {
				others[0], others[i] = others[i], others[0]
			}
		}
	}
	answered, compacted := 0, 0
	var lastErr error
	for _, peer := range others {
		cctx, cancel := context.WithTimeout(ctx, l.n.cfg.RequestTimeout)
		var resp RecordsResp
		err := l.n.call(cctx, peer, methodRecords, RecordsReq{From: l.n.cfg.ID, First: first, Last: last}, &resp)
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		answered++
		if resp.FirstHeld > first {
			compacted++
			continue
		}
		if Index(len(resp.Records)) != last-first+1 {
			lastErr = fmt.Errorf("node %d holds %d of the %d records", peer, len(resp.Records), last-first+1)
			continue
		}
		recs := make([]learnerRecord, len(resp.Records))
		for k, p := range resp.Records {
			rec, err := decodeLearnerRecord(p)
			if err != nil {
				return fmt.Errorf("record %d from node %d: %w", first+Index(k), peer, err)
			}
			recs[k] = rec
		}
		fix, agrees := l.withOwnSums(first, recs)
		if !agrees {
			l.n.log.Error("the records a peer holds differ from what this node held at those indices (their sums disagree)",
				"peer", peer, "from", first, "through", last)
		}
		files, err := l.journal.RewriteRecords(fix)
		if errors.Is(err, errNotFound) {
			return err // retention dropped them meanwhile: forgotten on the next pass
		}
		if err != nil {
			l.n.fatal(fmt.Errorf("learner: repair: %w", err))
			return err
		}
		l.repaired(first, last)
		l.n.log.Error("repaired damaged client log records from a peer", "file", fmt.Sprint(files), "from", first, "through", last, "peer", peer)
		l.n.metrics.repairs.WithLabelValues("log").Inc()
		return nil
	}
	if answered == len(others) && compacted == len(others) {
		return errNoPeerHolds
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no peer holds records %d..%d yet", first, last)
	}
	return lastErr
}

// withOwnSums encodes records fetched from a peer for indices first.. with
// this node's running sums (a peer's sums start where its log does, this
// node's where its own does: check.go), counted on from the record before
// them or back from the one after. It reports whether the sums meet the
// record after them, that is, whether the entries are those this node
// held when it wrote that record.
func (l *Learner) withOwnSums(first Index, recs []learnerRecord) (map[uint64][]byte, bool) {
	last := first + Index(len(recs)) - 1
	sumOf := func(i Index) (uint64, bool) {
		if l.isDamaged(i) {
			return 0, false
		}
		rec, err := l.record(i)
		if err != nil || !rec.HasSum {
			return 0, false
		}
		return rec.Sum, true
	}
	fix := make(map[uint64][]byte, len(recs))
	before, okBefore := sumOf(first - 1)
	after, okAfter := sumOf(last + 1)
	var afterRec learnerRecord
	if okAfter {
		afterRec, _ = l.record(last + 1)
	}
	switch {
	case okBefore:
		s := before
		for k := range recs {
			s += recs[k].hash(first + Index(k))
			recs[k].Sum, recs[k].HasSum = s, true
		}
	case okAfter:
		s := after - afterRec.hash(last+1)
		for k := len(recs) - 1; k >= 0; k-- {
			recs[k].Sum, recs[k].HasSum = s, true
			s -= recs[k].hash(first + Index(k))
		}
	default: // no sum of this node's to count from: the records go without,
		// in full, a continued one with its slot's first record's time
		// (or, not found, now: retention by age then keeps it longer,
		// where a zero would let it cut younger entries)
		for k := range recs {
			recs[k].HasSum = false
			if !recs[k].Continued {
				continue
			}
			recs[k].Time = time.Now().UnixNano()
			if j := k - recs[k].Pos; j >= 0 {
				recs[k].Time = recs[j].Time
			} else if at, err := l.appliedAt(first - Index(-j)); err == nil {
				recs[k].Time = at
			}
		}
	}
	for k, rec := range recs {
		if rec.HasSum {
			fix[uint64(first)+uint64(k)] = rec.appendTo(nil)
		} else {
			fix[uint64(first)+uint64(k)] = appendUnsummed(rec)
		}
	}
	agrees := true
	if okBefore && okAfter {
		agrees = recs[len(recs)-1].Sum+afterRec.hash(last+1) == after
	}
	return fix, agrees
}

// appendUnsummed encodes rec in the older form, without a sum, always in
// full (that form has no short one).
func appendUnsummed(rec learnerRecord) []byte {
	return rec.appendFields(nil, false)
}

// repaired forgets first..last as damaged and wakes readers and feeds
// waiting on a damaged entry.
func (l *Learner) repaired(first, last Index) {
	l.dmgMu.Lock()
	for i := first; i <= last; i++ {
		delete(l.damaged, i)
	}
	l.dmgMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.notify)
	l.notify = make(chan struct{})
}

// scrub reads every record of the closed segment files of the journals
// and notes the damaged ones (the dedup journal's: scrubDedup). A damaged acceptor record on disk is
// superseded at once by a checkpoint that restates the acceptor's state
// from memory, which is whole while the node runs.
func (l *Learner) scrub(ctx context.Context) {
	for _, s := range l.journal.closedSegments() {
		bad, err := l.journal.ScanClosed(s)
		if err != nil {
			continue // truncated away meanwhile
		}
		for _, n := range bad {
			l.noteDamaged(Index(n))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond): // pacing: a scrub yields to the work of the node
		}
	}
	l.scrubDedup()
	acc := l.n.acceptor
	for _, s := range acc.journal.closedSegments() {
		bad, err := acc.journal.ScanClosed(s)
		if err != nil || len(bad) == 0 {
			continue
		}
		l.n.log.Error("acceptor journal record fails its check; writing a checkpoint that supersedes it", "file", acc.journal.segmentOf(bad[0]), "records", fmt.Sprint(bad))
		stored, index, err := l.durableApplied()
		if err == nil {
			err = acc.compact(stored, index)
		}
		if err != nil {
			l.n.fatal(err)
			return
		}
		l.n.metrics.repairs.WithLabelValues("acceptor").Inc()
		return
	}
}
