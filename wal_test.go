package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of the journal: durability across close and crash, torn-tail and
// bad-checksum repair on open, corruption reporting, and truncation.

// smallSegments makes a journal cycle segment files every few records.
const smallSegments = 128

func openTestJournal(t *testing.T, dir string, opts journalOptions) *journal {
	t.Helper()
	j, err := openJournal(dir, opts)
	if err != nil {
		t.Fatalf("open journal: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// journalPayload is the payload of record n in these tests.
func journalPayload(n int) []byte { return []byte(fmt.Sprintf("record %d", n)) }

// appendJournalRecords appends the payloads of records from..to one by one.
func appendJournalRecords(t *testing.T, j *journal, from, to int) {
	t.Helper()
	for n := from; n <= to; n++ {
		seq, err := j.Append(journalPayload(n))
		if err != nil {
			t.Fatalf("append %d: %v", n, err)
		}
		if seq != uint64(n) {
			t.Fatalf("append %d: got record number %d", n, seq)
		}
	}
}

// checkJournalRecords checks that j holds exactly records from..to with the
// payloads appendJournalRecords wrote.
func checkJournalRecords(t *testing.T, j *journal, from, to int) {
	t.Helper()
	first, last := j.Bounds()
	if first != uint64(from) || last != uint64(to) {
		t.Fatalf("bounds = %d..%d, want %d..%d", first, last, from, to)
	}
	for n := from; n <= to; n++ {
		p, err := j.Read(uint64(n))
		if err != nil {
			t.Fatalf("read %d: %v", n, err)
		}
		if want := journalPayload(n); string(p) != string(want) {
			t.Fatalf("read %d = %q, want %q", n, p, want)
		}
	}
	for _, n := range []uint64{first - 1, last + 1} {
		if _, err := j.Read(n); !errors.Is(err, errNotFound) {
			t.Errorf("read %d outside %d..%d: err = %v, want errNotFound", n, first, last, err)
		}
	}
}

// newestSegment returns the path of dir's newest segment file.
func newestSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, err := segmentFiles(dir)
	if err != nil || len(segs) == 0 {
		t.Fatalf("segment files of %s: %v %v", dir, segs, err)
	}
	return segs[len(segs)-1]
}

func appendToSegment(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// walBinaryEntry frames body as tidwall/wal's binary format stores one
// entry: uvarint(len) || body.
func walBinaryEntry(body []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(body))), body...)
}

// tailRecorder returns journal options whose OnTailDamage records every
// report and answers keep.
func tailRecorder(keep bool) (journalOptions, *[]tailDamage) {
	reports := new([]tailDamage)
	return journalOptions{OnTailDamage: func(d tailDamage) (bool, error) {
		*reports = append(*reports, d)
		return keep, nil
	}}, reports
}

func TestJournalSurvivesReopen(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, smallSegments} {
		t.Run(fmt.Sprintf("segment size %d", size), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts := journalOptions{SegmentSize: size}
			j := openTestJournal(t, dir, opts)
			if first, last := j.Bounds(); first != 1 || last != 0 {
				t.Fatalf("fresh journal bounds = %d..%d, want 1..0", first, last)
			}
			appendJournalRecords(t, j, 1, 5)
			seq, err := j.Append(journalPayload(6), journalPayload(7), journalPayload(8))
			if err != nil || seq != 8 {
				t.Fatalf("batch append = %d, %v; want 8", seq, err)
			}
			appendJournalRecords(t, j, 9, 30)
			if err := j.Sync(); err != nil {
				t.Fatalf("sync: %v", err)
			}
			if got := j.Synced(); got != 30 {
				t.Errorf("synced = %d, want 30", got)
			}
			checkJournalRecords(t, j, 1, 30)
			if err := j.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}

			j = openTestJournal(t, dir, opts)
			checkJournalRecords(t, j, 1, 30)
			if got := j.Synced(); got != 30 {
				t.Errorf("synced after reopen = %d, want 30", got)
			}
			if segs, _ := segmentFiles(dir); size == smallSegments && len(segs) < 3 {
				t.Errorf("%d segment files, want several", len(segs))
			}
			appendJournalRecords(t, j, 31, 32)
			checkJournalRecords(t, j, 1, 32)
		})
	}
}

func TestJournalClosed(t *testing.T) {
	t.Parallel()
	j := openTestJournal(t, t.TempDir(), journalOptions{})
	appendJournalRecords(t, j, 1, 1)
	if err := j.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := j.Append([]byte("x")); !errors.Is(err, errJournalClosed) {
		t.Errorf("append after close: err = %v, want errJournalClosed", err)
	}
	if _, err := j.Read(1); !errors.Is(err, errJournalClosed) {
		t.Errorf("read after close: err = %v, want errJournalClosed", err)
	}
	if err := j.SyncTo(1); !errors.Is(err, errJournalClosed) {
		t.Errorf("sync after close: err = %v, want errJournalClosed", err)
	}
	if err := j.TruncateFront(1); !errors.Is(err, errJournalClosed) {
		t.Errorf("truncate after close: err = %v, want errJournalClosed", err)
	}
	if err := j.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestJournalCrashDropsUnsynced(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		size   int
		synced int // records appended and synced
		after  int // records appended after the sync
	}{
		{"nothing synced", 0, 0, 3},
		{"some synced", 0, 4, 3},
		{"all synced", 0, 4, 0},
		{"unsynced records span segments", smallSegments, 5, 25},
		{"synced records span segments", smallSegments, 25, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts := journalOptions{SegmentSize: tc.size}
			j := openTestJournal(t, dir, opts)
			appendJournalRecords(t, j, 1, tc.synced)
			if err := j.SyncTo(uint64(tc.synced)); err != nil {
				t.Fatalf("sync to %d: %v", tc.synced, err)
			}
			if got := j.Synced(); got != uint64(tc.synced) {
				t.Fatalf("synced = %d, want %d", got, tc.synced)
			}
			appendJournalRecords(t, j, tc.synced+1, tc.synced+tc.after)
			if err := j.crash(); err != nil {
				t.Fatalf("crash: %v", err)
			}

			j = openTestJournal(t, dir, opts)
			checkJournalRecords(t, j, 1, tc.synced)
			// The journal goes on from the last synced record.
			appendJournalRecords(t, j, tc.synced+1, tc.synced+2)
			checkJournalRecords(t, j, 1, tc.synced+2)
		})
	}
}

// TestJournalSyncTo checks the group-commit shortcut: SyncTo returns
// without an fsync when the records asked for are already durable.
func TestJournalSyncTo(t *testing.T) {
	t.Parallel()
	var syncs atomic.Int32
	j := openTestJournal(t, t.TempDir(), journalOptions{OnSync: func(time.Duration) { syncs.Add(1) }})
	check := func(what string, wantSynced uint64, wantSyncs int32) {
		t.Helper()
		if got := j.Synced(); got != wantSynced {
			t.Errorf("%s: synced = %d, want %d", what, got, wantSynced)
		}
		if got := syncs.Load(); got != wantSyncs {
			t.Errorf("%s: %d fsyncs, want %d", what, got, wantSyncs)
		}
	}
	if err := j.Sync(); err != nil {
		t.Fatalf("sync empty: %v", err)
	}
	check("sync of an empty journal", 0, 0)
	appendJournalRecords(t, j, 1, 3)
	check("append", 0, 0)
	if err := j.SyncTo(2); err != nil {
		t.Fatalf("sync to 2: %v", err)
	}
	check("sync to 2", 3, 1) // it covers everything appended before it began
	if err := j.SyncTo(3); err != nil {
		t.Fatalf("sync to 3: %v", err)
	}
	if err := j.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	check("syncs of synced records", 3, 1)
	appendJournalRecords(t, j, 4, 4)
	if err := j.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	check("sync of a new record", 4, 2)
}

// TestJournalRepairsTail appends to the newest segment file what a crash
// may leave there: a torn record, zeros, or whole records whose checksum
// fails. Open must drop exactly that and keep every record before it.
func TestJournalRepairsTail(t *testing.T) {
	t.Parallel()
	// badCRC is a framed record whose checksum fails, good one at position
	// n with the synced mark a real append would give it.
	badCRC := func(payload string) []byte {
		body := make([]byte, 4+len(payload))
		binary.LittleEndian.PutUint32(body, crc32.Checksum([]byte(payload), crcTable)+1)
		copy(body[4:], payload)
		return walBinaryEntry(body)
	}
	good := func(n int) []byte {
		return walBinaryEntry(appendRecord(nil, uint64(n), uint64(n-1), journalPayload(n)))
	}
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name string
		tail func(next int) []byte // next is the number the first tail record would get
		kept int                   // good records at the start of tail
	}{
		{"length past the end", func(int) []byte { return cat(binary.AppendUvarint(nil, 100), []byte("abc")) }, 0},
		{"half a length", func(int) []byte { return []byte{0x80} }, 0},
		{"header of a long record", func(int) []byte { return binary.AppendUvarint(nil, 1<<20) }, 0},
		{"zero fill", func(int) []byte { return make([]byte, 64) }, 0},
		{"too short for a checksum", func(int) []byte { return walBinaryEntry([]byte{1, 2}) }, 0},
		{"bad checksum", func(int) []byte { return badCRC("lost") }, 0},
		{"several bad checksums", func(int) []byte { return cat(badCRC("lost 1"), badCRC("lost 2")) }, 0},
		{"bad checksum then torn", func(int) []byte { return cat(badCRC("lost"), []byte{0x85}) }, 0},
		{"good then bad checksum", func(next int) []byte { return cat(good(next), badCRC("lost")) }, 1},
		{"a record from another position", func(next int) []byte { return good(next + 1) }, 0},
	}
	for _, tc := range tests {
		for _, size := range []int{0, smallSegments} {
			for _, records := range []int{0, 20} {
				name := fmt.Sprintf("%s/segment size %d/%d records", tc.name, size, records)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					dir := t.TempDir()
					opts, rep := tailRecorder(false)
					opts.SegmentSize = size
					j := openTestJournal(t, dir, opts)
					appendJournalRecords(t, j, 1, records)
					if err := j.Close(); err != nil {
						t.Fatalf("close: %v", err)
					}
					appendToSegment(t, newestSegment(t, dir), tc.tail(records+1))

					j = openTestJournal(t, dir, opts)
					want := records + tc.kept
					checkJournalRecords(t, j, 1, want)
					if got := j.Synced(); got != uint64(want) {
						t.Errorf("synced after repair = %d, want %d", got, want)
					}
					if len((*rep)) != 1 || (*rep)[0].Damaged || (*rep)[0].From != uint64(want+1) {
						t.Errorf("tail (*rep) %+v, want one torn tail from %d", (*rep), want+1)
					}
					appendJournalRecords(t, j, want+1, want+3)
					if err := j.Sync(); err != nil {
						t.Fatalf("sync: %v", err)
					}
					if err := j.Close(); err != nil {
						t.Fatalf("close: %v", err)
					}

					j = openTestJournal(t, dir, opts)
					checkJournalRecords(t, j, 1, want+3)
					if len((*rep)) != 1 {
						t.Errorf("a clean reopen reported %+v", (*rep)[1:])
					}
				})
			}
		}
	}
}

// segmentRecordOffsets walks a segment file's framing and returns where
// each record starts (the offset of its length) and its body starts.
func segmentRecordOffsets(t *testing.T, data []byte) (starts, bodies []int) {
	t.Helper()
	for pos := 0; pos < len(data); {
		size, k := binary.Uvarint(data[pos:])
		if k <= 0 || pos+k+int(size) > len(data) {
			t.Fatalf("bad framing at %d", pos)
		}
		starts, bodies = append(starts, pos), append(bodies, pos+k)
		pos += k + int(size)
	}
	return starts, bodies
}

// TestJournalDamagedTail: bad records in the tail segment are reported
// before they are dropped, as damage when a good record after them (found
// through intact framing, or by scanning past framing that is itself
// damaged) was written after they were synced, as a torn tail otherwise.
func TestJournalDamagedTail(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		damage  func(data []byte, starts, bodies []int) // records 1..9 in one segment
		from    uint64                                  // first record dropped
		damaged bool
	}{
		{"payload byte of record 3", func(d []byte, s, b []int) { d[b[2]+7] ^= 0x40 }, 3, true},
		{"length of record 3", func(d []byte, s, b []int) { d[s[2]] = 0x7f }, 3, true},
		{"zeroed block over records 3 to 5", func(d []byte, s, b []int) { clear(d[s[2]+1 : s[5]-2]) }, 3, true},
		{"last record before the seal", func(d []byte, s, b []int) { d[b[7]+7] ^= 0x01 }, 8, true},
		// With group: the seal was written together with record 8, before
		// the sync that covered 8, so the seal's good copy proves nothing.
		{"group: unsynced record 8 torn", func(d []byte, s, b []int) { clear(d[b[7]:s[8]]) }, 8, false},
		{"the seal torn", func(d []byte, s, b []int) { d[b[8]+5] ^= 0x01 }, 9, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts, rep := tailRecorder(false)
			j := openTestJournal(t, dir, opts)
			group := strings.HasPrefix(tc.name, "group:")
			for n := 1; n <= 8; n++ { // each synced before the next
				appendJournalRecords(t, j, n, n)
				if n == 8 && group {
					continue
				}
				if err := j.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			// An idle seal: a record that says all eight are synced.
			if _, err := j.Append([]byte("seal")); err != nil {
				t.Fatal(err)
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			path := newestSegment(t, dir)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			starts, bodies := segmentRecordOffsets(t, data)
			tc.damage(data, starts, bodies)
			if err := os.WriteFile(path, data, 0o640); err != nil {
				t.Fatal(err)
			}
			j = openTestJournal(t, dir, opts)
			if len((*rep)) != 1 || (*rep)[0].Damaged != tc.damaged || (*rep)[0].From != tc.from || (*rep)[0].Segment != path {
				t.Fatalf("(*rep) %+v, want one from %d in %s, damaged %v", (*rep), tc.from, path, tc.damaged)
			}
			if d := (*rep)[0]; tc.from < 9 && d.Through != 9 {
				t.Fatalf("report %+v: the seal is a good record after the damage", d)
			}
			checkJournalRecords(t, j, 1, int(tc.from)-1)
		})
	}
	// The owner may refuse: nothing is dropped, the open fails.
	dir := t.TempDir()
	j := openTestJournal(t, dir, journalOptions{})
	appendJournalRecords(t, j, 1, 3)
	j.Close()
	appendToSegment(t, newestSegment(t, dir), []byte{0x80})
	refuse := errors.New("not now")
	if _, err := openJournal(dir, journalOptions{OnTailDamage: func(tailDamage) (bool, error) { return false, refuse }}); !errors.Is(err, refuse) {
		t.Fatalf("open with a refusing owner: %v", err)
	}
	j = openTestJournal(t, dir, journalOptions{})
	checkJournalRecords(t, j, 1, 3)
}

// TestJournalKeepsGoodRecordsAfterDamage: an owner that keeps the good
// records after damage in the tail segment gets them, with holes for the
// damaged ones that read as corrupt until RewriteRecords fills them; the
// segment is closed so that it can, and appends go on in a new one.
func TestJournalKeepsGoodRecordsAfterDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts, rep := tailRecorder(true)
	j := openTestJournal(t, dir, opts)
	for n := 1; n <= 9; n++ {
		appendJournalRecords(t, j, n, n)
		if err := j.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	path := newestSegment(t, dir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	starts, bodies := segmentRecordOffsets(t, data)
	data[bodies[2]+7] ^= 0x10        // record 3
	clear(data[starts[5]:bodies[5]]) // record 6's length: the framing breaks
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	j = openTestJournal(t, dir, opts)
	if len((*rep)) != 1 || !(*rep)[0].Damaged || !reflect.DeepEqual((*rep)[0].Holes, []uint64{3, 6}) || (*rep)[0].Through != 9 {
		t.Fatalf("(*rep) %+v, want damage with holes at 3 and 6 through 9", (*rep))
	}
	if first, last := j.Bounds(); first != 1 || last != 9 {
		t.Fatalf("bounds %d..%d, want 1..9", first, last)
	}
	for _, n := range []uint64{3, 6} {
		if _, err := j.Read(n); !errors.Is(err, errJournalCorrupt) {
			t.Fatalf("read hole %d: %v", n, err)
		}
	}
	if _, err := j.RewriteRecords(map[uint64][]byte{3: journalPayload(3), 6: journalPayload(6)}); err != nil {
		t.Fatalf("rewrite the holes: %v", err)
	}
	appendJournalRecords(t, j, 10, 12)
	checkJournalRecords(t, j, 1, 12)
	j.Close()
	j = openTestJournal(t, dir, opts)
	checkJournalRecords(t, j, 1, 12)
	if len((*rep)) != 1 {
		t.Fatalf("a clean reopen reported %+v", (*rep)[1:])
	}
}

// TestJournalCorruptRecord flips a byte of a record in a closed segment:
// that is synced data lost, and Read must say so rather than guess; the
// scan of the segment names it, and RewriteRecords puts a good copy back.
func TestJournalCorruptRecord(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		what   string
		sparse bool
	}{{"payload", false}, {"length", false}, {"zeroed", false}, {"payload", true}, {"length", true}, {"zeroed", true}} {
		what := c.what
		name := what
		if c.sparse {
			name += "/sparse reads"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts := journalOptions{SegmentSize: smallSegments, SparseReads: c.sparse}
			j := openTestJournal(t, dir, opts)
			appendJournalRecords(t, j, 1, 40)
			if err := j.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			j = openTestJournal(t, dir, opts)
			segs := j.closedSegments()
			if len(segs) < 2 {
				t.Fatalf("%d closed segments, want several", len(segs))
			}
			seg := segs[1]
			data, err := os.ReadFile(seg.path)
			if err != nil {
				t.Fatal(err)
			}
			starts, bodies := segmentRecordOffsets(t, data)
			if len(starts) < 3 {
				t.Fatalf("segment %s holds %d records", seg.path, len(starts))
			}
			victim := seg.first + 1
			switch what {
			case "payload":
				data[bodies[1]+6] ^= 0xff
			case "length":
				data[starts[1]] = 0x03
			case "zeroed":
				clear(data[starts[1]:bodies[2]])
			}
			if err := os.WriteFile(seg.path, data, 0o640); err != nil {
				t.Fatal(err)
			}
			j.Close()

			j = openTestJournal(t, dir, opts)
			if first, last := j.Bounds(); first != 1 || last != 40 {
				t.Fatalf("bounds = %d..%d, want 1..40: a closed segment is not the tail", first, last)
			}
			if p, err := j.Read(victim); !errors.Is(err, errJournalCorrupt) {
				t.Fatalf("read corrupt record %d = %q, %v; want errJournalCorrupt", victim, p, err)
			}
			bad, err := j.ScanClosed(seg)
			if err != nil {
				t.Fatal(err)
			}
			wantBad := []uint64{victim}
			if what == "zeroed" {
				wantBad = []uint64{victim, victim + 1}
			}
			if !reflect.DeepEqual(bad, wantBad) {
				t.Fatalf("scan found %v bad, want %v", bad, wantBad)
			}
			fix := map[uint64][]byte{}
			for _, n := range bad {
				fix[n] = journalPayload(int(n))
			}
			if _, err := j.RewriteRecords(fix); err != nil {
				t.Fatalf("rewrite: %v", err)
			}
			checkJournalRecords(t, j, 1, 40)
			if bad, _ := j.ScanClosed(seg); len(bad) != 0 {
				t.Fatalf("after the rewrite the scan finds %v bad", bad)
			}
			// The tail segment too, with the log reopened around it.
			if _, err := j.RewriteRecords(map[uint64][]byte{40: journalPayload(40)}); err != nil {
				t.Fatalf("rewrite in the tail segment: %v", err)
			}
			appendJournalRecords(t, j, 41, 41)
			checkJournalRecords(t, j, 1, 41)
			j.Close()
			j = openTestJournal(t, dir, opts)
			checkJournalRecords(t, j, 1, 41)
		})
	}
}

// TestJournalReadsOlderFormat: a journal written before the current
// record format (no FORMAT file, crc32c(payload) || payload records) reads
// as before, and new records go on in the current format.
func TestJournalReadsOlderFormat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var seg []byte
	for n := 1; n <= 5; n++ {
		p := journalPayload(n)
		rec := binary.LittleEndian.AppendUint32(nil, crc32.Checksum(p, crcTable))
		seg = append(seg, walBinaryEntry(append(rec, p...))...)
	}
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000001"), seg, 0o640); err != nil {
		t.Fatal(err)
	}
	j := openTestJournal(t, dir, journalOptions{})
	checkJournalRecords(t, j, 1, 5)
	appendJournalRecords(t, j, 6, 8)
	j.Close()
	j = openTestJournal(t, dir, journalOptions{})
	checkJournalRecords(t, j, 1, 8)
	if b, _ := os.ReadFile(filepath.Join(dir, formatFile)); string(b) != "v2 6\n" {
		t.Fatalf("FORMAT = %q", b)
	}
}

func TestJournalTruncateFront(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, smallSegments} {
		t.Run(fmt.Sprintf("segment size %d", size), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts := journalOptions{SegmentSize: size}
			j := openTestJournal(t, dir, opts)
			appendJournalRecords(t, j, 1, 30)
			if err := j.Sync(); err != nil {
				t.Fatalf("sync: %v", err)
			}
			before, _ := segmentFiles(dir)
			if err := j.TruncateFront(21); err != nil {
				t.Fatalf("truncate front: %v", err)
			}
			checkJournalRecords(t, j, 21, 30)
			checkTrashEmpty(t, j)
			if after, _ := segmentFiles(dir); size == smallSegments && len(after) >= len(before) {
				t.Fatalf("segments before truncating: %d, after: %d; want fewer", len(before), len(after))
			}
			if err := j.TruncateFront(21); err != nil {
				t.Fatalf("repeat truncate front: %v", err)
			}
			checkJournalRecords(t, j, 21, 30)
			appendJournalRecords(t, j, 31, 32)
			if err := j.crash(); err != nil {
				t.Fatalf("crash: %v", err)
			}

			j = openTestJournal(t, dir, opts)
			checkJournalRecords(t, j, 21, 30)
			appendJournalRecords(t, j, 31, 35)
			if err := j.Sync(); err != nil {
				t.Fatalf("sync: %v", err)
			}
			// Dropping every record leaves an empty journal that goes on
			// numbering where it was.
			if err := j.TruncateFront(36); err != nil {
				t.Fatalf("truncate everything: %v", err)
			}
			if first, last := j.Bounds(); first != 36 || last != 35 {
				t.Fatalf("bounds after truncating everything = %d..%d, want 36..35", first, last)
			}
			checkTrashEmpty(t, j)
			if err := j.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}

			j = openTestJournal(t, dir, opts)
			if first, last := j.Bounds(); first != 36 || last != 35 {
				t.Fatalf("bounds after reopen = %d..%d, want 36..35", first, last)
			}
			appendJournalRecords(t, j, 36, 37)
			checkJournalRecords(t, j, 36, 37)
		})
	}
}

// checkTrashEmpty: the segment files a truncation dropped are gone for
// good, not parked under a second name.
func checkTrashEmpty(t *testing.T, j *journal) {
	t.Helper()
	ents, err := os.ReadDir(j.trashDir())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) > 0 {
		t.Fatalf("trash holds %d files after a truncation, want none", len(ents))
	}
}

// TestJournalEmptiesTrashAtOpen: a crash between parking segment files in
// the trash and emptying it leaves files there; they are not records, and
// the next open removes them.
func TestJournalEmptiesTrashAtOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := journalOptions{SegmentSize: smallSegments}
	j := openTestJournal(t, dir, opts)
	appendJournalRecords(t, j, 1, 30)
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	segs, _ := segmentFiles(dir)
	if len(segs) < 2 {
		t.Fatalf("want several segments, got %d", len(segs))
	}
	// What a crash right after trashSegmentsLocked leaves: the first
	// segment under a second name, and a stray copy of another name.
	if links := j.trashSegmentsLocked(1); len(links) != 1 {
		t.Fatalf("parked %d files for record 1, want 1", len(links))
	}
	if err := os.WriteFile(filepath.Join(j.trashDir(), "00000000000000099999"), []byte("junk"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j = openTestJournal(t, dir, opts)
	checkJournalRecords(t, j, 1, 30)
	if _, err := os.Stat(j.trashDir()); !os.IsNotExist(err) {
		t.Fatalf("trash after open: %v, want it gone", err)
	}
}

// TestJournalGroupCommit appends and syncs from many goroutines: each must
// find its own records durable when SyncTo returns, and a crash right after
// must keep them all.
func TestJournalGroupCommit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := journalOptions{SegmentSize: 4 << 10}
	j := openTestJournal(t, dir, opts)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	seqs := make(chan uint64, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq, err := j.Append([]byte(fmt.Sprintf("w%d-%d", w, i)))
				if err == nil {
					err = j.SyncTo(seq)
				}
				if err != nil {
					errs <- err
					return
				}
				if got := j.Synced(); got < seq {
					errs <- fmt.Errorf("SyncTo(%d) returned with synced %d", seq, got)
					return
				}
				seqs <- seq
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(seqs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := make(map[uint64]bool)
	for seq := range seqs {
		if seen[seq] {
			t.Fatalf("record number %d given twice", seq)
		}
		seen[seq] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d records, want %d", len(seen), writers*each)
	}
	if err := j.crash(); err != nil {
		t.Fatalf("crash: %v", err)
	}

	j = openTestJournal(t, dir, opts)
	first, last := j.Bounds()
	if first != 1 || last != writers*each {
		t.Fatalf("bounds after crash = %d..%d, want 1..%d", first, last, writers*each)
	}
	// Each writer's records are all there, in the order it wrote them.
	next := make([]int, writers)
	for n := first; n <= last; n++ {
		p, err := j.Read(n)
		if err != nil {
			t.Fatalf("read %d: %v", n, err)
		}
		var w, i int
		if _, err := fmt.Sscanf(string(p), "w%d-%d", &w, &i); err != nil || w < 0 || w >= writers {
			t.Fatalf("record %d = %q", n, p)
		}
		if i != next[w] {
			t.Fatalf("record %d = %q, want writer %d's record %d", n, p, w, next[w])
		}
		next[w]++
	}
	if want := []int{each, each, each, each, each, each, each, each}; !reflect.DeepEqual(next, want) {
		t.Fatalf("records per writer = %v, want %v", next, want)
	}
}

// Regression (TestDiskBoundedUnderLoad under the race detector): readers
// that miss tidwall/wal's segment cache at once must each get their own
// record.
func TestJournalConcurrentReadsAcrossSegments(t *testing.T) {
	j, err := openJournal(t.TempDir(), journalOptions{SegmentSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	const n = 400
	for i := 1; i <= n; i++ {
		if _, err := j.Append([]byte(fmt.Sprintf("record-%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 3*n; k++ {
				i := uint64((k*(r+7)+r*97)%n + 1) // jump between segments
				p, err := j.Read(i)
				if err != nil || string(p) != fmt.Sprintf("record-%04d", i) {
					t.Errorf("read %d: %q %v", i, p, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestJournalEmptyTailSegment: right after a batch fills a segment the
// newest file is empty; bad records at the end of the one before it are
// still found and told apart (here a torn last record).
func TestJournalEmptyTailSegment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts, rep := tailRecorder(false)
	j := openTestJournal(t, dir, opts)
	appendJournalRecords(t, j, 1, 4)
	j.Close()
	path := newestSegment(t, dir)
	data, _ := os.ReadFile(path)
	data[len(data)-1] ^= 0x01 // record 4
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000005"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	j = openTestJournal(t, dir, opts)
	if len((*rep)) != 1 || (*rep)[0].From != 4 || (*rep)[0].Damaged {
		t.Fatalf("(*rep) %+v, want a torn record 4", (*rep))
	}
	checkJournalRecords(t, j, 1, 3)
	appendJournalRecords(t, j, 4, 5)
	checkJournalRecords(t, j, 1, 5)
}

// TestJournalRewriteKeepsOtherDamage: a rewrite of one bad record of a
// segment that holds another keeps the other as a hole, still bad, for a
// rewrite of its own.
func TestJournalRewriteKeepsOtherDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := journalOptions{SegmentSize: smallSegments}
	j := openTestJournal(t, dir, opts)
	appendJournalRecords(t, j, 1, 40)
	j.Close()
	j = openTestJournal(t, dir, opts)
	seg := j.closedSegments()[1]
	data, _ := os.ReadFile(seg.path)
	starts, _ := segmentRecordOffsets(t, data)
	if len(starts) < 4 {
		t.Fatalf("segment holds %d records", len(starts))
	}
	data[starts[1]-1] ^= 0x01 // the last byte of the first record
	data[starts[3]-1] ^= 0x01 // and of the third
	if err := os.WriteFile(seg.path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	j.log.ClearCache()
	a, b := seg.first, seg.first+2
	if _, err := j.RewriteRecords(map[uint64][]byte{a: journalPayload(int(a))}); err != nil {
		t.Fatalf("rewrite %d: %v", a, err)
	}
	if _, err := j.Read(b); !errors.Is(err, errJournalCorrupt) {
		t.Fatalf("read %d after rewriting %d: %v, want it still bad", b, a, err)
	}
	if _, err := j.RewriteRecords(map[uint64][]byte{b: journalPayload(int(b))}); err != nil {
		t.Fatalf("rewrite %d: %v", b, err)
	}
	checkJournalRecords(t, j, 1, 40)
}

// TestJournalSparseReads: records of closed segments read through sparse
// indexes (segindex.go) are the records written, concurrently, and stay
// so across the changes that rewrite closed segments: truncations at
// either end, rewrites with payloads of other sizes, and a reset.
func TestJournalSparseReads(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewSource(seed))
	dir := t.TempDir()
	j := openTestJournal(t, dir, journalOptions{SegmentSize: 4096, SparseReads: true})
	want := map[uint64]string{}
	const n = 3000
	for i := uint64(1); i <= n; i++ {
		want[i] = fmt.Sprintf("record %d %s", i, strings.Repeat("x", rng.Intn(40)))
		if _, err := j.Append([]byte(want[i])); err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, from, to uint64) {
		t.Helper()
		var wg sync.WaitGroup
		for r := 0; r < 4; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rr := rand.New(rand.NewSource(seed + int64(r)))
				for k := 0; k < 2000; k++ {
					i := from + uint64(rr.Int63n(int64(to-from+1)))
					if p, err := j.Read(i); err != nil || string(p) != want[i] {
						t.Errorf("%s: read %d = %q %v, want %q", what, i, p, err, want[i])
						return
					}
				}
			}()
		}
		wg.Wait()
		for k := 0; k < 200; k++ { // runs: consecutive records, at least one
			i := from + uint64(rng.Int63n(int64(to-from+1)))
			ps, err := j.ReadRun(i, 1+rng.Intn(300))
			if err != nil || len(ps) == 0 {
				t.Fatalf("%s: run from %d: %d records, %v", what, i, len(ps), err)
			}
			for m, p := range ps {
				if string(p) != want[i+uint64(m)] {
					t.Fatalf("%s: run from %d, record %d = %q, want %q", what, i, i+uint64(m), p, want[i+uint64(m)])
				}
			}
		}
		for _, i := range []uint64{from - 1, to + 1} {
			if _, err := j.Read(i); !errors.Is(err, errNotFound) {
				t.Errorf("%s: read %d outside %d..%d: %v, want errNotFound", what, i, from, to, err)
			}
		}
	}
	check("written", 1, n)
	j.readMu.Lock()
	indexed := len(j.sparse.index)
	j.readMu.Unlock()
	if segs := len(j.closedSegments()); indexed < segs/2 || segs < 10 {
		t.Fatalf("%d of %d closed segments have a sparse index: the reads did not go through them", indexed, segs)
	}
	if err := j.TruncateFront(777); err != nil { // inside a segment: tidwall/wal writes it anew
		t.Fatal(err)
	}
	check("after truncating the front", 777, n)
	fix := map[uint64][]byte{}
	for _, i := range []uint64{900, 1500, 2100} { // longer payloads: later offsets move
		want[i] = fmt.Sprintf("rewritten %d %s", i, strings.Repeat("y", 100))
		fix[i] = []byte(want[i])
	}
	if _, err := j.RewriteRecords(fix); err != nil {
		t.Fatal(err)
	}
	check("after a rewrite", 777, n)
	if err := j.TruncateBack(2500); err != nil {
		t.Fatal(err)
	}
	for i := uint64(2501); i <= 2600; i++ {
		want[i] = fmt.Sprintf("again %d", i)
		if _, err := j.Append([]byte(want[i])); err != nil {
			t.Fatal(err)
		}
	}
	check("after truncating the back and appending", 777, 2600)
	if err := j.Reset(5000, nil); err != nil {
		t.Fatal(err)
	}
	for i := uint64(5001); i <= 5400; i++ {
		want[i] = fmt.Sprintf("reset %d", i)
		if _, err := j.Append([]byte(want[i])); err != nil {
			t.Fatal(err)
		}
	}
	check("after a reset", 5001, 5400)
}
