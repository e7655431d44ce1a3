#!/usr/bin/env bash
# race.sh: paxoslog against etcd, side by side, on this machine.
#
# Starts a 3-member etcd cluster (client ports 23791-23793, peer ports
# 23801-23803) and a 3-node paxoslog cluster (127.0.0.1:7481-7483), each on
# fresh data directories under one temporary directory and with its default
# fsync-on-commit durability, then runs `paxoslog bench --workload append`
# against each in turn, interleaved (etcd, paxoslog, etcd, paxoslog, ...),
# for every client count, and prints one table of the means over the rounds.
# Everything listens on 127.0.0.1 only; everything it started is stopped and
# every temporary file removed when it exits, however it exits.
#
# Installs etcd 3.4 from Debian (package etcd-server) when `etcd` is missing.
#
# Knobs (environment):
#   CLIENTS="1 16 64"   client counts, one table row each
#   ROUNDS=2            runs per system per client count
#   DURATION=10s        measured time of each run (after a 1s warmup)
#   SIZE=100            bytes per value
#   BATCH=1             entries per append request: a batch append on paxoslog
#                       (application/x-ndjson), one txn of min(BATCH, 128) puts on
#                       etcd (its default --max-txn-ops); the table then compares
#                       entries per second
#   PAXOSLOG_TARGETS=all   all: spread over the three nodes; leader: only the leader
#   ETCD_TARGETS=leader    leader: only etcd's leader; all: spread over the three members
#   PROCS=                 GOMAXPROCS for every server of both systems (empty: Go's
#                          default, one per core); PROCS=1 gives each of the six
#                          servers one scheduler thread, see README "Performance"
set -euo pipefail

CLIENTS=${CLIENTS:-"1 16 64"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
SIZE=${SIZE:-100}
BATCH=${BATCH:-1}
PAXOSLOG_TARGETS=${PAXOSLOG_TARGETS:-all}
ETCD_TARGETS=${ETCD_TARGETS:-leader}
PROCS=${PROCS:-}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "race: $*" >&2; }
die() {
	say "$*"
	exit 1
}

case $PAXOSLOG_TARGETS in all | leader) ;; *) die "PAXOSLOG_TARGETS must be all or leader, got '$PAXOSLOG_TARGETS'" ;; esac
case $ETCD_TARGETS in all | leader) ;; *) die "ETCD_TARGETS must be all or leader, got '$ETCD_TARGETS'" ;; esac
case $BATCH in [1-9] | [1-9][0-9] | [1-9][0-9][0-9] | [1-9][0-9][0-9][0-9] | 10000) ;; *) die "BATCH must be a number from 1 to 10000, got '$BATCH'" ;; esac
case $PROCS in '' | [1-9] | [1-9][0-9]) ;; *) die "PROCS must be empty or a number from 1 to 99, got '$PROCS'" ;; esac
# servers: the environment every etcd and paxoslog server starts with.
servers=()
[ -n "$PROCS" ] && servers=(GOMAXPROCS="$PROCS")

# --- tools ------------------------------------------------------------------

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || die "go is not installed"

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
	command -v apt-get >/dev/null || die "need ${missing[*]}, and there is no apt-get to install them with"
	say "installing ${missing[*]} from Debian"
	as_root apt-get update -qq
	for pkg in "${missing[@]}"; do
		candidate=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: *//p')
		if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
			die "Debian package $pkg is not available here (apt-cache policy $pkg shows no candidate)"
		fi
	done
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
etcd_version=$(etcd --version | sed -n 's/^etcd Version: *//p')
case $etcd_version in
3.[4-9].* | [4-9].*) ;;
*) die "need etcd 3.4 or later (for the /v3/ JSON gateway), found '$etcd_version'" ;;
esac

# --- scratch space and cleanup -----------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/paxoslog-race.XXXXXX")
pids=()
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 23791 23792 23793 23801 23802 23803 7481 7482 7483; do
	port_free "$port" || die "127.0.0.1:$port is already in use: stop whatever listens there first"
done

say "building paxoslog"
(cd "$repo" && go build -o "$tmp/bin/paxoslog" .)
paxoslog=$tmp/bin/paxoslog

# --- clusters ----------------------------------------------------------------

etcd_cluster=e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803
for i in 1 2 3; do
	mkdir -p -m 700 "$tmp/etcd/$i"
	env "${servers[@]}" etcd --name "e$i" --data-dir "$tmp/etcd/$i" \
		--listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
		--listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
		--initial-cluster "$etcd_cluster" --initial-cluster-state new --initial-cluster-token "paxoslog-race-$$" \
		--quota-backend-bytes $((8 << 30)) --logger zap --log-outputs stderr --log-level warn \
		>"$tmp/etcd-$i.log" 2>&1 &
	pids+=($!)
done

peers=1=http://127.0.0.1:7481,2=http://127.0.0.1:7482,3=http://127.0.0.1:7483
for i in 1 2 3; do
	env "${servers[@]}" "$paxoslog" --id "$i" --listen "127.0.0.1:748$i" --peers "$peers" --data "$tmp/paxoslog/$i" --log-level warn \
		>"$tmp/paxoslog-$i.log" 2>&1 &
	pids+=($!)
done

# wait_for WHAT CMD...: retry CMD for up to 30 s.
wait_for() {
	local what=$1
	shift
	for _ in $(seq 300); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		for pid in "${pids[@]}"; do
			kill -0 "$pid" 2>/dev/null || {
				tail -n 20 "$tmp"/*.log >&2
				die "a server exited while waiting for $what"
			}
		done
		sleep 0.1
	done
	tail -n 20 "$tmp"/*.log >&2
	die "timed out waiting for $what"
}

etcd_ready() {
	for i in 1 2 3; do
		curl -fsS --max-time 2 "http://127.0.0.1:2379$i/health" | grep -q '"health":"true"' || return 1
	done
	curl -fsS --max-time 5 -X POST -d '{"key":"cmFjZS1yZWFkeQ==","value":"MQ=="}' http://127.0.0.1:23791/v3/kv/put
}
paxoslog_ready() {
	for i in 1 2 3; do
		curl -fsS --max-time 2 "http://127.0.0.1:748$i/v1/status" | grep -q '"leader":[1-9]' || return 1
	done
	curl -fsS --max-time 5 -X POST -d '"ready"' http://127.0.0.1:7481/v1/log
}
wait_for "etcd to elect a leader and take a write" etcd_ready
wait_for "paxoslog to elect a leader and take a write" paxoslog_ready

etcd_leader_url() {
	for i in 1 2 3; do
		local st member leader
		st=$(curl -fsS --max-time 5 -X POST -d '{}' "http://127.0.0.1:2379$i/v3/maintenance/status")
		member=$(sed -nE 's/.*"member_id":"?([0-9]+)"?.*/\1/p' <<<"$st")
		leader=$(sed -nE 's/.*"leader":"?([0-9]+)"?.*/\1/p' <<<"$st")
		if [ -n "$member" ] && [ "$member" = "$leader" ]; then
			echo "http://127.0.0.1:2379$i"
			return 0
		fi
	done
	return 1
}
paxoslog_leader_url() {
	local leader
	leader=$(curl -fsS --max-time 5 http://127.0.0.1:7481/v1/status | sed -nE 's/.*"leader":([0-9]+).*/\1/p')
	[ -n "$leader" ] && [ "$leader" -ge 1 ] && [ "$leader" -le 3 ] && echo "http://127.0.0.1:748$leader"
}

# targets SYSTEM: the --targets value for SYSTEM, looked up before each run
# (a leader may change).
targets() {
	local which=$PAXOSLOG_TARGETS
	[ "$1" = etcd ] && which=$ETCD_TARGETS
	case $1/$which in
	etcd/all) echo http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793 ;;
	etcd/leader) etcd_leader_url || die "no etcd member says it is the leader" ;;
	paxoslog/all) echo http://127.0.0.1:7481,http://127.0.0.1:7482,http://127.0.0.1:7483 ;;
	paxoslog/leader) paxoslog_leader_url || die "paxoslog has no leader" ;;
	esac
}

# field JSON NAME: a number from a bench --json result.
field() { sed -nE "s/.*\"$2\":(-?[0-9.eE+]+).*/\1/p" <<<"$1"; }

say "etcd $etcd_version ($ETCD_TARGETS) vs paxoslog ($PAXOSLOG_TARGETS): append, ${SIZE}-byte values, $BATCH a request, $DURATION per run, $ROUNDS rounds, clients: $CLIENTS${PROCS:+, GOMAXPROCS=$PROCS for every server}"
results=$tmp/results
: >"$results"
run=0
for c in $CLIENTS; do
	for round in $(seq "$ROUNDS"); do
		for system in etcd paxoslog; do
			run=$((run + 1))
			t=$(targets "$system")
			if ! out=$("$paxoslog" bench --system "$system" --targets "$t" --clients "$c" \
				--duration "$DURATION" --warmup 1s --size "$SIZE" --batch "$BATCH" --json 2>"$tmp/bench-$run.log"); then
				cat "$tmp/bench-$run.log" >&2
				die "bench of $system with $c clients failed"
			fi
			ops=$(field "$out" entries_per_s)
			p50=$(field "$out" p50_ms)
			p99=$(field "$out" p99_ms)
			errs=$(field "$out" errors)
			[ -n "$ops" ] && [ -n "$p50" ] && [ -n "$p99" ] && [ -n "$errs" ] || die "could not read the bench result: $out"
			say "$(printf '%-8s clients %-3s round %s: %9.1f entries/s  p50 %7.2f ms  p99 %7.2f ms  errors %s' \
				"$system" "$c" "$round" "$ops" "$p50" "$p99" "$errs")"
			echo "$c $system $ops $p50 $p99 $errs" >>"$results"
		done
	done
done

# One row per client count: means over the rounds (entries per second;
# with BATCH=1 an append request is one entry); ratios are paxoslog/etcd.
awk -v clients="$CLIENTS" '
{ k = $1 SUBSEP $2; n[k]++; ops[k] += $3; p50[k] += $4; p99[k] += $5; errs[$2] += $6 }
END {
	printf "%-8s %14s %9s %9s %18s %9s %9s %16s %10s\n", "clients", "etcd entries/s", "p50 ms", "p99 ms", "paxoslog entries/s", "p50 ms", "p99 ms", "ratio entries/s", "ratio p99"
	split(clients, cs, " ")
	for (i = 1; i in cs; i++) {
		c = cs[i]; e = c SUBSEP "etcd"; p = c SUBSEP "paxoslog"
		eo = ops[e] / n[e]; e50 = p50[e] / n[e]; e99 = p99[e] / n[e]
		po = ops[p] / n[p]; p50m = p50[p] / n[p]; p99m = p99[p] / n[p]
		printf "%-8s %14.1f %9.2f %9.2f %18.1f %9.2f %9.2f %16.2f %10.2f\n", c, eo, e50, e99, po, p50m, p99m, (eo > 0 ? po / eo : 0), (e99 > 0 ? p99m / e99 : 0)
	}
	if (errs["etcd"] + errs["paxoslog"] > 0)
		printf "errors: etcd %d, paxoslog %d (see the per-run lines above)\n", errs["etcd"], errs["paxoslog"]
}' "$results"
