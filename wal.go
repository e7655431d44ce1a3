package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
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
//	crc32c(payload) (4 bytes, little endian) || payload
//
// so that a record torn or zero-filled by a crash is recognised on open.
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
	readMu sync.Mutex

	mu       sync.Mutex // protects the fields below and serialises writes
	base     uint64     // journal number = tidwall record number + base
	meta     []byte     // opaque data stored with base
	log      *wal.Log
	err      error  // sticky write/sync error
	synced   uint64 // every record <= synced is on disk
	segBytes int    // estimated bytes in the tail segment
	segCount int    // segment files seen at the last directory sync
	batch    wal.Batch
	sealBuf  []byte // one record with its checksum; the batch copies it
}

// openJournal opens (or creates) the journal in dir, repairing a torn tail:
// records after the last one whose checksum holds were never synced, so
// never acknowledged, and are dropped.
func openJournal(dir string, opts journalOptions) (*journal, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 16 << 20
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	j := &journal{dir: dir, opts: opts}
	wopts := j.walOptions()
	l, err := wal.Open(dir, wopts)
	if errors.Is(err, wal.ErrCorrupt) {
		// A partial record at the end of the last segment: cut it off.
		if rerr := trimTornSegment(dir); rerr != nil {
			return nil, fmt.Errorf("open journal %s: repair torn tail: %w", dir, rerr)
		}
		l, err = wal.Open(dir, wopts)
	}
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	j.log = l
	if err := j.loadBase(); err != nil {
		l.Close()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	if err := j.trimBadTail(); err != nil {
		l.Close()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	last, _ := l.LastIndex()
	j.synced = last
	os.RemoveAll(j.trashDir()) // what a crash left parked there
	j.segCount, j.segBytes = segmentStats(dir)
	if err := syncDir(dir); err != nil {
		l.Close()
		return nil, fmt.Errorf("open journal %s: sync dir: %w", dir, err)
	}
	return j, nil
}

func (j *journal) walOptions() *wal.Options {
	return &wal.Options{
		NoSync:           true, // we sync explicitly, once per batch
		SegmentSize:      j.opts.SegmentSize,
		LogFormat:        wal.Binary,
		SegmentCacheSize: 2,
		AllowEmpty:       true,
		DirPerms:         0o750,
		FilePerms:        0o640,
	}
}

// trimBadTail drops trailing records whose checksum fails (zero-filled or
// half-written pages). A bad record followed by a good one is corruption of
// synced data and is reported, never repaired.
func (j *journal) trimBadTail() error {
	first, _ := j.log.FirstIndex()
	last, _ := j.log.LastIndex()
	keep := last
	for keep >= first && keep > 0 {
		raw, err := j.log.Read(keep)
		if err != nil {
			return err
		}
		if _, ok := checkRecord(raw); ok {
			break
		}
		keep--
	}
	if keep == last {
		return nil
	}
	if err := j.log.TruncateBack(keep); err != nil {
		return fmt.Errorf("trim bad tail to %d: %w", keep, err)
	}
	return j.log.Sync()
}

// trimTornSegment truncates the newest segment file of dir after its last
// complete record.
func trimTornSegment(dir string) error {
	segs, err := segmentFiles(dir)
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		return errors.New("no segment files")
	}
	path := segs[len(segs)-1]
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	pos := 0
	for pos < len(data) {
		size, n := binary.Uvarint(data[pos:])
		if n <= 0 || uint64(len(data)-pos-n) < size {
			break
		}
		pos += n + int(size)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(pos)); err != nil {
		f.Close()
		return err
	}
	return syncClose(f)
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

func sealRecord(payload []byte) []byte {
	return appendSealed(make([]byte, 0, 4+len(payload)), payload)
}

// appendSealed appends payload with its checksum in front to b.
func appendSealed(b, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, crcTable))
	return append(b, payload...)
}

func checkRecord(raw []byte) ([]byte, bool) {
	if len(raw) < 4 {
		return nil, false
	}
	payload := raw[4:]
	return payload, binary.LittleEndian.Uint32(raw) == crc32.Checksum(payload, crcTable)
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
	for i, p := range payloads {
		j.sealBuf = appendSealed(j.sealBuf[:0], p)
		j.segBytes += len(j.sealBuf) + binary.MaxVarintLen32
		j.batch.Write(last+uint64(i)+1, j.sealBuf)
	}
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
	j.mu.Lock()
	l, base := j.log, j.base
	j.mu.Unlock()
	if l == nil {
		return nil, errJournalClosed
	}
	if n <= base {
		return nil, errNotFound
	}
	j.readMu.Lock()
	raw, err := l.Read(n - base)
	j.readMu.Unlock()
	if err != nil {
		if errors.Is(err, wal.ErrNotFound) {
			return nil, errNotFound
		}
		return nil, fmt.Errorf("read record %d: %w", n, err)
	}
	p, ok := checkRecord(raw)
	if !ok {
		return nil, fmt.Errorf("read record %d: %w", n, errJournalCorrupt)
	}
	return p, nil
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
	j.mu.Lock()
	if err := j.writableLocked(); err != nil {
		j.mu.Unlock()
		return err
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
	l, err := wal.Open(j.dir, j.walOptions())
	if err != nil {
		return j.fail(fmt.Errorf("reset: reopen: %w", err))
	}
	j.log, j.base, j.meta, j.synced = l, base, meta, 0
	j.segCount, j.segBytes = segmentStats(j.dir)
	return nil
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
