#!/usr/bin/env bash
# reads.sh: how long reads of old entries take on a long log.
#
# Starts a 3-node paxoslog cluster on 127.0.0.1:7581-7583 with fresh data
# directories under one temporary directory, fills the log with ENTRIES
# entries of SIZE bytes in batch appends of 1,000 (16 clients over the
# three nodes), then, as one client on one keep-alive connection to the
# leader (curl, timing each request), reads READS random single entries
# from the oldest third of the log, and RANGES ranges of 1,000 entries
# from the same third, linearizable and with stale=true. It prints the
# p50, p90 and p99 of each kind. Everything it started is stopped and
# every temporary file removed when it exits, however it exits.
#
# Knobs (environment):
#   ENTRIES=1000000   entries in the log (whole batches of 1,000)
#   SIZE=100          bytes per value
#   READS=200         single reads
#   RANGES=50         range reads of each kind
set -euo pipefail

ENTRIES=${ENTRIES:-1000000}
SIZE=${SIZE:-100}
READS=${READS:-200}
RANGES=${RANGES:-50}
for v in ENTRIES READS RANGES; do
	[[ ${!v} =~ ^[1-9][0-9]{0,8}$ ]] || { echo "reads: $v must be a positive number, got '${!v}'" >&2 && exit 2; }
done
[ "$ENTRIES" -ge 6000 ] || { echo "reads: ENTRIES must be at least 6000" >&2 && exit 2; }

prog=reads
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for i in 1 2 3; do start "$i"; done
leader=$(wait_leader 1)
say "leader is node $leader; filling the log with $ENTRIES entries in batches of 1,000"
"$bin" bench --targets "$(url 1),$(url 2),$(url 3)" --clients 16 --count $((ENTRIES / 1000)) \
	--batch 1000 --size "$SIZE" --warmup 0s --json >/dev/null
last=$(field "$(status "$leader")" last)
third=$((last / 3))
base=$(url "$leader")

# percentiles <file>: p50, p90 and p99 in ms of the times (s) in file.
percentiles() {
	sort -g "$1" | awk '{ t[NR] = $1 * 1000 }
		function p(q) { i = int(NR * q + 0.999999); if (i < 1) i = 1; return t[i] }
		END { printf "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  (%d)\n", p(0.5), p(0.9), p(0.99), NR }'
}
# timed <out> <url>...: one curl, one connection, each request's time.
timed() {
	local out=$1 args=()
	shift
	for u in "$@"; do args+=(-o /dev/null "$u"); done
	curl -sf -w '%{time_total}\n' "${args[@]}" >"$out" || die "a read failed"
}

urls=()
for _ in $(seq "$READS"); do urls+=("$base/v1/log/$((1 + (RANDOM * 32768 + RANDOM) % third))"); done
timed "$work/single" "${urls[@]}"
echo "single reads from the oldest third of $last: $(percentiles "$work/single")"
for kind in linearizable stale; do
	urls=()
	extra=""
	[ "$kind" = stale ] && extra="&stale=true"
	for _ in $(seq "$RANGES"); do
		urls+=("$base/v1/log?from=$((1 + (RANDOM * 32768 + RANDOM) % (third - 1000)))&limit=1000$extra")
	done
	timed "$work/range" "${urls[@]}"
	echo "1,000-entry ranges, $kind: $(percentiles "$work/range")"
done
