#!/usr/bin/env bash
# benches/media.sh: the media relay's forwarding cost and capacity, serlua
# against rtpengine, each as its own process driven the same way.
#
#   benches/media.sh [--streams N] [--duration S] [--threads T] [--repeat K]
#                    [--sweep "250 500 1000 2000"] [--tick-ms MS] [--no-build]
#
# Both relays run on 127.0.0.1 with userspace forwarding only:
#   serlua     `serlua relay --ng udp:127.0.0.1:P --ports … --threads T`
#   rtpengine  /usr/bin/rtpengine --table=-1 --num-threads=T (apt-get
#              install rtpengine-daemon)
# serlua-rtpload sets N calls up on each over the ng protocol (offer +
# answer, SDP naming its two ends), then sends 20 ms audio (172-byte RTP,
# 50 packets/s each way per call) for S seconds and counts what comes back.
# The relay's CPU is utime+stime of its process (all threads) from
# /proc/PID/stat over the load.
#
# Part 1 (cost): K rounds, alternating serlua and rtpengine, at N calls;
# prints each run and the medians of CPU-seconds per million packets
# relayed (= µs of relay CPU per packet), and the ratio.
# Part 2 (capacity): for each call count of --sweep, one run per relay;
# the highest packet rate with 0 packets lost is the sustained rate.
set -euo pipefail
cd "$(dirname "$0")/.."

STREAMS=500
DURATION=10
THREADS=1
REPEAT=3
TICK=2
SWEEP="250 500 1000 2000 3000"
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --sweep) SWEEP=$2; shift 2 ;;
    --tick-ms) TICK=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "media.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v rtpengine >/dev/null || { echo "media.sh: rtpengine is missing (apt-get install rtpengine-daemon)" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-target}
[ "$BUILD" = 1 ] && cargo build --release --bin serlua --bin serlua-rtpload >&2
SERLUA=$TARGET/release/serlua
LOAD=$TARGET/release/serlua-rtpload
TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
json_field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# start_relay SYSTEM NG_PORT CALLS: starts it in the background (PID).
start_relay() {
  # Below the kernel's ephemeral range (32768-60999 by default), where
  # free_port finds the load generator's ports: a relay port range inside it
  # could hold a port the load then fails to bind.
  local sys=$1 ng=$2 calls=$3 lo=16000 hi
  hi=$((lo + calls * 4 + 400))
  case "$sys" in
    serlua)
      "$SERLUA" relay --ng "udp:127.0.0.1:$ng" --ports "$lo-$hi" --advertise 127.0.0.1 --threads "$THREADS" \
        >"$WORK/relay.log" 2>&1 &
      ;;
    rtpengine)
      rtpengine --config-file=none --foreground --log-stderr --log-level=3 --table=-1 --interface=127.0.0.1 \
        --listen-ng="127.0.0.1:$ng" --port-min=$lo --port-max=$hi --num-threads="$THREADS" --delete-delay=0 \
        >"$WORK/relay.log" 2>&1 &
      ;;
  esac
  PID=$!
  sleep 0.5
}

# stop_relay: ends the relay of a run that failed. run() is called inside
# $(...), a subshell whose PID the EXIT trap of the script never sees.
stop_relay() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=""; }

# run SYSTEM CALLS: one load run; prints "cpu_per_million lost sent pps" on
# stdout and a readable line on stderr.
run() {
  local sys=$1 calls=$2 ng a b c0 c1
  ng=$(free_port); a=$(free_port); b=$(free_port)
  start_relay "$sys" "$ng" "$calls"
  # The calls are set up first, outside the measured span.
  "$LOAD" --ng "udp:127.0.0.1:$ng" --calls "$calls" --bind-a "127.0.0.1:$a" --bind-b "127.0.0.1:$b" --setup-only \
    >"$WORK/pairs" 2>"$WORK/setup.err" || { cat "$WORK/setup.err" >&2; stop_relay; exit 1; }
  c0=$(cpu_ticks "$PID")
  "$LOAD" --pairs "$WORK/pairs" --bind-a "127.0.0.1:$a" --bind-b "127.0.0.1:$b" \
    --duration "$DURATION" --tick-ms "$TICK" >"$WORK/load.json" 2>"$WORK/load.err" || { cat "$WORK/load.err" >&2; stop_relay; exit 1; }
  c1=$(cpu_ticks "$PID")
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  local recv lost sent per pps
  recv=$(json_field "$WORK/load.json" 'r["received"]')
  lost=$(json_field "$WORK/load.json" 'r["lost"]')
  sent=$(json_field "$WORK/load.json" 'r["sent"]')
  per=$(awk -v c=$((c1 - c0)) -v t="$TCK" -v p="$recv" 'BEGIN { printf "%.3f", c / t * 1e6 / (p > 0 ? p : 1) }')
  pps=$(awk -v s="$sent" -v d="$DURATION" 'BEGIN { printf "%d", s / d }')
  printf '%-9s %5d calls %7d pkt/s: relay %6.2f CPU-s, %6.3f CPU-s per million packets, lost %d of %d, latency p50 %s us p99 %s us\n' \
    "$sys" "$calls" "$pps" "$(awk -v c=$((c1 - c0)) -v t="$TCK" 'BEGIN { printf "%.2f", c / t }')" "$per" "$lost" "$sent" \
    "$(json_field "$WORK/load.json" 'r["latency_us"]["p50"]')" "$(json_field "$WORK/load.json" 'r["latency_us"]["p99"]')" >&2
  echo "$per $lost $sent $pps"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "== cost: $STREAMS calls ($((STREAMS * 100)) packets/s), $THREADS thread(s), $DURATION s, $REPEAT rounds" >&2
S=(); R=()
for _ in $(seq 1 "$REPEAT"); do
  S+=("$(run serlua "$STREAMS" | cut -d' ' -f1)")
  R+=("$(run rtpengine "$STREAMS" | cut -d' ' -f1)")
done
ms=$(printf '%s\n' "${S[@]}" | median)
mr=$(printf '%s\n' "${R[@]}" | median)

echo "== capacity: calls $SWEEP" >&2
best_s=0; best_r=0
for n in $SWEEP; do
  read -r _ lost _ pps <<<"$(run serlua "$n")"
  [ "$lost" = 0 ] && [ "$pps" -gt "$best_s" ] && best_s=$pps
  read -r _ lost _ pps <<<"$(run rtpengine "$n")"
  [ "$lost" = 0 ] && [ "$pps" -gt "$best_r" ] && best_r=$pps
done

printf '\n%-40s %12s %12s %8s\n' "" serlua rtpengine ratio
printf '%-40s %12s %12s %8s\n' "CPU-s per million packets (median)" "$ms" "$mr" "$(awk -v s="$ms" -v r="$mr" 'BEGIN { printf "%.2f", s / r }')"
printf '%-40s %12s %12s %8s\n' "highest packet rate with 0 lost (pkt/s)" "$best_s" "$best_r" "$(awk -v s="$best_s" -v r="$best_r" 'BEGIN { if (r > 0) printf "%.2f", s / r; else print "-" }')"
