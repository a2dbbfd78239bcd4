#!/usr/bin/env bash
# benches/flood.sh: malformed SIP at line rate against serlua for 30 s.
#
#   benches/flood.sh [--duration 30] [--children 2] [--kinds LIST] [--no-build]
#
# serlua (tests/scripts/stress.lua on UDP and TCP 127.0.0.1) takes
# serlua-flood's mix for --duration seconds: random bytes, INVITEs cut at a
# random point, INVITEs with a few random bytes changed, a 60 KB header,
# 1,400 Via lines and 4,000 comma-separated Vias per datagram, and the full
# 10,000-Via message over TCP (see src/bin/serlua-flood.rs). VmRSS is
# sampled every second. Prints: what was sent, what serlua counted (parse
# errors, requests), RSS before / peak / after and its growth over the
# second half of the flood, and whether serlua still answers afterwards.
# Exits 1 if serlua died or stopped answering.
#
# Everything is on 127.0.0.1; logs go to bench-out/flood-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=30
CHILDREN=2
KINDS="random,truncated,huge,vias,mutated"
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --children) CHILDREN=$2; shift 2 ;;
    --kinds) KINDS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "flood.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$BUILD" = 1 ] && cargo build --release --quiet --bin serlua --bin serlua-flood
SERLUA="$ROOT/target/release/serlua"
OUT="$ROOT/bench-out/flood-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
stat_of() { "$SERLUA" ctl --ctl "$OUT/serlua.ctl" --json stats 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)" 2>/dev/null || echo "?"; }
# probe PORT: an OPTIONS with Max-Forwards 0 must get stress.lua's 483.
probe() {
  python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); me = s.getsockname()[1]
msg = ("OPTIONS sip:probe@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-p%d\r\n"
       "From: <sip:p@127.0.0.1>;tag=p\r\nTo: <sip:p@127.0.0.1>\r\nCall-ID: p%d@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
       "Max-Forwards: 0\r\nContent-Length: 0\r\n\r\n") % (port, me, time.time_ns(), time.time_ns())
s.settimeout(1.0)
for _ in range(5):
    s.sendto(msg.encode(), ("127.0.0.1", port))
    try:
        data, _ = s.recvfrom(65536)
        sys.exit(0 if data.startswith(b"SIP/2.0 483") else 1)
    except OSError:
        pass
sys.exit(1)
PY
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.3; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

PORT=$(free_port)
# Requests that survive the flood's mutations are relayed to the discard
# port: nobody answers there, their transactions time out.
SERLUA_LISTEN="udp:127.0.0.1:$PORT" SERLUA_LISTEN_TCP="tcp:127.0.0.1:$PORT" SERLUA_NEXT_HOP="127.0.0.1:9" \
  SERLUA_CHILDREN="$CHILDREN" SERLUA_FR_TIMER=5 RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 \
  "$SERLUA" run tests/scripts/stress.lua --ctl "$OUT/serlua.ctl" --db "sqlite://$OUT/serlua.db" \
  >"$OUT/serlua.stdout.log" 2>"$OUT/serlua.stderr.log" &
PID=$!
PIDS+=($PID)
for _ in $(seq 1 50); do probe "$PORT" && break; sleep 0.2; done
probe "$PORT" || { echo "flood.sh: serlua did not start; see $OUT" >&2; exit 1; }

# Two warm-up seconds of the same flood: the allocator's arenas and the
# socket buffers reach their working size before "before" is read.
"$ROOT/target/release/serlua-flood" --target "127.0.0.1:$PORT" --duration 2 --kinds "$KINDS" --tcp >"$OUT/warmup.log"
sleep 1
BEFORE=$(rss_kb "$PID")
P0=$(stat_of 's["errors"]["parse"]')
"$ROOT/target/release/serlua-flood" --target "127.0.0.1:$PORT" --duration "$DURATION" --kinds "$KINDS" --tcp >"$OUT/flood.log" &
FLOOD=$!
PIDS+=($FLOOD)
: >"$OUT/rss.tsv"
t=0; PEAK=$BEFORE
while kill -0 "$FLOOD" 2>/dev/null; do
  r=$(rss_kb "$PID"); [ "${r:-0}" -gt "$PEAK" ] && PEAK=$r
  printf '%d\t%d\n' "$t" "${r:-0}" >>"$OUT/rss.tsv"
  sleep 1; t=$((t + 1))
done
wait "$FLOOD" || true
ALIVE=yes; kill -0 "$PID" 2>/dev/null || ALIVE=no
ANSWERS=no; [ "$ALIVE" = yes ] && probe "$PORT" && ANSWERS=yes
AFTER=$(rss_kb "$PID")
P1=$(stat_of 's["errors"]["parse"]')
REQ=$(stat_of 's["received"]["requests"]')
TX=$(stat_of 's["transactions"]')
HALF=$(awk -F'\t' -v h="$((t / 2))" '$1 == h { a = $2 } { z = $2 } END { print z - a }' "$OUT/rss.tsv")

echo
cat "$OUT/flood.log"
printf '%-40s %s\n' "serlua alive / still answering" "$ALIVE / $ANSWERS"
printf '%-40s %s\n' "parse errors counted during the flood" "$((P1 - P0))"
printf '%-40s %s (transactions open now: %s)\n' "requests that parsed (since start)" "$REQ" "$TX"
printf '%-40s %s / %s / %s MiB\n' "RSS before / peak / after" "$((BEFORE / 1024))" "$((PEAK / 1024))" "$((AFTER / 1024))"
printf '%-40s %s KiB\n' "RSS growth over the second half" "$HALF"
printf 'logs and per-second RSS: %s\n' "$OUT"
[ "$ALIVE" = yes ] && [ "$ANSWERS" = yes ]
