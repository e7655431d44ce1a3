package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"sort"
	"sync"
)

// segindex.go: reads of single records from closed segment files without
// loading the whole file.
//
// tidwall/wal v1.2.1 reads a record of a segment it has not cached by
// loading that whole segment (4 MiB for the client log) and parsing every
// entry in it; it caches two. Random reads over a long log miss that cache
// nearly every time: profiled on 1,000,000 entries, 60% of a reading
// node's CPU went to loadSegmentEntries, and a read of one old entry took
// 1.5 ms at the median. A closed segment never changes while its journal
// is open except through this journal's own truncations and rewrites, so
// a sparse index of it (the file offset of every sparseEvery-th entry) is
// built once, and a read then takes one pread of at most sparseEvery
// entries.
//
// Bounded: an index costs 4 bytes per sparseEvery records (about 7 KB
// per 1,000,000 entries of 100 bytes) and lives only while its segment
// does. Every record read this way is still checked (checksum and record
// number, journal.openRecord); a failed check falls back to tidwall/wal's
// read, which reports damage as before.

// sparseEvery is how many entries apart the offsets a sparse index keeps
// are.
const sparseEvery = 64

// segIndex is the sparse index of one closed segment file.
type segIndex struct {
	path        string
	first, next uint64   // tidwall record numbers first..next-1
	offs        []uint32 // offs[k]: file offset of entry first+k*sparseEvery
	size        int64    // file size
}

// segIndexes holds the sparse indexes of a journal's closed segments.
// Callers hold journal.readMu, which every change to closed segments
// (truncations, rewrites, resets) takes too, so what it holds is current.
type segIndexes struct {
	segs  []segmentInfo // closed segments, oldest first, as last listed
	index map[uint64]*segIndex
	gen   uint64 // counts invalidations: an index built before one is not stored
	// listed: segs is current as of listedAt appended bytes; a segment
	// can close only once about a segment's worth more is appended.
	listed   bool
	listedAt uint64
}

// invalidate forgets everything: closed segments changed. readMu held.
func (s *segIndexes) invalidate() {
	s.segs, s.index, s.listed = nil, nil, false
	s.gen++
}

// put stores ix unless closed segments changed since gen.
func (s *segIndexes) put(ix *segIndex, gen uint64) {
	if gen != s.gen {
		return
	}
	if s.index == nil {
		s.index = make(map[uint64]*segIndex)
	}
	s.index[ix.first] = ix
}

// buildSegIndex reads a closed segment file once and indexes it.
func buildSegIndex(seg segmentInfo) (*segIndex, error) {
	f, err := os.Open(seg.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Through a small buffer that is used again, not the whole file in
	// memory: a node closes several segments a second under batch
	// appends, and a fresh 4 MiB for each made work for the collector.
	br := segScanners.Get().(*bufio.Reader)
	defer segScanners.Put(br)
	br.Reset(f)
	defer br.Reset(nil)
	ix := &segIndex{path: seg.path, first: seg.first, next: seg.next, size: fi.Size()}
	var pos int64
	for n := seg.first; n < seg.next; n++ {
		if (n-seg.first)%sparseEvery == 0 {
			ix.offs = append(ix.offs, uint32(pos))
		}
		head, _ := br.Peek(binary.MaxVarintLen64) // fewer at the end of the file
		size, k := binary.Uvarint(head)
		if k <= 0 || uint64(ix.size-pos-int64(k)) < size {
			return nil, errNoFrame
		}
		if _, err := br.Discard(k + int(size)); err != nil {
			return nil, errNoFrame // the file is shorter than it said
		}
		pos += int64(k) + int64(size)
	}
	return ix, nil
}

// errNoFrame: a segment's records do not follow one another to its end.
var errNoFrame = errors.New("segment does not frame")

// segScanners holds the buffered readers buildSegIndex scans segments with.
var segScanners = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 256<<10) }}

// read returns the raw records n.. (tidwall record numbers) of the
// segment, count of them or as many as it holds from n on, with one
// pread of the span between two indexed offsets.
func (ix *segIndex) read(n uint64, count int) ([][]byte, error) {
	count = int(min(uint64(count), ix.next-n))
	k := (n - ix.first) / sparseEvery
	k2 := (n - ix.first + uint64(count) - 1) / sparseEvery // the indexed run that holds the last
	start := int64(ix.offs[k])
	end := ix.size
	if int(k2)+1 < len(ix.offs) {
		end = int64(ix.offs[k2+1])
	}
	f, err := os.Open(ix.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, end-start)
	if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	out := make([][]byte, 0, count)
	for i := ix.first + k*sparseEvery; len(out) < count; i++ {
		size, w := binary.Uvarint(buf)
		if w <= 0 || uint64(len(buf)-w) < size {
			return nil, errNoFrame
		}
		if i >= n {
			out = append(out, buf[w:w+int(size):w+int(size)])
		}
		buf = buf[w+int(size):]
	}
	return out, nil
}

// readClosed returns the raw records from tidwall record number pos on,
// up to count of them and to the end of pos's segment, if pos is in a
// closed segment (ok false otherwise, or when the file cannot be read
// this way). j.readMu held.
func (j *journal) readClosed(pos uint64, count int) (raws [][]byte, ok bool) {
	s := &j.sparse
	find := func() *segmentInfo {
		i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].next > pos })
		if i < len(s.segs) && s.segs[i].first <= pos {
			return &s.segs[i]
		}
		return nil
	}
	seg := find()
	if seg == nil {
		// Listed again (a directory read) only once a quarter segment
		// more was appended: a segment closed since is still in
		// tidwall/wal's cache, which serves it meanwhile.
		now := j.appended.Load()
		if s.listed && now-s.listedAt < uint64(j.opts.SegmentSize/4) {
			return nil, false
		}
		s.segs, s.listed, s.listedAt = j.closedSegments(), true, now
		if seg = find(); seg == nil {
			return nil, false // the tail segment's: tidwall/wal holds it in memory
		}
	}
	ix := s.index[seg.first]
	if ix == nil || ix.path != seg.path || ix.next != seg.next {
		var err error
		if ix, err = buildSegIndex(*seg); err != nil {
			return nil, false
		}
		s.put(ix, s.gen)
	}
	raws, err := ix.read(pos, count)
	if err != nil {
		delete(s.index, seg.first) // built again at the next read
		return nil, false
	}
	return raws, true
}

// warmSparse indexes every closed segment not indexed yet, so that the
// first reads of them are not the slow ones. It runs in the background
// (after open, and as segments close); each segment takes one read of
// its file.
func (j *journal) warmSparse() {
	j.warmMu.Lock() // one warming at a time; a later call finds little to do
	defer j.warmMu.Unlock()
	for _, seg := range j.closedSegments() {
		j.readMu.Lock()
		ix, gen := j.sparse.index[seg.first], j.sparse.gen
		j.readMu.Unlock()
		if ix != nil && ix.path == seg.path && ix.next == seg.next {
			continue
		}
		built, err := buildSegIndex(seg)
		if err != nil {
			continue // truncated away meanwhile, or damaged: reads fall back
		}
		j.readMu.Lock()
		j.sparse.put(built, gen)
		j.readMu.Unlock()
	}
}
