#!/usr/bin/env bash
# rebuild.sh: how long a follower takes to rebuild after its disk is lost,
# and what the cluster's appends do meanwhile.
#
# Starts a 3-node paxoslog cluster on 127.0.0.1:7581-7583 with fresh data
# directories under one temporary directory, fills the log with ENTRIES
# entries, measures the append rate for DURATION, then SIGKILLs node 3,
# deletes its --data and starts it again, and measures the append rate
# again while node 3 rebuilds (through nodes 1 and 2 only). It prints when
# node 3 said it was rebuilding, when it voted again (rebuilt: its
# acceptor state back, its log learned up to what the others had
# checkpointed), and when it had applied every entry the leader had when
# it started. Everything it started is stopped and every temporary file
# removed when it exits, however it exits; every loop is bounded.
#
# Knobs (environment):
#   ENTRIES=1000000   entries in the log before the disk is lost
#   CLIENTS=16        clients of the measured load
#   DURATION=20s      measured time of each load run (the second one runs
#                     longer if the rebuild takes longer: see WAIT)
#   WAIT=600          seconds to wait at most for node 3 to catch up
#   SIZE=100          bytes per value
set -euo pipefail

ENTRIES=${ENTRIES:-1000000}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-20s}
WAIT=${WAIT:-600}
SIZE=${SIZE:-100}

prog=rebuild
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for i in 1 2 3; do start "$i"; done
leader=$(wait_leader 1)
say "leader is node $leader; filling the log with $ENTRIES entries"
fill "$ENTRIES" "$SIZE"

base=(--targets http://127.0.0.1:7581,http://127.0.0.1:7582 --clients "$CLIENTS" --size "$SIZE" --json)
say "appends through nodes 1 and 2 with every disk whole, $DURATION"
before=$("$bin" bench "${base[@]}" --duration "$DURATION")

target=$(field "$(status "$leader")" last)
say "losing node 3's disk (log at index $target)"
kill_node 3
rm -rf "$work/data/3"
t0=$(now)
start 3
"$bin" bench "${base[@]}" --duration "$DURATION" >"$work/during.json" &
benchpid=$!
pids+=($benchpid)
recovering="" serving="" caught=""
rebuilt() {
	local st last
	st=$(status 3)
	[ -n "$st" ] || return 1
	[ -z "$recovering" ] && [ "$(field "$st" recovering)" = true ] && recovering=$(since "$t0")
	[ -z "$serving" ] && [ "$(field "$st" state)" = serving ] && serving=$(since "$t0")
	last=$(field "$st" last)
	[ -n "$serving" ] && [ -n "$last" ] && [ "$last" -ge "$target" ] && caught=$(since "$t0")
}
poll_until "$WAIT" rebuilt || true
wait "$benchpid" || true
during=$(cat "$work/during.json")
[ -n "$caught" ] || say "node 3 did not catch up within $WAIT s"
echo
echo "entries in the log:          $target"
echo "node 3 said recovering after: ${recovering:-?} s"
echo "node 3 voting again after:    ${serving:-?} s"
echo "node 3 caught up after:       ${caught:-?} s"
echo "appends/s, $CLIENTS clients via nodes 1 and 2: $(rate "$before") before, $(rate "$during") during the first $DURATION of the rebuild"
echo "p99 ms:                                  $(p99 "$before") before, $(p99 "$during") during"
grep -h "rebuilt acceptor state" "$work/node3.log" || true
