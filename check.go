package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"sort"
	"sync"
	"time"
)

// check.go: replicas check one another.
//
// Every client log record carries sum, this node's running sum (mod 2^64)
// of the hashes of the entries up to its index, where an entry's hash
// covers its index, slot, place in the slot, id, key and data: everything
// that is the same on every node (invariant L2; the time it was applied
// is not). A node's sums start wherever its log does (a log that began
// from a peer's compacted prefix, or was written by an older build, starts
// at 0 there), so nodes compare differences: the sum of the hashes of
// indices a..b is sum(b) - sum(a) + hash(a), which two records give, the
// same on every node that holds a..b whatever its log's start.
//
// Every CheckInterval each node asks each other member for its bounds,
// compares the sum over the indices both hold, and if they differ finds
// the first index that differs by bisection (one request a step, about 20
// for a million entries). A difference is an alarm: "alarm" in
// /v1/status, paxoslog_replica_alarm, and an ERROR line naming both nodes
// and the index. It clears when a later check finds the logs equal (a
// repair, say). The check costs two record reads per peer and interval
// when the logs agree: no rescans.

var entryHashTable = crc64.MakeTable(crc64.ECMA)

// hash returns the hash of the entry r holds at index i: the CRC-64 of
// its header (index, slot, place, key length), id, key and data, in that
// order. A small entry goes to crc64.Update as one run of bytes, copied
// into a buffer on the stack: the CRC is the same as over the parts one
// after another, but hash/crc64 takes inputs shorter than 64 bytes (the
// header, the id) a byte at a time, and so spent most of its time there
// (under batch appends 8 to 11% of a node's CPU went to these hashes).
func (r learnerRecord) hash(i Index) uint64 {
	var buf [256]byte
	binary.LittleEndian.PutUint64(buf[0:], uint64(i))
	binary.LittleEndian.PutUint64(buf[8:], uint64(r.Slot))
	binary.LittleEndian.PutUint64(buf[16:], uint64(r.Pos)<<32|uint64(r.N))
	binary.LittleEndian.PutUint64(buf[24:], uint64(len(r.Key)))
	n := 32 + copy(buf[32:], r.ID[:])
	var h uint64
	if n+len(r.Key)+len(r.Data) <= len(buf) {
		n += copy(buf[n:], r.Key)
		n += copy(buf[n:], r.Data)
		h = crc64.Update(0, entryHashTable, buf[:n])
	} else {
		h = crc64.Update(0, entryHashTable, buf[:n])
		h = crc64.Update(h, entryHashTable, []byte(r.Key))
		h = crc64.Update(h, entryHashTable, r.Data)
	}
	return spread(h)
}

// spread is splitmix64's finaliser, so that sums of nearby hashes spread.
func spread(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// firstSummed finds the first retained index whose record carries a sum
// (records after it do too), given that the last one does.
func (l *Learner) firstSummed() (Index, error) {
	lo, hi := l.first, l.last
	for lo < hi {
		mid := lo + (hi-lo)/2
		rec, err := l.record(mid)
		if errors.Is(err, errJournalCorrupt) {
			return l.last, nil // compare from the end only until it is repaired
		}
		if err != nil {
			return 0, err
		}
		if rec.HasSum {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// errNoSum: a range to sum starts or ends where this node holds no sum.
var errNoSum = errors.New("no sum held there")

// rangeSum returns the sum of the hashes of the entries at a..b.
func (l *Learner) rangeSum(a, b Index) (uint64, error) {
	l.mu.Lock()
	from := l.sumFrom
	l.mu.Unlock()
	if a < from || b < a {
		return 0, errNoSum
	}
	ra, err := l.record(a)
	if err != nil {
		return 0, err
	}
	rb, err := l.record(b)
	if err != nil {
		return 0, err
	}
	if !ra.HasSum || !rb.HasSum {
		return 0, errNoSum
	}
	return rb.Sum - ra.Sum + ra.hash(a), nil
}

// methodSums asks for range sums (the replica check).
const methodSums = "sums"

// SumsReq asks for the sum over each of Ranges ([first, last] pairs).
type SumsReq struct {
	From   NodeID     `json:"from"`
	Ranges [][2]Index `json:"ranges,omitempty"`
}

// SumsResp gives the peer's bounds (First..Last, sums held from SumFrom)
// and the sum over each range asked for (Known false: not held).
type SumsResp struct {
	First   Index    `json:"first"`
	Last    Index    `json:"last"`
	SumFrom Index    `json:"sum_from"`
	Sums    []uint64 `json:"sums,omitempty"`
	Known   []bool   `json:"known,omitempty"`
}

func (l *Learner) serveSums(req SumsReq) SumsResp {
	l.mu.Lock()
	resp := SumsResp{First: l.first, Last: l.last, SumFrom: l.sumFrom}
	l.mu.Unlock()
	for _, r := range req.Ranges {
		s, err := l.rangeSum(r[0], r[1])
		resp.Sums = append(resp.Sums, s)
		resp.Known = append(resp.Known, err == nil)
	}
	return resp
}

// ReplicaAlarm says that this node's log and a peer's differ.
type ReplicaAlarm struct {
	Peer    NodeID    `json:"peer"`
	Index   Index     `json:"index"` // the first index where they differ
	Since   time.Time `json:"since"`
	Message string    `json:"message"`
}

// replicaCheck is one node's view of the checks against its peers.
type replicaCheck struct {
	mu     sync.Mutex
	alarms map[NodeID]ReplicaAlarm
}

// alarm returns the standing alarm with the lowest index, or nil.
func (c *replicaCheck) alarm() *ReplicaAlarm {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out *ReplicaAlarm
	for _, a := range c.alarms {
		if out == nil || a.Index < out.Index || (a.Index == out.Index && a.Peer < out.Peer) {
			a := a
			out = &a
		}
	}
	return out
}

// checkLoop compares this node's log with each peer's every CheckInterval.
func (n *Node) checkLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		others := n.others()
		sort.Slice(others, func(i, j int) bool { return others[i] < others[j] })
		for _, peer := range others {
			idx, differ, err := n.compareWith(ctx, peer)
			if err != nil {
				continue // unreachable, or the logs moved under the check: next time
			}
			n.setAlarm(peer, idx, differ)
		}
	}
}

// sumsFrom asks peer for the sums over ranges.
func (n *Node) sumsFrom(ctx context.Context, peer NodeID, ranges ...[2]Index) (SumsResp, error) {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	var resp SumsResp
	if err := n.call(cctx, peer, methodSums, SumsReq{From: n.cfg.ID, Ranges: ranges}, &resp); err != nil {
		return resp, err
	}
	if len(resp.Sums) != len(ranges) || len(resp.Known) != len(ranges) {
		return resp, fmt.Errorf("sums from %d: %d answers to %d ranges", peer, len(resp.Sums), len(ranges))
	}
	return resp, nil
}

// compareWith compares the indices this node and peer both hold, and
// returns the first that differs, if any.
func (n *Node) compareWith(ctx context.Context, peer NodeID) (Index, bool, error) {
	bounds, err := n.sumsFrom(ctx, peer)
	if err != nil {
		return 0, false, err
	}
	l := n.learner
	l.mu.Lock()
	first, last, from := l.first, l.last, l.sumFrom
	l.mu.Unlock()
	a := max(first, from, bounds.First, bounds.SumFrom)
	b := min(last, bounds.Last)
	if a > b {
		return 0, false, nil // nothing both hold (yet)
	}
	same := func(to Index) (bool, error) {
		resp, err := n.sumsFrom(ctx, peer, [2]Index{a, to})
		if err != nil {
			return false, err
		}
		if !resp.Known[0] {
			return false, errNoSum
		}
		own, err := l.rangeSum(a, to)
		if err != nil {
			return false, err
		}
		return own == resp.Sums[0], nil
	}
	ok, err := same(b)
	if err != nil || ok {
		return 0, false, err
	}
	lo, hi := a, b // the sums over a..hi differ; find the least such hi
	for lo < hi {
		mid := lo + (hi-lo)/2
		ok, err := same(mid)
		if err != nil {
			return 0, false, err
		}
		if ok {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, true, nil
}

// setAlarm records the outcome of a check against peer.
func (n *Node) setAlarm(peer NodeID, idx Index, differ bool) {
	c := &n.check
	c.mu.Lock()
	prev, had := c.alarms[peer]
	switch {
	case differ && (!had || prev.Index != idx):
		a := ReplicaAlarm{Peer: peer, Index: idx, Since: time.Now(),
			Message: fmt.Sprintf("the logs of node %d and node %d first differ at index %d", n.cfg.ID, peer, idx)}
		c.alarms[peer] = a
		n.log.Error("replicas differ", "peer", peer, "first_differing_index", idx, "message", a.Message)
	case !differ && had:
		delete(c.alarms, peer)
		n.log.Info("replicas agree again", "peer", peer)
	}
	count := len(c.alarms)
	c.mu.Unlock()
	n.metrics.replicaAlarm.Set(float64(count))
}
