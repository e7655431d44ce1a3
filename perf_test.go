package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

// perf_test.go: benchmarks of the pieces on the append path, and of a
// node's memory and restart time with a million entries. Run with
// go test -run XXX -bench . -benchtime ...

// batchValue makes a value of n entries of about size bytes each.
func batchValue(slot Slot, n, size int) Value {
	payload := []byte(`"` + strings.Repeat("x", size-2) + `"`)
	v := Value{Entries: make([]Entry, n)}
	for i := range v.Entries {
		var id EntryID
		copy(id[:], fmt.Sprintf("%08d-%07d", slot, i))
		v.Entries[i] = Entry{ID: id, Data: payload}
	}
	return v
}

// BenchmarkAcceptorBatchAccept: one accept of a 64-entry batch, journaled
// and fsynced, per op.
func BenchmarkAcceptorBatchAccept(b *testing.B) {
	a, err := openAcceptor(b.TempDir(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer a.close()
	bal := Ballot{Round: 1, Node: 1}
	v := batchValue(1, 64, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Accept(bal, []SlotValue{{Slot: Slot(i + 1), Value: v}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkLearnerApply: applying one chosen 64-entry slot to the client
// log (no fsync: the learner syncs in the background).
func BenchmarkLearnerApply(b *testing.B) {
	// empty: a fresh log; full window: the steady state of a busy node,
	// whose dedup window (defaultDedupWindow indices) is full, so every
	// entry applied also evicts one.
	for _, prefill := range []int{0, defaultDedupWindow} {
		name := "empty"
		if prefill > 0 {
			name = "full window"
		}
		b.Run(name, func(b *testing.B) {
			n, err := NewNode(Config{ID: 1, DataDir: b.TempDir()}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			slot := Slot(0)
			for range prefill / 64 {
				slot++
				n.learner.chosen(SlotValue{Slot: slot, Value: batchValue(slot, 64, 100)})
			}
			vals := make([]Value, b.N)
			for i := range vals {
				vals[i] = batchValue(slot+Slot(i+1), 64, 100)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				n.learner.chosen(SlotValue{Slot: slot + Slot(i+1), Value: vals[i]})
			}
			b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// BenchmarkMessageEncoding: encoding and decoding one accept message
// carrying a 64-entry batch: the binary form the transport sends, and
// JSON (base64 entry data) beside it for comparison.
func BenchmarkMessageEncoding(b *testing.B) {
	req := AcceptReq{From: 1, Ballot: Ballot{Round: 3, Node: 1}, Commit: 41,
		Values: []SlotValue{{Slot: 42, Value: batchValue(42, 64, 100)}}}
	forms := []struct {
		name   string
		encode func() ([]byte, error)
		decode func([]byte, *AcceptReq) error
	}{
		{"binary", req.MarshalBinary, func(p []byte, m *AcceptReq) error { return m.UnmarshalBinary(p) }},
		{"json", func() ([]byte, error) { return json.Marshal(req) }, func(p []byte, m *AcceptReq) error { return json.Unmarshal(p, m) }},
	}
	for _, f := range forms {
		b.Run(f.name, func(b *testing.B) {
			body, _ := f.encode()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				out, err := f.encode()
				if err != nil {
					b.Fatal(err)
				}
				var back AcceptReq
				if err := f.decode(out, &back); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// rssBytes reads this process's resident set size.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// peakRSS samples the process's resident memory every 10 ms until stop
// is closed, and returns the most it saw. It first resets the kernel's
// high-water mark (VmHWM) where it can, so that hwmBytes then tells the
// peak since, between samples too.
func peakRSS(stop <-chan struct{}) <-chan int64 {
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // best effort: resets VmHWM
	out := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, rssBytes())
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// hwmBytes is the process's VmHWM (0 if unknown).
func hwmBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkMillionEntries fills a node's log with 1,000,000 entries of
// about 100 bytes, reporting the process's resident memory at its peak
// while it fills (sampled, and the kernel's high-water mark) and after,
// then the time a restart takes until the node serves (reads) again, and
// the time to read an old index after the restart. Each op is one whole
// fill and restart: run it with -benchtime 1x.
func BenchmarkMillionEntries(b *testing.B) {
	const total, per = 1_000_000, 1000
	for it := 0; it < b.N; it++ {
		dir := b.TempDir()
		n, err := NewNode(Config{ID: 1, DataDir: dir}, nil)
		if err != nil {
			b.Fatal(err)
		}
		stop := make(chan struct{})
		peak := peakRSS(stop)
		for s := 0; s < total/per; s++ {
			n.learner.chosen(SlotValue{Slot: Slot(s + 1), Value: batchValue(Slot(s+1), per, 100)})
		}
		close(stop)
		b.ReportMetric(float64(<-peak)/(1<<20), "rss-MB-peak-filling")
		b.ReportMetric(float64(hwmBytes())/(1<<20), "hwm-MB")
		debug.FreeOSMemory()
		b.ReportMetric(float64(rssBytes())/(1<<20), "rss-MB-full")
		n.Close()

		start := time.Now()
		n, err = NewNode(Config{ID: 1, DataDir: dir}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, last := n.learner.Bounds(); last != total {
			b.Fatalf("last = %d after restart", last)
		}
		if _, err := n.learner.Get(total); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "restart-ms")
		t0 := time.Now()
		if _, err := n.learner.Get(17); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(t0).Microseconds()), "old-read-us")
		debug.FreeOSMemory()
		b.ReportMetric(float64(rssBytes())/(1<<20), "rss-MB-restarted")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB-restarted")
		n.Close()
	}
}

// BenchmarkCatchUp: a node with an empty log learning 64-entry slots from
// a peer's log, one catch-up reply at a time, as after a lost disk: the
// peer reads and encodes the reply, the node decodes and applies it (no
// network, no fsync). Per op: one reply of up to catchupBatch entries.
// json is the form of builds before the binary one.
func BenchmarkCatchUp(b *testing.B) {
	const slots = 2000
	src, err := NewNode(Config{ID: 1, DataDir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	for s := Slot(1); s <= slots; s++ {
		src.learner.chosen(SlotValue{Slot: s, Value: batchValue(s, 64, 100)})
	}
	for _, form := range []string{"json", "binary"} {
		b.Run(form, func(b *testing.B) {
			b.ReportAllocs()
			entries := 0
			for i := 0; i < b.N; {
				b.StopTimer()
				dst, err := NewNode(Config{ID: 2, DataDir: b.TempDir()}, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for from := Slot(1); from <= slots && i < b.N; i++ {
					resp, err := src.learner.readChosen(from, dst.learner.last+1, catchupBatch)
					if err != nil {
						b.Fatal(err)
					}
					var body []byte
					if form == "json" {
						body, err = json.Marshal(resp)
					} else {
						body, err = resp.MarshalBinary()
					}
					if err != nil {
						b.Fatal(err)
					}
					var got CatchupResp
					if err := got.UnmarshalBinary(body); err != nil {
						b.Fatal(err)
					}
					for _, sv := range got.Values {
						entries += len(sv.Value.Entries)
					}
					dst.learner.chosen(got.Values...)
					from = got.Through + 1
				}
				b.StopTimer()
				dst.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// BenchmarkDedupWindow: the dedup window full at defaultDedupWindow
// indices, for entries without Idempotency-Keys and with 36-byte ones
// (a UUID), as dedupWindow holds it and as a map from identity to where
// it went plus a ring of identity strings (refWindow, the form it
// replaced) would. Reports the live heap the window takes and, per op,
// one index remembered in the steady state (one identity in, one out;
// the allocations include making the key).
func BenchmarkDedupWindow(b *testing.B) {
	type window interface {
		remember(Index, EntryID, string)
	}
	forms := []struct {
		name string
		make func() window
	}{
		{"compact", func() window { return newDedupWindow(defaultDedupWindow) }},
		{"map", func() window {
			return &refWindow{size: defaultDedupWindow, recent: map[string]appliedEntry{}, ring: make([]string, defaultDedupWindow)}
		}},
	}
	ident := func(i Index, keyed bool) (EntryID, string) {
		var id EntryID
		binary.BigEndian.PutUint64(id[8:], uint64(i))
		id[0] = 1
		if !keyed {
			return id, ""
		}
		return id, fmt.Sprintf("%08x-0000-4000-8000-%012x", uint32(i>>48), uint64(i)&0xffffffffffff)
	}
	for _, keyed := range []bool{false, true} {
		for _, f := range forms {
			name := f.name + "/no-keys"
			if keyed {
				name = f.name + "/36-byte-keys"
			}
			b.Run(name, func(b *testing.B) {
				heap := func() uint64 {
					runtime.GC()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					return ms.HeapAlloc
				}
				before := heap()
				w := f.make()
				i := Index(0)
				for ; i < defaultDedupWindow; i++ {
					id, key := ident(i+1, keyed)
					w.remember(i+1, id, key)
				}
				full := heap() - before
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					i++
					id, key := ident(i, keyed)
					w.remember(i, id, key)
				}
				b.StopTimer()
				runtime.KeepAlive(w)
				b.ReportMetric(float64(full)/(1<<20), "heap-MB-full")
			})
		}
	}
}

// BenchmarkEntryHash: the replica check's hash of one client log record
// of 100 bytes without a key, as every node computes it for every entry
// it applies.
func BenchmarkEntryHash(b *testing.B) {
	r := learnerRecord{Slot: 123456, Pos: 17, N: 1000, ID: EntryID{1, 2, 3}, Data: bytes.Repeat([]byte("x"), 100)}
	for i := 0; b.Loop(); i++ { // b.Loop keeps the calls in its body
		r.hash(Index(i))
	}
}

// BenchmarkBuildSegIndex: indexing one closed 4 MiB segment of the
// client log (records of about 150 bytes), as a node does for each
// segment that closes.
func BenchmarkBuildSegIndex(b *testing.B) {
	j, err := openJournal(b.TempDir(), journalOptions{SegmentSize: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	rec := bytes.Repeat([]byte("r"), 150)
	batch := make([][]byte, 1000)
	for i := range batch {
		batch[i] = rec
	}
	for len(j.closedSegments()) == 0 {
		if _, err := j.Append(batch...); err != nil {
			b.Fatal(err)
		}
		if err := j.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	seg := j.closedSegments()[0]
	b.ReportAllocs()
	for b.Loop() {
		ix, err := buildSegIndex(seg)
		if err != nil || len(ix.offs) == 0 {
			b.Fatalf("index: %v", err)
		}
	}
}
