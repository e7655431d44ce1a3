#!/usr/bin/env bash
# join.sh: how long a new node takes from the POST that adds it to being a
# voter when the log is long, what the cluster's appends do meanwhile, and
# how long acknowledged appends pause when the leader is removed.
#
# Starts a 3-node paxoslog cluster on 127.0.0.1:7581-7583 with fresh data
# directories under one temporary directory, fills the log with ENTRIES
# entries, and measures the append rate for DURATION. Then it starts node
# 4 (127.0.0.1:7584) with an empty --data and --join, adds it with
# POST /v1/admin/members, and measures the append rate again while node 4
# catches up; it prints when node 4 became a voter (promoted by the leader
# once close enough) and when it had applied every entry the leader had.
# Last, under a fresh load through the three nodes that do not lead, it
# removes the leader with DELETE /v1/admin/members/<id> after
# REMOVE_AFTER seconds and prints the longest time without an
# acknowledged append (the load tool's max_gap_ms) and the errors the
# clients saw. Everything it started is stopped and every temporary file
# removed when it exits, however it exits; every loop is bounded.
#
# Knobs (environment):
#   ENTRIES=1000000   entries in the log before node 4 is added
#   CLIENTS=16        clients of the measured load
#   DURATION=20s      measured time of each load run
#   REMOVE_AFTER=5    seconds into the last run at which the leader goes
#   WAIT=600          seconds to wait at most for node 4 to catch up
#   SIZE=100          bytes per value
set -euo pipefail

ENTRIES=${ENTRIES:-1000000}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-20s}
REMOVE_AFTER=${REMOVE_AFTER:-5}
WAIT=${WAIT:-600}
SIZE=${SIZE:-100}

prog=join
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
admin() { # admin <via> <method> [path] [body]: prints the status code
	curl -s -o "$work/admin.out" -w '%{http_code}' -X "$2" -H "Authorization: Bearer $PAXOSLOG_CLUSTER_KEY" \
		-H 'Content-Type: application/json' ${4:+-d "$4"} "$(url "$1")/v1/admin/members${3:-}"
}
is_voter() { # is_voter <via> <id>
	curl -sf "$(url "$1")/v1/members" | grep -q "\"id\":$2,\"url\":\"[^\"]*\",\"voter\":true"
}

for i in 1 2 3; do start "$i"; done
leader=$(wait_leader 1)
say "leader is node $leader; filling the log with $ENTRIES entries"
fill "$ENTRIES" "$SIZE"

base=(--clients "$CLIENTS" --size "$SIZE" --json --duration "$DURATION")
say "appends through nodes 1-3, $DURATION"
before=$("$bin" bench --targets "$(url 1),$(url 2),$(url 3)" "${base[@]}")

target=$(field "$(status "$leader")" last)
start 4 --join "$(url 1),$(url 2),$(url 3)"
answers() { [ -n "$(status 4)" ]; }
poll_until 30 answers || die "node 4 did not answer within 30 s"
say "adding node 4 (log at index $target)"
"$bin" bench --targets "$(url 1),$(url 2),$(url 3)" "${base[@]}" >"$work/during.json" &
benchpid=$!
pids+=($benchpid)
t0=$(now)
code=$(admin 1 POST "" '{"id":4,"url":"http://127.0.0.1:7584"}')
[ "$code" = 201 ] || die "POST /v1/admin/members answered $code: $(cat "$work/admin.out")"
added=$(since "$t0")
voter="" caught=""
promoted() {
	local last
	[ -z "$voter" ] && is_voter 1 4 && voter=$(since "$t0")
	last=$(field "$(status 4)" last)
	[ -n "$voter" ] && [ -n "$last" ] && [ "$last" -ge "$target" ] && caught=$(since "$t0")
}
poll_until "$WAIT" promoted || true
wait "$benchpid" || true
during=$(cat "$work/during.json")
[ -n "$caught" ] || say "node 4 did not become a voter and catch up within $WAIT s"

leader=$(field "$(status 1)" leader)
rest=()
for i in 1 2 3 4; do [ "$i" = "$leader" ] || rest+=("$(url "$i")"); done
say "removing the leader, node $leader, $REMOVE_AFTER s into a load through the others"
"$bin" bench --targets "$(
	IFS=,
	echo "${rest[*]}"
)" "${base[@]}" >"$work/removal.json" &
benchpid=$!
pids+=($benchpid)
sleep "$REMOVE_AFTER" # the moment in the run: timing of the fault, not synchronisation
via=$(basename "${rest[0]}" | sed 's/.*:758//')
t1=$(now)
code=$(admin "$via" DELETE "/$leader")
removed=$(since "$t1")
[ "$code" = 200 ] || say "DELETE /v1/admin/members/$leader answered $code: $(cat "$work/admin.out")"
wait "$benchpid" || true
removal=$(cat "$work/removal.json")
echo
echo "entries in the log:               $target"
echo "POST answered after:              $added s"
echo "node 4 a voter after:             ${voter:-?} s"
echo "node 4 caught up after:           ${caught:-?} s"
echo "appends/s, $CLIENTS clients via nodes 1-3: $(rate "$before") before, $(rate "$during") during the first $DURATION after the POST"
echo "p99 ms:                           $(p99 "$before") before, $(p99 "$during") during"
echo "leader removal: DELETE answered after $removed s; longest pause in acknowledged appends $(field "$removal" max_gap_ms) ms; max latency $(field "$removal" max_ms) ms; errors $(field "$removal" errors); $(rate "$removal") appends/s over the run"
grep -h "promot" "$work/node$leader.log" | tail -2 || true
