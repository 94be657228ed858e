#!/usr/bin/env bash
# netns-cluster.sh: a cluster of N "machines" on this one, joined by rate-limited links, for
# measuring what a slow network costs (docs/cluster.md, "Rate-shaped links"). Needs root.
#
#   scripts/netns-cluster.sh [-n N] [--rate RATE] [--name TAG] [--] COMMAND [ARGS...]
#
# runs `mpirun -np N ... COMMAND ARGS`, one rank per network namespace:
#   - namespaces dh-TAG-r0 .. dh-TAG-r{N-1} (the ranks' hosts, 10.213.0.1 .. 10.213.0.N/24 on
#     eth0) and dh-TAG-hub (a bridge: the switch), each rank's eth0 a veth pair with vhI in
#     the hub. Every link, address and route lives inside these namespaces: the hub's bridge
#     has no port outside them, so no packet can leave the sandbox, and runs with other tags
#     (default: this script's pid) do not see each other;
#   - every link limited to RATE in each direction with tc tbf (eth0's egress is the rank's
#     upload, vhI's its download), as if each PC had a RATE network card on one switch;
#     RATE 1gbit, 300mbit, 100mbit or any tc rate; "none" leaves the links unshaped;
#   - mpirun itself runs in dh-TAG-r0 (so rank 0 is its local host), the hostfile lists the
#     namespaces' addresses, and plm_rsh_agent is a generated script that "logs in" to host
#     10.213.0.I by `ip netns exec dh-TAG-r{I-1} sh -c COMMAND` (what ssh would run), so each
#     orted, and the ranks it starts, live in their own namespace. Tree spawn is off: mpirun
#     starts every orted itself; --leave-session-attached keeps each orted the child of its
#     agent (not daemonized), so mpirun notices one that dies at start-up instead of waiting
#     for it forever, and its errors reach stderr; each host has its own TMPDIR (see below);
#   - --mca btl tcp,self and btl_tcp_if_include / oob_tcp_if_include 10.213.0.0/24: all MPI
#     traffic, the runtime's own included, goes through the shaped veths (no shared memory).
# Everything is torn down on exit, on Ctrl-C or SIGTERM, and when mpirun fails: the processes
# left in the namespaces are killed, then the namespaces deleted, which
# deletes their veths and bridge. The exit status is mpirun's (130/143 after a signal).
# DH_NETNS_MPIRUN_ARGS: extra mpirun options, split on whitespace.
set -uo pipefail

usage() {
  sed -n '2,/^# DH_NETNS/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

n=3 rate=1gbit tag=$$
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=${2:?}; shift 2 ;;
    --rate) rate=${2:?}; shift 2 ;;
    --name) tag=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "netns-cluster: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage
case "$n" in ''|*[!0-9]*) echo "netns-cluster: -n wants a count of ranks, not '$n'" >&2; exit 2 ;; esac
if [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then echo "netns-cluster: -n $n: 1 to 200 ranks" >&2; exit 2; fi
case "$tag" in *[!A-Za-z0-9_]*) echo "netns-cluster: --name wants letters, digits or _, not '$tag'" >&2; exit 2 ;; esac
if [ "$(id -u)" -ne 0 ]; then echo "netns-cluster: needs root (network namespaces)" >&2; exit 1; fi

subnet=10.213.0.0/24
pfx=dh-$tag
hub=$pfx-hub
tmp=$(mktemp -d -t "netns-cluster-$tag.XXXXXX") # named in orted's command line: findable
created=()   # namespaces made, in order
mpirun_pid=

killed=()    # pids of the processes found in them
# kill what runs in namespace $1 (TERM, then KILL after 2 s), then delete it
ns_down() {
  local ns=$1 pids i
  for i in $(seq 1 25); do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -z "$pids" ] && break
    killed+=($pids)
    if [ "$i" -lt 20 ]; then kill -TERM $pids 2>/dev/null; else kill -KILL $pids 2>/dev/null; fi
    sleep 0.1
  done
  ip netns del "$ns" 2>/dev/null || echo "netns-cluster: could not delete namespace $ns" >&2
}

teardown() {
  trap - EXIT INT TERM HUP
  if [ -n "$mpirun_pid" ] && kill -0 "$mpirun_pid" 2>/dev/null; then
    kill -TERM "$mpirun_pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$mpirun_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  local ns
  for ns in "${created[@]}"; do ns_down "$ns"; done
  # until the killed are reaped, so that nothing of ours is listed once we return (5 s at most)
  for _ in $(seq 1 50); do
    local left=0 p
    for p in "${killed[@]}"; do [ -e "/proc/$p" ] && left=1 && break; done
    [ "$left" -eq 0 ] && break
    sleep 0.1
  done
  rm -rf "$tmp"
}
trap teardown EXIT
trap 'echo "netns-cluster: interrupted, tearing down" >&2; teardown; exit 130' INT
trap 'teardown; exit 143' TERM HUP

# ip ... or fail with what it said
run() {
  local out
  if ! out=$("$@" 2>&1); then
    echo "netns-cluster: '$*' failed: $out" >&2
    exit 1
  fi
}

# the token bucket: rate RATE, burst 2 ms of it but at least 64 KiB (a veth passes GSO frames
# of up to 64 KiB, and tbf has to hold a whole frame), queue 50 ms
shape() {
  local ns=$1 dev=$2 bps burst
  [ "$rate" = none ] && return 0
  bps=$(rate_bps "$rate") || exit 2
  burst=$((bps / 8 / 500))
  [ "$burst" -lt 65536 ] && burst=65536
  run tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 50ms
}

# a tc rate (100mbit, 1gbit, 5mbps...) in bits per second
rate_bps() {
  local r=${1,,} num mult
  num=${r%%[a-z]*}
  case "${r#"$num"}" in
    bit|'') mult=1 ;; kbit) mult=1000 ;; mbit) mult=1000000 ;; gbit) mult=1000000000 ;;
    bps) mult=8 ;; kbps) mult=8000 ;; mbps) mult=8000000 ;; gbps) mult=8000000000 ;;
    *) echo "netns-cluster: --rate '$1': a tc rate such as 100mbit or 1gbit, or none" >&2; return 1 ;;
  esac
  case "$num" in ''|*[!0-9]*) echo "netns-cluster: --rate '$1': a whole number before the unit" >&2; return 1 ;; esac
  echo $((num * mult))
}
[ "$rate" = none ] || rate_bps "$rate" >/dev/null || exit 2

# --- the namespaces, the switch and the links ---
for ns in "$hub" $(seq -f "$pfx-r%g" 0 $((n - 1))); do
  if [ -e "/var/run/netns/$ns" ]; then echo "netns-cluster: namespace $ns exists already (another run with --name $tag?)" >&2; exit 1; fi
done
run ip netns add "$hub"
created+=("$hub")
run ip -n "$hub" link add br0 type bridge
run ip -n "$hub" link set br0 up
for i in $(seq 0 $((n - 1))); do
  ns=$pfx-r$i
  run ip netns add "$ns"
  created+=("$ns")
  run ip -n "$hub" link add "vh$i" type veth peer name eth0 netns "$ns"
  run ip -n "$hub" link set "vh$i" master br0 up
  run ip -n "$ns" addr add "10.213.0.$((i + 1))/24" dev eth0
  run ip -n "$ns" link set eth0 up
  run ip -n "$ns" link set lo up
  shape "$ns" eth0
  shape "$hub" "vh$i"
  echo "10.213.0.$((i + 1)) slots=1" >>"$tmp/hostfile"
done
echo "netns-cluster: $n namespaces $pfx-r0..r$((n - 1)) on $subnet, links ${rate} each way" >&2

# --- the login agent: host 10.213.0.I is namespace $pfx-r{I-1} ---
cat >"$tmp/agent" <<EOF
#!/bin/sh
# plm_rsh_agent of netns-cluster.sh: [options] HOST COMMAND..., run as ssh would run it
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done
host=\$1; shift
case "\$host" in 10.213.0.*) ;; *) echo "netns-cluster agent: unknown host \$host" >&2; exit 255 ;; esac
r=\$((\${host##*.} - 1))
export TMPDIR="$tmp/r\$r" # the host's own /tmp for Open MPI's session directory
mkdir -p "\$TMPDIR"
exec ip netns exec "$pfx-r\$r" /bin/sh -c "\$*"
EOF
chmod +x "$tmp/agent"

# --- mpirun ---
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Each host gets its own TMPDIR, as separate machines have their own /tmp: Open MPI names its
# session directory after the host name, which the namespaces share, and orteds starting at
# once then race to create the same one (one fails: "mkdir ... File exists"). Inside $tmp,
# what killed daemons leave there goes with it.
export TMPDIR=$tmp/r0
mkdir -p "$TMPDIR"
# shellcheck disable=SC2086 # DH_NETNS_MPIRUN_ARGS is split on whitespace, as documented
ip netns exec "$pfx-r0" mpirun -np "$n" --hostfile "$tmp/hostfile" --bind-to none \
  --mca plm_rsh_agent "$tmp/agent" --mca plm_rsh_no_tree_spawn 1 --leave-session-attached \
  --mca btl tcp,self --mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet" \
  ${DH_NETNS_MPIRUN_ARGS:-} "$@" &
mpirun_pid=$!
wait "$mpirun_pid"
rc=$?
mpirun_pid=
[ "$rc" -ne 0 ] && echo "netns-cluster: mpirun exited with status $rc; tearing down" >&2
exit "$rc"
