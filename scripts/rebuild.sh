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

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "rebuild: $*" >&2; }
die() {
	say "$*"
	exit 1
}
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || die "go is not installed"
command -v curl >/dev/null || die "curl is not installed"

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say "building"
(cd "$repo" && go build -o "$work/paxoslog" .)
bin=$work/paxoslog
export PAXOSLOG_CLUSTER_KEY=rebuild-sh
peers=1=http://127.0.0.1:7581,2=http://127.0.0.1:7582,3=http://127.0.0.1:7583
declare -A node
start() { # start <id>
	"$bin" --id "$1" --listen "127.0.0.1:758$1" --peers "$peers" --data "$work/data/$1" \
		>>"$work/node$1.log" 2>&1 &
	node[$1]=$!
	pids+=($!)
}
status() { curl -sf "http://127.0.0.1:758$1/v1/status" || true; }
field() { # field <json> <name>: a number or bare word from flat JSON
	sed -n "s/.*\"$2\":\"\{0,1\}\([a-z0-9.]*\).*/\1/p" <<<"$1" | head -1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

for i in 1 2 3; do start "$i"; done
for _ in $(seq 600); do
	st=$(status 1)
	[ -n "$st" ] && [ "$(field "$st" leader)" != 0 ] && [ "$(field "$st" state)" = serving ] && break
	sleep 0.1
done
[ "$(field "$(status 1)" leader)" != 0 ] || die "no leader after 60 s"
leader=$(field "$(status 1)" leader)
say "leader is node $leader; filling the log with $ENTRIES entries"
"$bin" bench --targets http://127.0.0.1:7581,http://127.0.0.1:7582,http://127.0.0.1:7583 \
	--clients 64 --count "$ENTRIES" --size "$SIZE" --warmup 0s --json >/dev/null

base=(--targets http://127.0.0.1:7581,http://127.0.0.1:7582 --clients "$CLIENTS" --size "$SIZE" --json)
say "appends through nodes 1 and 2 with every disk whole, $DURATION"
before=$("$bin" bench "${base[@]}" --duration "$DURATION")

target=$(field "$(status "$leader")" last)
say "losing node 3's disk (log at index $target)"
kill -9 "${node[3]}"
wait "${node[3]}" 2>/dev/null || true
rm -rf "$work/data/3"
t0=$(now)
start 3
"$bin" bench "${base[@]}" --duration "$DURATION" >"$work/during.json" &
benchpid=$!
pids+=($benchpid)
recovering="" serving="" caught=""
for _ in $(seq $((WAIT * 10))); do
	st=$(status 3)
	if [ -n "$st" ]; then
		[ -z "$recovering" ] && [ "$(field "$st" recovering)" = true ] && recovering=$(since "$t0")
		[ -z "$serving" ] && [ "$(field "$st" state)" = serving ] && serving=$(since "$t0")
		last=$(field "$st" last)
		if [ -n "$serving" ] && [ -n "$last" ] && [ "$last" -ge "$target" ]; then
			caught=$(since "$t0")
			break
		fi
	fi
	sleep 0.1
done
wait "$benchpid" || true
during=$(cat "$work/during.json")
[ -n "$caught" ] || say "node 3 did not catch up within $WAIT s"
rate() { field "$1" ops_per_s; }
p99() { field "$1" p99_ms; }
echo
echo "entries in the log:          $target"
echo "node 3 said recovering after: ${recovering:-?} s"
echo "node 3 voting again after:    ${serving:-?} s"
echo "node 3 caught up after:       ${caught:-?} s"
echo "appends/s, $CLIENTS clients via nodes 1 and 2: $(rate "$before") before, $(rate "$during") during the first $DURATION of the rebuild"
echo "p99 ms:                                  $(p99 "$before") before, $(p99 "$during") during"
grep -h "rebuilt acceptor state" "$work/node3.log" || true
