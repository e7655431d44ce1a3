package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/maphash"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// dedup.go: what Idempotency-Key and resend dedup need, kept apart from
// the entries, so that retention can drop entries down to the last one.
//
// The dedup state is the identity (Idempotency-Key, or else entry id) of
// the entry at each of the last DedupWindow indices. In memory it is
// Learner.recent, a dedupWindow (below); on disk it is the dedup journal
// under --data/dedup, whose record i is the identity of the entry at
// client index i (journal number = index, like the client log's).
//
// Invariants:
//   - D1: the dedup journal's record i is written by the apply that writes
//     client log record i, with the same numbering, so the identities a
//     node remembers are a function of the chosen sequence alone (L2),
//     never of what retention kept.
//   - D2: after any crash the dedup journal, reconciled with the client
//     log as both reopen (dedupReconcile), holds the identity of every
//     index in the window below the client log's last, except below an
//     installed prefix's start where the peer it came from had forgotten
//     them too. Kept by: the dedup journal is synced before the client
//     log's front is cut (compactBefore), so it never lags behind the
//     client log's first; its own front is cut only to the window below
//     an index both journals have synced (trimDedup); a dedup journal
//     behind the client log is filled from the client log's records, one
//     ahead of it is cut back to it. So it is synced only there: what a
//     crash drops of it the client log still holds.
//   - D3: installing a peer's prefix is atomic: its dedup state and start
//     are written to one file (prefixInstallFile), synced, before either
//     journal changes; an open that finds the file finishes the install.
//     The peer ships the identities it remembers below its first index
//     (those of its window, the last DedupWindow below its last index P).
//     The installer lacks the older ones, down to DedupWindow below its
//     first index: harmless for values read from a peer's log (they hold
//     only entries that got an index), not for a value from an acceptor
//     or a leader, which may hold a duplicate of one of them. So through
//     the slot the peer had applied (the one that gave it index P), the
//     installer takes values only from logs (Learner.logOnly, kept in the
//     dedup journal's meta); past it, every decision's window lies above
//     P - DedupWindow, all of which it has.
//   - D4: the window is DedupWindow indices on every node: an identity is
//     recognised while its entry is among the last DedupWindow indices,
//     whether or not retention still keeps the entry.
//
// Dedup state a node cannot rebuild from its own files (a lost or damaged
// dedup journal under a compacted client log) would break D2 and with it
// L2: such a node drops its client log and learns it again from peers,
// who ship their dedup state with their prefix; alone, it stops.

// dedupRecord is one dedup journal record: 0x01 id[16] key, or, for an
// index that a batch took after its first (the zero id: a continued
// record of the client log), 0x02 alone.
func dedupRecord(id EntryID, key string) []byte {
	return appendDedupRecord(make([]byte, 0, 1+len(id)+len(key)), id, key)
}

// continuedRecord is the dedup record of a batch's later index.
var continuedRecord = []byte{2}

// appendDedupRecord appends the dedup record of id and key to b.
func appendDedupRecord(b []byte, id EntryID, key string) []byte {
	if id == (EntryID{}) {
		return append(b, continuedRecord...)
	}
	b = append(b, 1)
	b = append(b, id[:]...)
	return append(b, key...)
}

var errBadDedupRecord = errors.New("malformed dedup record")

// decodeDedupRecord returns the entry id and Idempotency-Key a dedup
// record holds: the zero id and "" for a batch's later index (no client
// entry has the zero id).
func decodeDedupRecord(p []byte) (EntryID, string, error) {
	var id EntryID
	if bytes.Equal(p, continuedRecord) {
		return id, "", nil
	}
	if len(p) < 1+len(id) || p[0] != 1 || bytes.Equal(p[1:1+len(id)], id[:]) || len(p)-1-len(id) > maxKeyBytes {
		return id, "", errBadDedupRecord
	}
	copy(id[:], p[1:])
	return id, string(p[1+len(id):]), nil
}

// rememberRecord remembers the dedup record p for index i. Records are
// remembered in index order, so a continued one extends the batch that
// the one before began.
func (l *Learner) rememberRecord(i Index, p []byte) error {
	id, key, err := decodeDedupRecord(p)
	if err != nil {
		return fmt.Errorf("dedup index %d: %w", i, err)
	}
	if id == (EntryID{}) {
		l.recent.rememberContinued(i)
	} else {
		l.recent.remember(i, id, key)
	}
	return nil
}

// errDedupLost: the dedup state for the window cannot be rebuilt from
// this node's files.
var errDedupLost = errors.New("dedup state lost")

// dedupMeta is what the dedup journal keeps with its base (journal
// Reset): floor, the first index whose identity this node can know (an
// installed prefix brought none below it), and logOnly (Learner.logOnly).
type dedupMeta struct {
	floor   Index
	logOnly Slot
}

func (m dedupMeta) encode() []byte {
	return fmt.Appendf(nil, "floor=%d logonly=%d", m.floor, m.logOnly)
}

func parseDedupMeta(b []byte) dedupMeta {
	var m dedupMeta
	fmt.Sscanf(string(b), "floor=%d logonly=%d", &m.floor, &m.logOnly)
	return m
}

// dedupReconcile brings the dedup journal in line with the client log as
// they reopen (D2) and loads the window into memory. It returns
// errDedupLost when identities in the window are neither in the dedup
// journal nor in the client log.
func (l *Learner) dedupReconcile() error {
	d := l.dedup
	kept, last := l.kept, l.last
	meta := parseDedupMeta(d.Meta())
	l.logOnly = meta.logOnly
	lost := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errDedupLost, fmt.Sprintf(format, args...))
	}
	df, dl := d.Bounds()
	if dl > uint64(last) { // ahead of the client log (its tail was lost): cut back
		if df > uint64(last)+1 || df > dl {
			if err := d.Reset(uint64(last), meta.encode()); err != nil {
				return err
			}
		} else if err := d.TruncateBack(uint64(last)); err != nil {
			return err
		}
		df, dl = d.Bounds()
	}
	// need: the first index of the window whose identity this node can
	// know. The journal must hold need..dl, and the client log the rest.
	need := Index(1)
	if last >= l.window {
		need = last - l.window + 1
	}
	need = max(need, meta.floor)
	fill := Index(dl) + 1 // from here on, identities come from the client log
	empty := df > dl
	if (!empty && Index(df) > need) || (empty && Index(dl)+1 < need) || Index(dl)+1 < kept {
		// The journal misses identities of the window (never written
		// here: a build before it, or lost): rebuild the whole window
		// from the client log, if that holds it.
		if kept > need {
			return lost("the dedup journal holds %d..%d, the window needs %d on, and the client log starts at %d", df, dl, need, kept)
		}
		if err := d.Reset(uint64(need)-1, meta.encode()); err != nil {
			return err
		}
		df, dl, fill = uint64(need), uint64(need)-1, need
	}
	var recs [][]byte
	for i := fill; i <= last; i++ {
		rec, err := l.record(i)
		if errors.Is(err, errJournalCorrupt) {
			return lost("client log record %d, needed to fill the dedup journal, fails its check", i)
		}
		if err != nil {
			return err
		}
		recs = append(recs, dedupRecord(rec.ID, rec.Key))
	}
	if len(recs) > 0 {
		if err := appendSynced(d, recs); err != nil {
			return err
		}
		df, dl = d.Bounds()
	}
	// Load the window: from the dedup journal, or, for a record that
	// fails its check, from the client log, rewriting the dedup record.
	fix := make(map[uint64][]byte)
	for i := max(need, Index(df)); i <= last && last > 0; i++ {
		p, err := d.Read(uint64(i))
		if errors.Is(err, errJournalCorrupt) {
			if i < kept {
				return lost("dedup record %d fails its check and the client log starts at %d", i, kept)
			}
			rec, err := l.record(i)
			if err != nil {
				return lost("dedup record %d fails its check, and the client log's: %v", i, err)
			}
			p = dedupRecord(rec.ID, rec.Key)
			fix[uint64(i)] = p
		} else if err != nil {
			return err
		}
		if err := l.rememberRecord(i, p); err != nil {
			return err
		}
	}
	if len(fix) > 0 {
		files, err := d.RewriteRecords(fix)
		if err != nil {
			return err
		}
		l.n.log.Error("repaired damaged dedup records from the client log", "file", fmt.Sprint(files), "records", len(fix))
		l.n.metrics.repairs.WithLabelValues("dedup").Inc()
	}
	return nil
}

// dedupDataFor returns the dedup records a node that installs this one's
// prefix at index first needs: those of the window below first that this
// node remembers (every identity later dedup decisions may look at), as
// the index of the first one and the records. Called with l.mu held.
func (l *Learner) dedupDataFor(first Index) (Index, [][]byte) {
	lo := Index(1) // the window below first; rememberedRecord keeps to the window below last
	if first >= l.window {
		lo = first - l.window + 1
	}
	var recs [][]byte // newest first, down to one not remembered here (below this node's own installed prefix)
	for i := first - 1; i >= lo; i-- {
		r, ok := l.rememberedRecord(i)
		if !ok {
			break
		}
		recs = append(recs, r)
	}
	slices.Reverse(recs)
	return first - Index(len(recs)), recs
}

// rememberedRecord returns the dedup record of index i from memory, if
// i is in the window and remembered. Called with l.mu held.
func (l *Learner) rememberedRecord(i Index) ([]byte, bool) {
	if i == 0 || i > l.last || i+l.window <= l.last {
		return nil, false
	}
	return l.recent.record(i)
}

// prefixInstallFile, under --data, holds an install in progress (D3).
const prefixInstallFile = "PREFIX-INSTALL"

// prefixInstall is what installing a peer's prefix writes: the client log
// continues at First, every slot through Applied counts as applied, and
// the dedup state is Dedup, the records of indices DedupFrom...
type prefixInstall struct {
	First     Index
	Applied   Slot
	DedupFrom Index
	Dedup     [][]byte
	LogOnly   Slot // Learner.logOnly from here on
}

func (p prefixInstall) encode() []byte {
	b := []byte("PXI1")
	b = binary.AppendUvarint(b, uint64(p.First))
	b = binary.AppendUvarint(b, uint64(p.Applied))
	b = binary.AppendUvarint(b, uint64(p.DedupFrom))
	b = binary.AppendUvarint(b, uint64(p.LogOnly))
	b = appendByteStrings(b, p.Dedup)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBadInstall = errors.New("malformed prefix install file")

func decodePrefixInstall(b []byte) (prefixInstall, error) {
	var p prefixInstall
	if len(b) < 8 || !bytes.HasPrefix(b, []byte("PXI1")) ||
		crc32.Checksum(b[:len(b)-4], crcTable) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return p, errBadInstall
	}
	d := decoder{b: b[4 : len(b)-4]}
	p.First, p.Applied, p.DedupFrom = Index(d.uvarint()), Slot(d.uvarint()), Index(d.uvarint())
	p.LogOnly = Slot(d.uvarint())
	p.Dedup = d.byteStrings()
	if d.err != nil || len(d.b) != 0 || p.First == 0 || p.DedupFrom+Index(len(p.Dedup)) != p.First && len(p.Dedup) > 0 {
		return p, errBadInstall
	}
	return p, nil
}

// installPath is where an install in progress is kept.
func (l *Learner) installPath() string {
	return filepath.Join(filepath.Dir(l.journal.dir), prefixInstallFile)
}

// beginInstall makes the install durable (D3): from here on it happens,
// across any crash.
func (l *Learner) beginInstall(p prefixInstall) error {
	return replaceFileSync(l.installPath(), p.encode())
}

// finishInstall resets both journals to the install's state and removes
// the install file. Repeating it is harmless.
func (l *Learner) finishInstall(p prefixInstall) error {
	base := p.First - 1
	if len(p.Dedup) > 0 {
		base = p.DedupFrom - 1
	}
	meta := dedupMeta{floor: base + 1, logOnly: p.LogOnly}
	if err := l.dedup.Reset(uint64(base), meta.encode()); err != nil {
		return err
	}
	if err := appendSynced(l.dedup, p.Dedup); err != nil {
		return err
	}
	if err := l.journal.Reset(uint64(p.First-1), strconv.AppendUint(nil, uint64(p.Applied), 10)); err != nil {
		return err
	}
	if err := removeIfExists(l.installPath()); err != nil {
		return err
	}
	return syncDir(filepath.Dir(l.installPath()))
}

// resumeInstall finishes an install a crash cut short, if there is one.
func (l *Learner) resumeInstall() error {
	b, err := os.ReadFile(l.installPath())
	if errors.Is(err, os.ErrNotExist) {
		os.Remove(l.installPath() + ".tmp") // an install that never began
		return nil
	}
	if err != nil {
		return err
	}
	p, err := decodePrefixInstall(b)
	if err != nil {
		return fmt.Errorf("%s: %w", prefixInstallFile, err)
	}
	l.n.log.Warn("finishing the install of a peer's prefix that a restart cut short", "first", p.First, "slot", p.Applied+1)
	return l.finishInstall(p)
}

// trimDedup drops dedup records that fell out of the window (D2: only
// below the window of an index both journals have synced), once there
// are a good number of them, so that the first segment is not rewritten
// every time.
func (l *Learner) trimDedup() error {
	l.mu.Lock()
	last := l.last
	l.mu.Unlock()
	if last <= l.window {
		return nil
	}
	cut := last - l.window + 1
	if df, _ := l.dedup.Bounds(); Index(df)+l.window/8 > cut {
		return nil
	}
	if err := l.syncJournals(); err != nil {
		return err
	}
	return l.dedup.TruncateFront(uint64(cut))
}

// syncJournals makes both journals durable through what is applied: the
// dedup journal first (D2).
func (l *Learner) syncJournals() error {
	if err := l.dedup.Sync(); err != nil {
		return fmt.Errorf("learner: dedup journal: %w", err)
	}
	if err := l.journal.Sync(); err != nil {
		return fmt.Errorf("learner: %w", err)
	}
	return nil
}

// scrubDedup checks the closed segments of the dedup journal. A damaged
// record in the window is written again from memory, which is whole
// while the node runs; one below the window is never read again.
func (l *Learner) scrubDedup() {
	for _, s := range l.dedup.closedSegments() {
		bad, err := l.dedup.ScanClosed(s)
		if err != nil || len(bad) == 0 {
			continue
		}
		fix := make(map[uint64][]byte)
		l.mu.Lock()
		for _, n := range bad {
			if r, ok := l.rememberedRecord(Index(n)); ok {
				fix[n] = r
			}
		}
		l.mu.Unlock()
		if len(fix) == 0 {
			continue
		}
		files, err := l.dedup.RewriteRecords(fix)
		if err != nil {
			if !errors.Is(err, errNotFound) {
				l.n.fatal(fmt.Errorf("learner: dedup repair: %w", err))
			}
			return
		}
		l.n.log.Error("repaired damaged dedup records from memory", "file", fmt.Sprint(files), "records", len(fix))
		l.n.metrics.repairs.WithLabelValues("dedup").Inc()
	}
}

// appendSynced appends recs to j, a few thousand at a time, and syncs.
func appendSynced(j *journal, recs [][]byte) error {
	for i := 0; i < len(recs); i += 4096 {
		if _, err := j.Append(recs[i:min(i+4096, len(recs))]...); err != nil {
			return err
		}
	}
	return j.Sync()
}

// removeIfExists removes path, if it is there.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// aloneAtOpen reports whether this node knows no other member as it
// opens: none in the membership its data records, or, before it records
// one, on the command line.
func aloneAtOpen(n *Node) bool {
	if len(n.cfg.Join) > 0 {
		return false
	}
	if id, err := readIdentity(n.cfg.DataDir); err == nil && id.Membership != nil {
		for _, m := range id.Membership.Members {
			if m.ID != n.cfg.ID {
				return false
			}
		}
		return true
	}
	for _, id := range n.cfg.Members {
		if id != n.cfg.ID {
			return false
		}
	}
	return true
}

// dedupWindow is the dedup state in memory: the identity of the entry at
// each of the last size indices, and a hash table to find an identity's
// index by. It holds no pointers (the collector never scans it), and its
// size is fixed by the window, not the log: 32 bytes an index for the
// ring, 8 a bucket for the table (two buckets or more an index), and the
// Idempotency-Keys' bytes (at most maxKeyBytes each) in one circular
// buffer that grows to the next power of two that holds the window's
// keys and never shrinks. At the default window of 262,144 indices that
// is 12 MiB for entries without keys, 28 MiB with 36-byte keys, and at
// most 76 MiB with keys of maxKeyBytes (BenchmarkDedupWindow measures
// the first two).
//
// An identity is an Idempotency-Key if the entry has one, else its id
// (Entry.identity); two entries share an identity when their keys are
// equal, or when neither has a key and their ids are.
//
// W1. The table holds, for each identity remembered, one bucket: 32 bits
// of the identity's hash and the ring position of its first index,
// which is in the window and holds that identity. A lookup checks every
// bucket whose hash bits match against the identity at its position, so
// identities that share hash bits cost a longer probe, never a wrong
// answer. Buckets are found by linear probing from hash bits' home and
// removed by shifting the run behind them back (no tombstones), and the
// table is at most half full.
type dedupWindow struct {
	size  Index
	last  Index // the highest index remembered; 0: none since the start or a reset
	seed  maphash.Seed
	mask  uint32 // of the hash's bits, all of them (tests narrow it to make clashes)
	ring  []dedupSlot
	table []uint64 // hash bits<<32 | ring position+1; 0: empty
	count int      // buckets in use
	keys  keyRing
	tail  Index // first index of the append that took the last remembered index; 0: not remembered
	// grew, if set, hears the key buffer's new size each time it grows.
	grew func(bytes int)
}

// dedupSlot is what the ring holds for one index.
type dedupSlot struct {
	id     EntryID // of the entry that took the index (first only)
	keyOff uint64  // where its key is in keys (keyLen > 0)
	more   uint32  // first: how many indices after this one the batch took
	keyLen uint8
	kind   uint8 // slotEmpty, slotFirst or slotContinued
}

const (
	slotEmpty     = iota // not remembered (below an installed prefix)
	slotFirst            // an append's first index
	slotContinued        // a later index of a batch
)

// maxDedupWindow bounds Config.DedupWindow: ring positions are 32-bit.
const maxDedupWindow = 1 << 30

func newDedupWindow(size int) *dedupWindow {
	if size <= 0 || size > maxDedupWindow {
		panic(fmt.Sprintf("dedup window of %d indices", size))
	}
	buckets := 8
	for buckets < 2*size {
		buckets *= 2
	}
	return &dedupWindow{
		size:  Index(size),
		seed:  maphash.MakeSeed(),
		mask:  ^uint32(0),
		ring:  make([]dedupSlot, size),
		table: make([]uint64, buckets),
	}
}

// hash is the hash of the identity of an entry with id and key (of key
// if it has one, else of id).
func (w *dedupWindow) hash(id EntryID, key string) uint32 {
	if key != "" {
		return uint32(maphash.String(w.seed, key)) & w.mask
	}
	return uint32(maphash.Bytes(w.seed, id[:])) & w.mask
}

// hashAt is hash of the identity at slot s.
func (w *dedupWindow) hashAt(s *dedupSlot) uint32 {
	if s.keyLen > 0 {
		return uint32(maphash.Bytes(w.seed, w.keyOf(s))) & w.mask // = maphash.String of the key
	}
	return uint32(maphash.Bytes(w.seed, s.id[:])) & w.mask
}

// keyOf is the key of the entry at slot s.
func (w *dedupWindow) keyOf(s *dedupSlot) []byte {
	return w.keys.get(s.keyOff, int(s.keyLen))
}

// indexAt is the index in the window whose ring position is pos.
func (w *dedupWindow) indexAt(pos uint32) Index {
	return w.last - (w.last%w.size+w.size-Index(pos))%w.size
}

// find returns the first index of the identity of id and key, if it is
// remembered.
func (w *dedupWindow) find(id EntryID, key string) (Index, bool) {
	b, ok := w.probe(w.hash(id, key), id, key)
	if !ok {
		return 0, false
	}
	return w.indexAt(uint32(w.table[b]) - 1), true
}

// probe walks the table from the home of hash bits h: it returns the
// bucket that holds the identity of id and key, or else the empty bucket
// that ends the run, where it would go (W1).
func (w *dedupWindow) probe(h uint32, id EntryID, key string) (int, bool) {
	tm := len(w.table) - 1
	for b := int(h) & tm; ; b = (b + 1) & tm {
		e := w.table[b]
		if e == 0 {
			return b, false
		}
		if uint32(e>>32) != h {
			continue
		}
		s := &w.ring[uint32(e)-1]
		if int(s.keyLen) != len(key) {
			continue
		}
		if key != "" && string(w.keyOf(s)) == key || key == "" && s.id == id {
			return b, true
		}
	}
}

// lookup returns where the identity of id and key went, if it is
// remembered.
func (w *dedupWindow) lookup(id EntryID, key string) (appliedEntry, bool) {
	i, ok := w.find(id, key)
	if !ok {
		return appliedEntry{}, false
	}
	s := &w.ring[i%w.size]
	return appliedEntry{index: i, last: i + Index(s.more), id: s.id}, true
}

// remember records that the entry id, with key, took index i, and
// forgets what left the window. Indices are remembered in order.
func (w *dedupWindow) remember(i Index, id EntryID, key string) {
	w.advance(i)
	if len(key) > maxKeyBytes {
		panic(fmt.Sprintf("dedup window: a key of %d bytes", len(key)))
	}
	s := dedupSlot{id: id, kind: slotFirst, keyLen: uint8(len(key))}
	if key != "" {
		c := len(w.keys.buf)
		s.keyOff = w.keys.add(key)
		if len(w.keys.buf) != c && w.grew != nil {
			w.grew(len(w.keys.buf))
		}
	}
	pos := uint32(i % w.size)
	h := w.hash(id, key)
	b, again := w.probe(h, id, key)
	if !again { // remembered again: its later index is the one to find
		w.count++
	}
	w.table[b] = uint64(h)<<32 | uint64(pos) + 1
	w.ring[pos] = s
	w.tail = i
}

// rememberContinued records that index i continues the batch whose
// entry took i-1.
func (w *dedupWindow) rememberContinued(i Index) {
	w.advance(i)
	w.ring[i%w.size] = dedupSlot{kind: slotContinued}
	if t := w.tail; t != 0 && t+w.size > i {
		if s := &w.ring[t%w.size]; s.kind == slotFirst && t+Index(s.more) == i-1 {
			s.more++
			return
		}
	}
	w.tail = 0 // its first index is not remembered here
}

// advance makes index i the window's last, forgetting the indices that
// leave the window and any it skips.
func (w *dedupWindow) advance(i Index) {
	switch {
	case w.last == 0:
	case i <= w.last:
		panic(fmt.Sprintf("dedup window: index %d remembered after %d", i, w.last))
	case i-w.last > w.size:
		w.reset()
	default:
		for j := w.last + 1; j < i; j++ {
			w.forget(j)
			w.ring[j%w.size] = dedupSlot{}
		}
	}
	w.forget(i)
	w.last = i
}

// forget forgets index i-size, which leaves the window as index i enters
// it.
func (w *dedupWindow) forget(i Index) {
	pos := uint32(i % w.size)
	s := &w.ring[pos]
	if s.kind != slotFirst {
		return
	}
	e := uint64(w.hashAt(s))<<32 | uint64(pos) + 1
	w.delete(e)
	if s.keyLen > 0 {
		w.keys.release(s.keyOff + uint64(s.keyLen))
	}
	s.kind = slotEmpty
}

// delete removes bucket e from the table, if it is there, and shifts
// back the buckets after it whose home is at or before the hole (W1).
func (w *dedupWindow) delete(e uint64) {
	tm := len(w.table) - 1
	b := int(e>>32) & tm
	for w.table[b] != e {
		if w.table[b] == 0 {
			return // remembered again later: the bucket moved on
		}
		b = (b + 1) & tm
	}
	hole := b
	for j := (b + 1) & tm; w.table[j] != 0; j = (j + 1) & tm {
		home := int(w.table[j]>>32) & tm
		// The bucket at j may fill the hole if its home is not in
		// (hole, j], cyclically.
		if (j > hole && (home <= hole || home > j)) || (j < hole && home <= hole && home > j) {
			w.table[hole] = w.table[j]
			hole = j
		}
	}
	w.table[hole] = 0
	w.count--
}

// record returns the dedup journal record of index i, if the ring holds
// it; i must be in the window.
func (w *dedupWindow) record(i Index) ([]byte, bool) {
	s := &w.ring[i%w.size]
	switch s.kind {
	case slotContinued:
		return continuedRecord, true
	case slotFirst:
		return dedupRecord(s.id, string(w.keyOf(s))), true
	}
	return nil, false
}

// identities is how many identities are remembered.
func (w *dedupWindow) identities() int { return w.count }

// reset forgets everything.
func (w *dedupWindow) reset() {
	clear(w.ring)
	clear(w.table)
	w.count = 0
	w.keys.start = w.keys.end
	w.last, w.tail = 0, 0
}

// identityOf is Entry.identity for an entry with id and key.
func identityOf(id EntryID, key string) string {
	return Entry{ID: id, Key: key}.identity()
}

// keyRing holds the window's Idempotency-Keys, added and released in
// index order, in one circular buffer. Offsets count bytes ever added; a
// key never wraps around the buffer's end (the space before the end is
// skipped instead), so each is one slice.
type keyRing struct {
	buf        []byte // len is a power of two, or 0
	start, end uint64 // the live bytes are [start, end)
}

// add copies key in and returns its offset.
func (r *keyRing) add(key string) uint64 {
	n := uint64(len(key))
	for {
		c := uint64(len(r.buf))
		var pad uint64
		if c > 0 && r.end%c+n > c {
			pad = c - r.end%c
		}
		if c > 0 && r.end+pad+n-r.start <= c {
			r.end += pad
			off := r.end
			copy(r.buf[off%c:], key)
			r.end += n
			return off
		}
		r.grow(max(2*c, 4096))
	}
}

// grow moves the live bytes into a buffer of c bytes, each to its offset
// modulo c. c is a multiple of the old length, so a key that did not wrap
// before does not now.
func (r *keyRing) grow(c uint64) {
	nb := make([]byte, c)
	if old := uint64(len(r.buf)); old > 0 {
		for p := r.start; p < r.end; {
			n := min(r.end-p, old-p%old, c-p%c)
			copy(nb[p%c:p%c+n], r.buf[p%old:p%old+n])
			p += n
		}
	}
	r.buf = nb
}

// get returns the n bytes at off.
func (r *keyRing) get(off uint64, n int) []byte {
	if n == 0 {
		return nil
	}
	c := uint64(len(r.buf))
	return r.buf[off%c : off%c+uint64(n)]
}

// release frees every byte below upTo.
func (r *keyRing) release(upTo uint64) {
	if upTo > r.start {
		r.start = upTo
	}
}
