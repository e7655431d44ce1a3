#!/usr/bin/env bash
# memory.sh: every node's memory while a three-node log grows under load.
#
# Starts a 3-node paxoslog cluster on 127.0.0.1:7581-7583 with fresh data
# directories under one temporary directory, then appends ENTRIES entries
# of SIZE bytes, BATCH a request, through all three nodes with CLIENTS
# clients, reading
# each node's VmRSS and VmHWM (from /proc) every INTERVAL seconds while it
# runs. It prints one line a sample, then each node's highest sampled RSS
# and its high-water mark at the end, and the append rate. The nodes inherit
# the environment: GOMEMLIMIT=off runs them without a memory limit (it
# wins over --memory-limit's default), GOGC=50 collects more often.
# Everything it started is stopped and every temporary file removed when
# it exits, however it exits; the load stops by itself after ENTRIES.
#
# Knobs (environment):
#   ENTRIES=1000000   entries to append (rounded down to whole batches)
#   BATCH=1           entries a request: above 1, batch appends (application/x-ndjson)
#   CLIENTS=64        concurrent clients
#   SIZE=100          bytes per value
#   INTERVAL=10       seconds between samples
set -euo pipefail

ENTRIES=${ENTRIES:-1000000}
SIZE=${SIZE:-100}
INTERVAL=${INTERVAL:-10}
BATCH=${BATCH:-1}
CLIENTS=${CLIENTS:-64}
[[ $ENTRIES =~ ^[1-9][0-9]{0,8}$ ]] || { echo "memory: ENTRIES must be a number from 1 to 999999999, got '$ENTRIES'" >&2 && exit 2; }
case $BATCH in [1-9] | [1-9][0-9] | [1-9][0-9][0-9] | [1-9][0-9][0-9][0-9] | 10000) ;; *) echo "memory: BATCH must be a number from 1 to 10000, got '$BATCH'" >&2 && exit 2 ;; esac
case $CLIENTS in [1-9] | [1-9][0-9] | [1-9][0-9][0-9]) ;; *) echo "memory: CLIENTS must be a number from 1 to 999, got '$CLIENTS'" >&2 && exit 2 ;; esac
[ $((ENTRIES / BATCH)) -ge 1 ] || { echo "memory: ENTRIES must be at least BATCH" >&2 && exit 2; }
case $INTERVAL in [1-9] | [1-9][0-9]) ;; *) echo "memory: INTERVAL must be 1 to 99 seconds, got '$INTERVAL'" >&2 && exit 2 ;; esac

prog=memory
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for i in 1 2 3; do start "$i"; done
leader=$(wait_leader 1)
say "leader is node $leader; appending $ENTRIES entries of $SIZE bytes, $BATCH a request, $CLIENTS clients over nodes 1-3"

kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
"$bin" bench --targets "$(url 1),$(url 2),$(url 3)" --clients "$CLIENTS" --count $((ENTRIES / BATCH)) \
	--batch "$BATCH" --size "$SIZE" --warmup 0s --json >"$work/bench.json" &
load=$!
pids+=($load)
start_s=$(now)
hi=()
while kill -0 "$load" 2>/dev/null; do
	line="t=$(since "$start_s")s last=$(field "$(status 1)" last)"
	for i in 1 2 3; do
		r=$(kb "${node[$i]}" VmRSS)
		h=$(kb "${node[$i]}" VmHWM)
		line+="  node $i rss=$((r / 1024))MB hwm=$((h / 1024))MB"
		[ "$r" -gt "${hi[$i]:-0}" ] && hi[$i]=$r
	done
	echo "$line"
	for _ in $(seq $((INTERVAL * 10))); do
		kill -0 "$load" 2>/dev/null || break
		sleep 0.1
	done
done
wait "$load" || die "the load failed: $(cat "$work/bench.json")"
res=$(cat "$work/bench.json")
for i in 1 2 3; do
	echo "node $i: RSS at most $((hi[$i] / 1024)) MB while loading, VmHWM $(($(kb "${node[$i]}" VmHWM) / 1024)) MB at the end"
done
echo "entries/s $(field "$res" entries_per_s), requests/s $(rate "$res"), p99 $(p99 "$res") ms, last index $(field "$(status 1)" last)"
