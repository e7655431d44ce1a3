# lib.sh: what the cluster scripts share (sourced, not run). Set prog to
# the script's name before sourcing. It builds paxoslog into a temporary
# directory, starts nodes on 127.0.0.1:758<id> with their --data under it,
# and stops every process and removes every file when the script exits,
# however it exits (KEEP_LOGS=<dir> copies the nodes' logs there first).

say() { echo "$prog: $*" >&2; }
die() {
	say "$*"
	exit 1
}
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || die "go is not installed"
command -v curl >/dev/null || die "curl is not installed"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -n "${KEEP_LOGS:-}" ]; then # KEEP_LOGS=<dir>: the nodes' logs are copied there
		mkdir -p "$KEEP_LOGS" && cp "$work"/node*.log "$KEEP_LOGS"/ 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

say "building"
(cd "$repo" && go build -o "$work/paxoslog" .)
bin=$work/paxoslog
export PAXOSLOG_CLUSTER_KEY=$prog
peers=1=http://127.0.0.1:7581,2=http://127.0.0.1:7582,3=http://127.0.0.1:7583
declare -A node
url() { echo "http://127.0.0.1:758$1"; }
start() { # start <id> [membership flags; default --peers of nodes 1-3]
	local id=$1
	shift
	[ $# -gt 0 ] || set -- --peers "$peers"
	"$bin" --id "$id" --listen "127.0.0.1:758$id" "$@" --data "$work/data/$id" \
		>>"$work/node$id.log" 2>&1 &
	node[$id]=$!
	pids+=($!)
}
kill_node() { # kill_node <id>: SIGKILL, and wait for it
	kill -9 "${node[$1]}"
	wait "${node[$1]}" 2>/dev/null || true
}
status() { curl -sf "$(url "$1")/v1/status" || true; }
field() { # field <json> <name>: a number or bare word from flat JSON
	sed -n "s/.*\"$2\":\"\{0,1\}\([a-z0-9.]*\).*/\1/p" <<<"$1" | head -1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
wait_leader() { # wait_leader <id>: until node id serves and knows a leader; prints it
	local st
	for _ in $(seq 600); do
		st=$(status "$1")
		if [ -n "$st" ] && [ "$(field "$st" leader)" != 0 ] && [ "$(field "$st" state)" = serving ]; then
			field "$st" leader
			return
		fi
		sleep 0.1
	done
	die "no leader after 60 s"
}
fill() { # fill <entries> <size>: through nodes 1-3, 64 clients
	"$bin" bench --targets "$(url 1),$(url 2),$(url 3)" \
		--clients 64 --count "$1" --size "$2" --warmup 0s --json >/dev/null
}
poll_until() { # poll_until <seconds> <fn>: run fn every 0.1 s until it succeeds (0) or time is up (1)
	for _ in $(seq $(($1 * 10))); do
		"$2" && return 0
		sleep 0.1
	done
	return 1
}
rate() { field "$1" ops_per_s; }
p99() { field "$1" p99_ms; }
