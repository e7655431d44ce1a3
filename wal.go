package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/wal"
)

// wal.go is the only file that imports github.com/tidwall/wal.
//
// A journal is an append-only sequence of records numbered 1, 2, 3, … by
// tidwall/wal. Record numbers are the journal's own: the acceptor's journal
// carries slots inside its records, the learner's journal uses the record
// number as the client-visible log index. Every record is stored as
//
//	crc32c (4 bytes, little endian) || uvarint(n) || uvarint(n - synced) || payload
//
// where n is the record's position (tidwall/wal's number for it), synced
// the last position known to be on disk when it was written, and the
// checksum covers everything after it, computed from the seed v2Seed.
// The position makes a record that is read from the wrong place (framing
// damaged by a zeroed block, say) fail its check instead of passing as
// another one, and lets a scan find good records after damage. The synced
// mark is the evidence that tells a crash's torn tail (records that were
// never synced, so never acknowledged: safe to drop) from damage to
// synced records (never dropped silently): see checkTail and tailDamage.
//
// Journals written before this format hold records of the form
// crc32c(payload) || payload; they are read as such below the position
// kept in the file FORMAT, from which on every record has the form above.
//
// Numbering: journal numbers are tidwall/wal's record numbers plus a base
// (0 unless Reset gave one, kept in the file BASE beside the segments), so
// a journal can restart its numbering at any point: the learner does this
// when it installs a peer's compacted prefix.

var (
	// errJournalClosed is returned by every journal call after close.
	errJournalClosed = errors.New("journal closed")
	// errJournalCorrupt means a record before the tail failed its checksum:
	// the disk lost data that was synced, and the node must not guess.
	errJournalCorrupt = errors.New("journal corrupt")
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// journalOptions configures openJournal.
type journalOptions struct {
	// SegmentSize is the target size of one segment file in bytes.
	SegmentSize int
	// OnSync, when set, observes the duration of every fsync.
	OnSync func(time.Duration)
	// OnTailDamage, when set, hears of bad records at the end of the
	// journal as it opens, before anything changes; an error fails the
	// open. By default every record from the first bad one on is
	// dropped. If it returns keep for damage (tailDamage.Damaged), the
	// good records after the bad ones stay, each bad one becomes a hole
	// (a record with no payload, which reads as damaged until
	// RewriteRecords fills it), and the segment is closed (a new, empty
	// tail follows it) so that RewriteRecords can.
	OnTailDamage func(tailDamage) (keep bool, err error)
	// SparseReads reads records of closed segments through sparse
	// indexes (segindex.go) instead of tidwall/wal's whole-segment loads:
	// for a journal that serves random reads (the client log).
	SparseReads bool
}

// journal wraps a tidwall/wal log with checksums, torn-tail repair, explicit
// syncs and a record of how far it has been synced.
//
// It is safe for concurrent use. Any write or sync error is sticky: the
// journal refuses every later write, because tidwall/wal leaves its handle in
// an unknown state after one; the node stops and a restart recovers.
type journal struct {
	dir  string
	opts journalOptions

	syncMu sync.Mutex // serialises syncs; held without mu during fsync
	// readMu serialises reads. tidwall/wal v1.2.1's Read holds only a read
	// lock while it loads a segment into its cache and updates the cache,
	// so two concurrent Reads that miss the cache race and can return the
	// wrong record (found by the race detector under TestDiskBoundedUnderLoad:
	// a catch-up read returned another index's slot, and a node put entries
	// at shifted indices). Writes already exclude reads inside tidwall/wal.
	// Every change to closed segments (truncations, rewrites, resets)
	// takes it too, before mu, so that sparse indexes stay current.
	readMu   sync.Mutex
	sparse   segIndexes    // guarded by readMu
	appended atomic.Uint64 // payload bytes appended: when to list closed segments again
	warmMu   sync.Mutex    // one warmSparse at a time

	mu       sync.Mutex // protects the fields below and serialises writes
	base     uint64     // journal number = tidwall record number + base
	meta     []byte     // opaque data stored with base
	log      *wal.Log
	err      error  // sticky write/sync error
	synced   uint64 // every record <= synced is on disk
	segBytes int    // estimated bytes in the tail segment
	segCount int    // segment files seen at the last directory sync
	batch    wal.Batch
	sealBuf  []byte        // one record with its checksum; the batch copies it
	v2From   atomic.Uint64 // position of the first current-format record (FORMAT)
}

// openJournal opens (or creates) the journal in dir and checks its tail
// segment record by record. Bad records at the end of it are dropped:
// whatever a crash tore was never synced, so never acknowledged. When the
// evidence says the bad records were synced, or a good record follows
// them, that is damage, not a torn write; either way opts.OnTailDamage is
// told before anything is dropped, so the owner can make its decision
// durable first (see tailDamage).
func openJournal(dir string, opts journalOptions) (*journal, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 4 << 20
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	j := &journal{dir: dir, opts: opts}
	if err := j.loadFormat(); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	if err := j.loadBase(); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	wopts := j.walOptions()
	if truncationLeftovers(dir) {
		// tidwall/wal finishes an interrupted truncation as it opens;
		// let it, so that the newest segment file is the tail. It fails
		// if the tail does not frame; checkTail then finds where.
		l, err := wal.Open(dir, wopts)
		if err == nil {
			l.Close()
		} else if !errors.Is(err, wal.ErrCorrupt) {
			return nil, fmt.Errorf("open journal %s: %w", dir, err)
		}
	}
	if err := j.checkTail(); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	l, err := wal.Open(dir, wopts)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	j.log = l
	last, _ := l.LastIndex()
	j.synced = last
	if j.v2From.Load() == math.MaxUint64 { // a journal written before the current record format
		if err := j.writeFormat(last + 1); err != nil {
			l.Close()
			return nil, fmt.Errorf("open journal %s: %w", dir, err)
		}
	}
	os.RemoveAll(j.trashDir()) // what a crash left parked there
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "*.rewrite")); len(leftovers) > 0 {
		for _, p := range leftovers { // a RewriteRecords a crash cut short
			os.Remove(p)
		}
	}
	j.segCount, j.segBytes = segmentStats(dir)
	if err := syncDir(dir); err != nil {
		l.Close()
		return nil, fmt.Errorf("open journal %s: sync dir: %w", dir, err)
	}
	if opts.SparseReads {
		go j.warmSparse()
	}
	return j, nil
}

func (j *journal) walOptions() *wal.Options {
	return &wal.Options{
		NoSync:      true, // we sync explicitly, once per batch
		SegmentSize: j.opts.SegmentSize,
		LogFormat:   wal.Binary,
		// Memory: tidwall/wal holds the tail segment (growing to
		// SegmentSize, with up to a quarter more of slack) and this
		// many closed ones in memory. One: the client log's reads of
		// closed segments go through sparse indexes (segindex.go); the
		// other journals read old segments only as they open.
		SegmentCacheSize: 1,
		AllowEmpty:       true,
		DirPerms:         0o750,
		FilePerms:        0o640,
	}
}

// tailDamage describes bad records found at the end of a journal when it
// opens, before they are dropped.
type tailDamage struct {
	Segment string // the segment file, as a path
	From    uint64 // journal number of the first bad record
	// Through is the number of the last good record found after the bad
	// ones, else 0.
	Through uint64
	// Holes are the numbers of the bad records before Through: kept as
	// holes if the owner keeps the good records after them.
	Holes []uint64
	// Damaged: the bad records cannot all be an unsynced tail torn by a
	// crash, because a good record after them was written once they were
	// synced (its synced mark covers them), or is of the older format,
	// which cannot tell. A crash tears only what was never synced, and a
	// record written before the sync that would have covered the bad
	// ones carries a lower mark: then the whole tail from the first bad
	// record was never synced, so never acknowledged, and is dropped.
	// What a crash tore between the last sync and a write after it
	// cannot be told from damage there; the acceptor's idle seal keeps
	// that window short (see Acceptor.seal).
	Damaged bool
}

// checkTail scans the newest segment file, tells the owner about bad
// records at its end, and cuts the file before the first of them.
func (j *journal) checkTail() error {
	segs, err := segmentFiles(j.dir)
	if err != nil || len(segs) == 0 {
		return err
	}
	path := segs[len(segs)-1]
	if fi, err := os.Stat(path); err == nil && fi.Size() == 0 && len(segs) > 1 {
		// An empty tail (a segment just cycled, or one holeTail left)
		// holds nothing; the one before it ends the records. Without the
		// empty file it is the tail again, and is checked as such.
		if err := os.Remove(path); err != nil {
			return err
		}
		if err := syncDir(j.dir); err != nil {
			return err
		}
		path = segs[len(segs)-2]
	}
	start, _ := strconv.ParseUint(filepath.Base(path), 10, 64)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sc := j.scanSegment(data, start)
	if sc.badFrom == 0 {
		return nil
	}
	d := tailDamage{Segment: path, From: sc.badFrom + j.base, Damaged: sc.damaged()}
	if sc.lastGood > sc.badFrom {
		d.Through = sc.lastGood + j.base
		for pos := sc.badFrom; pos < sc.lastGood; pos++ {
			if _, ok := sc.good[pos]; !ok {
				d.Holes = append(d.Holes, pos+j.base)
			}
		}
	}
	keep := false
	if j.opts.OnTailDamage != nil {
		if keep, err = j.opts.OnTailDamage(d); err != nil {
			return err
		}
	}
	if keep && d.Damaged {
		return j.holeTail(path, start, sc)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(sc.badOff)); err != nil {
		f.Close()
		return err
	}
	return syncClose(f)
}

// holeTail rewrites the tail segment at path, whose first position is
// start, with its good records, a hole for every bad one before the last
// good one, and nothing after that; then it closes the segment with an
// empty tail after it. A crash part way leaves the old file (the rename
// had not happened) or the new one without its successor, which the next
// open finds whole and takes as the tail again.
func (j *journal) holeTail(path string, start uint64, sc segmentScan) error {
	var out []byte
	for pos := start; pos <= sc.lastGood; pos++ {
		rec := appendRecord(nil, pos, pos, sc.good[pos]) // a hole if it is bad: no payload
		out = binary.AppendUvarint(out, uint64(len(rec)))
		out = append(out, rec...)
	}
	tmp := path + ".rewrite"
	if err := writeFileSync(tmp, out); err != nil {
		return fmt.Errorf("hole the tail: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("hole the tail: %w", err)
	}
	if err := syncDir(j.dir); err != nil { // the rewrite before the successor that closes it
		return fmt.Errorf("hole the tail: %w", err)
	}
	next := filepath.Join(j.dir, fmt.Sprintf("%020d", sc.lastGood+1))
	if err := writeFileSync(next, nil); err != nil {
		return fmt.Errorf("hole the tail: %w", err)
	}
	return syncDir(j.dir)
}

// truncationLeftovers reports whether dir holds the .START or .END file
// of a truncation that tidwall/wal did not finish.
func truncationLeftovers(dir string) bool {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".START") || strings.HasSuffix(n, ".END") {
			return true
		}
	}
	return false
}

// syncClose fsyncs and closes f.
func syncClose(f *os.File) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// segmentFiles lists dir's segment files (20-digit names), oldest first.
func segmentFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); len(n) == 20 && !e.IsDir() {
			if _, err := strconv.ParseUint(n, 10, 64); err == nil {
				out = append(out, filepath.Join(dir, n))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

func segmentStats(dir string) (count, tailBytes int) {
	segs, _ := segmentFiles(dir)
	if len(segs) == 0 {
		return 0, 0
	}
	if fi, err := os.Stat(segs[len(segs)-1]); err == nil {
		tailBytes = int(fi.Size())
	}
	return len(segs), tailBytes
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// v2Seed is the initial value of the checksum of a record in the current
// format, so that no record of the older format checks as one of this.
const v2Seed = 0x70786c32

// minRecordBytes is the least a current-format record takes: the checksum
// and two one-byte numbers.
const minRecordBytes = 6

// appendRecord appends record n, with the synced mark synced, to b.
func appendRecord(b []byte, n, synced uint64, payload []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	b = binary.AppendUvarint(b, n)
	b = binary.AppendUvarint(b, n-synced)
	b = append(b, payload...)
	binary.LittleEndian.PutUint32(b[start:], crc32.Update(v2Seed, crcTable, b[start+4:]))
	return b
}

// parseRecord checks raw as a current-format record and returns its
// position, synced mark and payload.
func parseRecord(raw []byte) (n, synced uint64, payload []byte, ok bool) {
	if len(raw) < minRecordBytes || binary.LittleEndian.Uint32(raw) != crc32.Update(v2Seed, crcTable, raw[4:]) {
		return 0, 0, nil, false
	}
	n, k := binary.Uvarint(raw[4:])
	if k <= 0 {
		return 0, 0, nil, false
	}
	back, k2 := binary.Uvarint(raw[4+k:])
	if k2 <= 0 || back > n {
		return 0, 0, nil, false
	}
	return n, n - back, raw[4+k+k2:], true
}

// checkV1Record checks raw as a record of the older format.
func checkV1Record(raw []byte) ([]byte, bool) {
	if len(raw) < 4 {
		return nil, false
	}
	payload := raw[4:]
	return payload, binary.LittleEndian.Uint32(raw) == crc32.Checksum(payload, crcTable)
}

// openRecord checks raw as the record at position n and returns its
// payload and synced mark (0 for an older-format record).
func (j *journal) openRecord(n uint64, raw []byte) ([]byte, uint64, bool) {
	if num, synced, p, ok := parseRecord(raw); ok {
		return p, synced, num == n && len(p) > 0 // no payload: a hole (see holeTail)
	}
	if n < j.v2From.Load() {
		if p, ok := checkV1Record(raw); ok {
			return p, 0, true
		}
	}
	return nil, 0, false
}

// segmentScan is what scanSegment found in one segment file.
type segmentScan struct {
	good    map[uint64][]byte // payload of every good record, by position
	badFrom uint64            // position of the first bad record; 0: none
	badOff  int               // its offset in the file
	// What the good records after the first bad one show: the highest
	// synced mark among them, and whether one is of the older format
	// (which carries no mark).
	syncedAfter uint64
	olderAfter  bool
	lastGood    uint64 // position of the last good record
}

// damaged reports whether the bad records can be anything but a tail
// that a crash tore before it was synced: a record written after them
// says they were synced (or is of the older format, which cannot say).
func (sc segmentScan) damaged() bool {
	return sc.badFrom != 0 && (sc.olderAfter || sc.syncedAfter >= sc.badFrom)
}

// scanSegment checks every record of one segment file, whose first record
// is at position first. After a bad record it looks for the next good one:
// first where the bad record's length says the next one starts, then, if
// that is no good record either, at every later offset, for a record in
// the current format whose position fits (older-format records carry no
// position and are found only through the framing).
func (j *journal) scanSegment(data []byte, first uint64) segmentScan {
	sc := segmentScan{good: make(map[uint64][]byte)}
	next := first
	pos := 0
	for pos < len(data) {
		size, k := binary.Uvarint(data[pos:])
		framed := k > 0 && uint64(len(data)-pos-k) >= size
		if framed {
			raw := data[pos+k : pos+k+int(size)]
			if p, synced, ok := j.openRecord(next, raw); ok {
				sc.good[next] = p
				sc.lastGood = next
				if sc.badFrom != 0 {
					sc.syncedAfter = max(sc.syncedAfter, synced)
					sc.olderAfter = sc.olderAfter || next < j.v2From.Load() && synced == 0
				}
				pos += k + int(size)
				next++
				continue
			}
		}
		if sc.badFrom == 0 {
			sc.badFrom, sc.badOff = next, pos
		}
		// Where does the next good record start? Try the framing first.
		if framed && size > 0 {
			q := pos + k + int(size)
			if s2, k2 := binary.Uvarint(data[q:]); q < len(data) && k2 > 0 && uint64(len(data)-q-k2) >= s2 {
				if _, _, ok := j.openRecord(next+1, data[q+k2:q+k2+int(s2)]); ok {
					pos = q
					next++
					continue
				}
			}
		}
		q, n := resync(data, pos+1, next)
		if q < 0 {
			break
		}
		pos, next = q, n
	}
	return sc
}

// resync finds the first offset at or after from where a current-format
// record with a position of at least next starts (every record lost in
// between took at least minRecordBytes+1 bytes). It returns -1 if none.
func resync(data []byte, from int, next uint64) (int, uint64) {
	for q := from; q < len(data); q++ {
		size, k := binary.Uvarint(data[q:])
		if k <= 0 || size < minRecordBytes || uint64(len(data)-q-k) < size {
			continue
		}
		raw := data[q+k : q+k+int(size)]
		n, k2 := binary.Uvarint(raw[4:])
		if k2 <= 0 || n < next || n > next+uint64(q-from)/(minRecordBytes+1)+1 {
			continue
		}
		if num, _, _, ok := parseRecord(raw); ok && num == n {
			return q, n
		}
	}
	return -1, 0
}

// Append writes payloads as the next records, without syncing, and returns
// the number of the last one written.
func (j *journal) Append(payloads ...[]byte) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writableLocked(); err != nil {
		return 0, err
	}
	last, err := j.log.LastIndex()
	if err != nil {
		return 0, j.fail(fmt.Errorf("append: %w", err))
	}
	j.batch.Clear()
	var size uint64
	for i, p := range payloads {
		size += uint64(len(p))
		j.sealBuf = appendRecord(j.sealBuf[:0], last+uint64(i)+1, j.synced, p)
		j.segBytes += len(j.sealBuf) + binary.MaxVarintLen32
		j.batch.Write(last+uint64(i)+1, j.sealBuf)
	}
	j.appended.Add(size)
	if err := j.log.WriteBatch(&j.batch); err != nil {
		return 0, j.fail(fmt.Errorf("append at %d: %w", last+1, err))
	}
	return last + uint64(len(payloads)) + j.base, nil
}

// Sync makes every record appended so far durable.
func (j *journal) Sync() error {
	j.mu.Lock()
	var last uint64
	if j.log != nil {
		last, _ = j.log.LastIndex()
	}
	last += j.base
	j.mu.Unlock()
	return j.SyncTo(last)
}

// SyncTo returns once every record <= n is durable. Concurrent callers
// share one fsync (group commit): whoever syncs covers all records
// appended before it started.
func (j *journal) SyncTo(n uint64) error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	if err := j.writableLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	if j.synced+j.base >= n {
		j.mu.Unlock()
		return nil
	}
	l := j.log
	last, _ := l.LastIndex()
	j.mu.Unlock()

	start := time.Now()
	err := l.Sync()
	// A new segment file is only durable once its directory entry is:
	// look for one when the tail segment may have filled up.
	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil {
		return j.fail(fmt.Errorf("sync: %w", err))
	}
	if j.segBytes >= j.opts.SegmentSize-(1<<20) {
		count, tail := segmentStats(j.dir)
		if count != j.segCount {
			if err := syncDir(j.dir); err != nil {
				return j.fail(fmt.Errorf("sync dir: %w", err))
			}
			j.segCount, j.segBytes = count, tail
			if j.opts.SparseReads {
				go j.warmSparse() // index the segment that just closed
			}
		}
	}
	if j.opts.OnSync != nil {
		j.opts.OnSync(time.Since(start))
	}
	if last > j.synced {
		j.synced = last
	}
	return nil
}

// Synced returns the last record number known to be on disk.
func (j *journal) Synced() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.synced + j.base
}

// writableLocked reports why the journal takes no more writes, if it
// does not: a sticky error, or closed. j.mu held.
func (j *journal) writableLocked() error {
	if j.err != nil {
		return j.err
	}
	if j.log == nil {
		return errJournalClosed
	}
	return nil
}

func (j *journal) fail(err error) error {
	if j.err == nil {
		j.err = err
	}
	return j.err
}

// Read returns the payload of record n. It returns wal.ErrNotFound both
// below First and past Last; callers compare with those to tell which.
func (j *journal) Read(n uint64) ([]byte, error) {
	// readMu before the log and base are read: a Reset (which holds
	// readMu) cannot then change the numbering under this read.
	j.readMu.Lock()
	j.mu.Lock()
	l, base := j.log, j.base
	j.mu.Unlock()
	if l == nil {
		j.readMu.Unlock()
		return nil, errJournalClosed
	}
	if n <= base {
		j.readMu.Unlock()
		return nil, errNotFound
	}
	if j.opts.SparseReads && n-base >= j.v2From.Load() {
		if raws, ok := j.readClosed(n-base, 1); ok {
			if p, _, good := j.openRecord(n-base, raws[0]); good {
				j.readMu.Unlock()
				return bytes.Clone(p), nil // not the whole block it was read with
			}
		} // not in a closed segment, or a check failed: tidwall/wal reads it and says what is wrong
	}
	raw, err := l.Read(n - base)
	j.readMu.Unlock()
	if err != nil {
		if errors.Is(err, wal.ErrNotFound) {
			return nil, errNotFound
		}
		if errors.Is(err, wal.ErrCorrupt) { // its segment does not frame
			return nil, fmt.Errorf("read record %d in %s: %w", n, j.segmentOf(n), errJournalCorrupt)
		}
		return nil, fmt.Errorf("read record %d: %w", n, err)
	}
	p, _, ok := j.openRecord(n-base, raw)
	if !ok {
		return nil, fmt.Errorf("read record %d in %s: %w", n, j.segmentOf(n), errJournalCorrupt)
	}
	return p, nil
}

// ReadRun returns the payloads of records n, n+1, ...: up to max of them,
// fewer at the end of the journal or of a closed segment (a caller that
// wants more asks again from where it ended). With SparseReads, a run in
// a closed segment takes one read of the file; otherwise, or where a
// record fails its check, it is Read's first record alone.
func (j *journal) ReadRun(n uint64, max int) ([][]byte, error) {
	if j.opts.SparseReads && max > 1 {
		j.readMu.Lock() // before base, as in Read
		j.mu.Lock()
		open, base := j.log != nil, j.base
		j.mu.Unlock()
		var raws [][]byte
		ok := false
		if open && n > base && n-base >= j.v2From.Load() {
			raws, ok = j.readClosed(n-base, max)
		}
		j.readMu.Unlock()
		if ok {
			out := make([][]byte, 0, len(raws))
			for k, raw := range raws {
				p, _, good := j.openRecord(n-base+uint64(k), raw)
				if !good {
					break // Read says what is wrong with it
				}
				out = append(out, p)
			}
			if len(out) > 0 {
				return out, nil
			}
		}
	}
	p, err := j.Read(n)
	if err != nil {
		return nil, err
	}
	return [][]byte{p}, nil
}

// errNotFound is returned by journal.Read for a record that is not stored.
var errNotFound = errors.New("record not found")

// Bounds returns the first and last record numbers; an empty journal has
// first == last+1.
func (j *journal) Bounds() (first, last uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.log == nil {
		return j.base + 1, j.base
	}
	first, _ = j.log.FirstIndex()
	last, _ = j.log.LastIndex()
	return first + j.base, last + j.base
}

// TruncateFront drops every record before n. tidwall/wal makes this crash
// safe (a .START file that the next open finishes).
//
// tidwall/wal unlinks the segment files it drops while it holds the log,
// and so while this journal's writers wait; unlinking the last name of a
// file frees its blocks and page cache, about 2 ms per MiB on the test
// machine (strace: each acceptor checkpoint stalled that node's accepts
// 20-40 ms). So every file that may go first gets a second name in the
// trash directory, tidwall's unlinks only drop a name, and the trash is
// emptied once the lock is let go. Leftovers of a crash are emptied at
// open. The trash lives inside dir: tidwall/wal and segmentFiles skip
// directories.
func (j *journal) TruncateFront(n uint64) error {
	j.readMu.Lock()
	defer j.readMu.Unlock()
	j.sparse.invalidate()
	j.mu.Lock()
	if err := j.writableLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	if first, _ := j.log.FirstIndex(); n <= first+j.base {
		j.mu.Unlock()
		return nil // nothing before n is left
	}
	trashed := j.trashSegmentsLocked(n - j.base)
	err := j.log.TruncateFront(n - j.base)
	if err != nil {
		err = j.fail(fmt.Errorf("truncate front to %d: %w", n, err))
	} else {
		j.segCount, j.segBytes = segmentStats(j.dir)
	}
	j.mu.Unlock()
	for _, p := range trashed {
		os.Remove(p)
	}
	return err
}

// trashDir is where TruncateFront parks the segment files it drops.
func (j *journal) trashDir() string { return filepath.Join(j.dir, "trash") }

// trashSegmentsLocked links every segment file that truncating the log
// before record idx may remove (those starting at or before idx) into the
// trash, and returns the links made. A file it cannot link is simply
// unlinked by tidwall/wal, as before.
func (j *journal) trashSegmentsLocked(idx uint64) []string {
	segs, err := segmentFiles(j.dir)
	if err != nil || os.MkdirAll(j.trashDir(), 0o750) != nil {
		return nil
	}
	var links []string
	for _, p := range segs {
		start, _ := strconv.ParseUint(filepath.Base(p), 10, 64)
		if start > idx {
			break
		}
		link := filepath.Join(j.trashDir(), filepath.Base(p))
		os.Remove(link) // a leftover of an earlier truncation
		if os.Link(p, link) == nil {
			links = append(links, link)
		}
	}
	return links
}

// TruncateBack drops every record after n.
func (j *journal) TruncateBack(n uint64) error {
	j.readMu.Lock()
	defer j.readMu.Unlock()
	j.sparse.invalidate()
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writableLocked(); err != nil {
		return err
	}
	if err := j.log.TruncateBack(n - j.base); err != nil {
		return j.fail(fmt.Errorf("truncate back to %d: %w", n, err))
	}
	if j.synced > n-j.base {
		j.synced = n - j.base
	}
	j.segCount, j.segBytes = segmentStats(j.dir)
	if err := j.log.Sync(); err != nil {
		return j.fail(fmt.Errorf("truncate back to %d: sync: %w", n, err))
	}
	return nil
}

// Close closes the journal (tidwall/wal syncs the tail as it closes; only
// crash drops unsynced records).
func (j *journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.log == nil {
		return nil
	}
	err := j.log.Close()
	j.log = nil
	return err
}

// crash simulates power loss for tests: records written after the last
// sync are dropped, and the journal is closed.
func (j *journal) crash() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.log == nil {
		return nil
	}
	first, _ := j.log.FirstIndex()
	last, _ := j.log.LastIndex()
	keep := max(j.synced, first-1) // records before first are gone already
	if last > keep {
		if err := j.log.TruncateBack(keep); err != nil && !errors.Is(err, wal.ErrCorrupt) {
			return err
		}
	}
	err := j.log.Close()
	j.log = nil
	return err
}

// formatFile names the position of a journal's first record in the
// current format: "v2 <position>". A journal without one was written
// before the format; openJournal writes it.
const formatFile = "FORMAT"

// loadFormat reads FORMAT. Without one, every record is taken for the
// older format until openJournal writes it. An unreadable one
// counts as a journal in the current format throughout, so that older
// records there read as damaged and are repaired, never trusted blindly.
func (j *journal) loadFormat() error {
	b, err := os.ReadFile(filepath.Join(j.dir, formatFile))
	if errors.Is(err, os.ErrNotExist) {
		if segs, _ := segmentFiles(j.dir); len(segs) == 0 {
			return j.writeFormat(1) // a new journal
		}
		j.v2From.Store(math.MaxUint64) // every record so far is of the older format
		return nil
	}
	if err != nil {
		return err
	}
	var n uint64
	if _, err := fmt.Sscanf(string(b), "v2 %d", &n); err != nil || n == 0 {
		n = 1
	}
	j.v2From.Store(n)
	return nil
}

// writeFormat records that records from position n on are in the
// current format.
func (j *journal) writeFormat(n uint64) error {
	if err := replaceFileSync(filepath.Join(j.dir, formatFile), fmt.Appendf(nil, "v2 %d\n", n)); err != nil {
		return fmt.Errorf("write %s: %w", formatFile, err)
	}
	j.v2From.Store(n)
	return nil
}

// segmentInfo is one segment file: its path and the positions it holds,
// first up to next-1.
type segmentInfo struct {
	path        string
	first, next uint64
}

// closedSegments lists the segment files before the tail one, oldest
// first: their contents no longer change, so they can be read from disk
// while the journal is in use.
func (j *journal) closedSegments() []segmentInfo {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.closedSegmentsLocked()
}

func (j *journal) closedSegmentsLocked() []segmentInfo {
	segs, _ := segmentFiles(j.dir)
	var out []segmentInfo
	for i := 0; i+1 < len(segs); i++ {
		a, _ := strconv.ParseUint(filepath.Base(segs[i]), 10, 64)
		b, _ := strconv.ParseUint(filepath.Base(segs[i+1]), 10, 64)
		if a > 0 && b > a {
			out = append(out, segmentInfo{path: segs[i], first: a, next: b})
		}
	}
	return out
}

// segmentOf names the segment file that holds journal number n, relative
// to the journal's parent directory (for messages: "log/00000000000000000001").
func (j *journal) segmentOf(n uint64) string {
	j.mu.Lock()
	base := j.base
	j.mu.Unlock()
	segs, _ := segmentFiles(j.dir)
	pos := n - base
	name := "?"
	for _, p := range segs {
		start, _ := strconv.ParseUint(filepath.Base(p), 10, 64)
		if start > pos {
			break
		}
		name = filepath.Base(p)
	}
	return filepath.Join(filepath.Base(j.dir), name)
}

// Name is the journal's directory name (for messages).
func (j *journal) Name() string { return filepath.Base(j.dir) }

// ScanClosed checks every record of a closed segment and returns the
// journal numbers of those that are bad.
func (j *journal) ScanClosed(s segmentInfo) ([]uint64, error) {
	data, err := os.ReadFile(s.path)
	if err != nil {
		return nil, err // truncated away meanwhile, or unreadable
	}
	sc := j.scanSegment(data, s.first)
	j.mu.Lock()
	base := j.base
	j.mu.Unlock()
	var bad []uint64
	for n := s.first; n < s.next; n++ {
		if _, ok := sc.good[n]; !ok {
			bad = append(bad, n+base)
		}
	}
	return bad, nil
}

// RewriteRecords replaces the payloads of records, fix mapping journal
// numbers to payloads, and returns the segment files it rewrote. Each such
// segment is written anew, to a temporary file that is synced and renamed
// over the old one (a crash leaves the old file or the new one): the
// records in fix with their new payloads, every other good record as it
// reads now, and every other bad one as a hole, still bad, for a later
// rewrite. The tail segment, which tidwall/wal holds open for appends, is
// rewritten with the log closed and opened again around it, so syncs and
// reads wait meanwhile.
func (j *journal) RewriteRecords(fix map[uint64][]byte) ([]string, error) {
	j.syncMu.Lock() // a sync must not run on the log while it is reopened
	defer j.syncMu.Unlock()
	j.readMu.Lock()
	defer j.readMu.Unlock()
	j.sparse.invalidate()
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writableLocked(); err != nil {
		return nil, err
	}
	segs, err := segmentFiles(j.dir)
	if err != nil {
		return nil, err
	}
	last, _ := j.log.LastIndex()
	type seg struct {
		path        string
		first, next uint64
	}
	var all []seg
	for i, p := range segs {
		s := seg{path: p, next: last + 1}
		s.first, _ = strconv.ParseUint(filepath.Base(p), 10, 64)
		if i+1 < len(segs) {
			s.next, _ = strconv.ParseUint(filepath.Base(segs[i+1]), 10, 64)
		}
		all = append(all, s)
	}
	todo := map[int]bool{}
	for n := range fix {
		pos, found := n-j.base, false
		for i, s := range all {
			if pos >= s.first && pos < s.next {
				todo[i], found = true, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("rewrite record %d: %w", n, errNotFound)
		}
	}
	tail := todo[len(all)-1]
	if tail {
		if err := j.log.Close(); err != nil { // it syncs the tail first
			return nil, j.fail(fmt.Errorf("rewrite: close: %w", err))
		}
		j.log = nil
	}
	var done []string
	for i := range all {
		if !todo[i] {
			continue
		}
		s := all[i]
		data, err := os.ReadFile(s.path)
		if err != nil {
			return done, j.fail(fmt.Errorf("rewrite %s: %w", s.path, err))
		}
		sc := j.scanSegment(data, s.first)
		var out []byte
		for pos := s.first; pos < s.next; pos++ {
			p, ok := fix[pos+j.base]
			if !ok {
				p = sc.good[pos] // nil for a bad one: a hole
			}
			rec := appendRecord(nil, pos, pos, p)
			out = binary.AppendUvarint(out, uint64(len(rec)))
			out = append(out, rec...)
		}
		tmp := s.path + ".rewrite"
		if err := writeFileSync(tmp, out); err != nil {
			return done, j.fail(fmt.Errorf("rewrite %s: %w", s.path, err))
		}
		if err := os.Rename(tmp, s.path); err != nil {
			return done, j.fail(fmt.Errorf("rewrite %s: %w", s.path, err))
		}
		if err := syncDir(j.dir); err != nil {
			return done, j.fail(fmt.Errorf("rewrite %s: sync dir: %w", s.path, err))
		}
		done = append(done, filepath.Join(filepath.Base(j.dir), filepath.Base(s.path)))
	}
	if tail {
		l, err := wal.Open(j.dir, j.walOptions())
		if err != nil {
			return done, j.fail(fmt.Errorf("rewrite: reopen: %w", err))
		}
		j.log = l
		j.segCount, j.segBytes = segmentStats(j.dir)
		return done, nil
	}
	if err := j.log.ClearCache(); err != nil {
		return done, j.fail(fmt.Errorf("rewrite: clear cache: %w", err))
	}
	return done, nil
}

// baseFile holds a journal's base and meta: "<base>\n<meta>".
const baseFile = "BASE"

func (j *journal) loadBase() error {
	b, err := os.ReadFile(filepath.Join(j.dir, baseFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	head, meta, _ := bytes.Cut(b, []byte("\n"))
	base, err := strconv.ParseUint(string(head), 10, 64)
	if err != nil {
		return fmt.Errorf("%s: %w", baseFile, err)
	}
	j.base, j.meta = base, meta
	return nil
}

// Meta returns the data stored with the base by Reset.
func (j *journal) Meta() []byte {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.meta
}

// Reset drops every record and restarts numbering: the next record is
// base+1. meta is stored with the base. A crash part way leaves the old
// base with a suffix of the old segments (oldest are removed first) or
// with none: states the learner treats like a compacted or an empty log
// and repairs by catching up again.
func (j *journal) Reset(base uint64, meta []byte) error {
	j.readMu.Lock()
	defer j.readMu.Unlock()
	j.sparse.invalidate()
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writableLocked(); err != nil {
		return err
	}
	if err := j.log.Close(); err != nil {
		return j.fail(fmt.Errorf("reset: close: %w", err))
	}
	j.log = nil
	tmp := filepath.Join(j.dir, baseFile+".tmp")
	body := append(strconv.AppendUint(nil, base, 10), '\n')
	body = append(body, meta...)
	if err := writeFileSync(tmp, body); err != nil {
		return j.fail(fmt.Errorf("reset: %w", err))
	}
	segs, err := segmentFiles(j.dir)
	if err != nil {
		return j.fail(fmt.Errorf("reset: %w", err))
	}
	ents, _ := os.ReadDir(j.dir)
	for _, e := range ents { // leftovers of an interrupted truncation too
		if n := e.Name(); strings.HasSuffix(n, ".START") || strings.HasSuffix(n, ".END") {
			segs = append(segs, filepath.Join(j.dir, n))
		}
	}
	for _, p := range segs {
		if err := os.Remove(p); err != nil {
			return j.fail(fmt.Errorf("reset: %w", err))
		}
	}
	if err := os.Rename(tmp, filepath.Join(j.dir, baseFile)); err != nil {
		return j.fail(fmt.Errorf("reset: %w", err))
	}
	if err := syncDir(j.dir); err != nil {
		return j.fail(fmt.Errorf("reset: sync dir: %w", err))
	}
	if err := j.writeFormat(1); err != nil {
		return j.fail(fmt.Errorf("reset: %w", err))
	}
	l, err := wal.Open(j.dir, j.walOptions())
	if err != nil {
		return j.fail(fmt.Errorf("reset: reopen: %w", err))
	}
	j.log, j.base, j.meta, j.synced = l, base, meta, 0
	j.segCount, j.segBytes = segmentStats(j.dir)
	return nil
}

// replaceFileSync replaces the file at path with body, durably: a crash
// leaves the old file or the new one.
func replaceFileSync(path string, body []byte) error {
	if err := writeFileSync(path+".tmp", body); err != nil {
		return err
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func writeFileSync(path string, body []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(body); err != nil {
		f.Close()
		return err
	}
	return syncClose(f)
}

// dirSize reports the bytes used by the files in dir, for status.
func dirSize(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}
