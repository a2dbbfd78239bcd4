#!/usr/bin/env bash
# benches/overload.sh: serlua offered twice the call rate it can sustain.
#
#   benches/overload.sh [--duration 60] [--cost-ms 5] [--children 1] [--capacity R] [--no-build]
#
# A sipp UAS behind serlua (tests/scripts/stress.lua: the relay route with
# SERLUA_COST_MS of CPU burnt on every new INVITE, so that the proxy
# saturates at a rate sipp can offer twice over on this 2-core machine)
# and a sipp UAC in front of it:
#   1. capacity: 5-second runs of tests/sipp/uac.xml at rising rates until
#      one has a failed call; the last clean rate is the sustainable rate R
#      (or --capacity R);
#   2. surge: tests/sipp/uac_overload.xml at 2R for --duration seconds (a
#      503 must carry Retry-After, else sipp fails the call); serlua's VmRSS
#      and 503 counter (serlua ctl stats) are sampled every second;
#   3. recovery: tests/sipp/uac.xml at the normal rate R/2 for 20 s right
#      after the surge (R itself is the edge: on a shared machine it drifts).
# Prints: R, the surge's calls answered / refused with 503 / failed, 503s
# sent, RSS idle / peak / at the end (the bound the issue asks for), the
# seconds after the surge until the 503 counter stopped rising, and the
# recovery run's failed calls and 503s.
#
# Everything listens on 127.0.0.1 only; logs go to bench-out/overload-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=60
COST_MS=5
CHILDREN=1
CAPACITY=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --cost-ms) COST_MS=$2; shift 2 ;;
    --children) CHILDREN=$2; shift 2 ;;
    --capacity) CAPACITY=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "overload.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$COST_MS" -gt 0 ] || { echo "overload.sh: --cost-ms must be at least 1" >&2; exit 2; }
command -v sipp >/dev/null || { echo "overload.sh: sipp is missing (apt-get install sip-tester)" >&2; exit 1; }
[ "$BUILD" = 1 ] && cargo build --release --quiet --bin serlua
SERLUA="$ROOT/target/release/serlua"
OUT="$ROOT/bench-out/overload-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sipp_counts() {
  awk -F'|' '/Successful call/ { gsub(/ /, "", $3); ok = $3 } /Failed call/ { gsub(/ /, "", $3); ko = $3 }
    END { printf "%s %s\n", (ok == "" ? "?" : ok), (ko == "" ? "?" : ko) }' "$1" 2>/dev/null || echo "? ?"
}
# How many 503s the UAC received (its screen's message table).
sipp_503() { awk '/503 <-/ { print $3; exit }' "$1" 2>/dev/null || true; }
overload_503() { "$SERLUA" ctl --ctl "$OUT/serlua.ctl" --json stats 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"]["overload_503"])' 2>/dev/null || echo 0; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.3; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

UAS_PORT=$(free_port)
PROXY_PORT=$(free_port)
sipp -sf "$ROOT/tests/sipp/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -bind_local -t u1 -nostdin -buff_size 4194304 \
  -trace_err -error_file "$OUT/uas.errors.log" >"$OUT/uas.stdout.log" 2>&1 &
PIDS+=($!)
SERLUA_LISTEN="udp:127.0.0.1:$PROXY_PORT" SERLUA_NEXT_HOP="127.0.0.1:$UAS_PORT" SERLUA_CHILDREN="$CHILDREN" \
  SERLUA_COST_MS="$COST_MS" RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 \
  "$SERLUA" run tests/scripts/stress.lua --ctl "$OUT/serlua.ctl" --db "sqlite://$OUT/serlua.db" \
  >"$OUT/serlua.stdout.log" 2>"$OUT/serlua.stderr.log" &
PROXY_PID=$!
PIDS+=($PROXY_PID)
for _ in $(seq 1 100); do [ -S "$OUT/serlua.ctl" ] && break; sleep 0.1; done
sleep 0.5

# uac SCENARIO RATE SECONDS LABEL: one sipp UAC run, in the background (sets UAC_PID).
uac() {
  sipp -sf "$ROOT/tests/sipp/$1" "127.0.0.1:$PROXY_PORT" -i 127.0.0.1 -p "$(free_port)" -bind_local -t u1 -nostdin \
    -m "$(($2 * $3))" -r "$2" -d 0 -l "$(($2 * 4 + 100))" -timeout "$(($3 + 60))s" -buff_size 4194304 \
    -trace_err -error_file "$OUT/$4.errors.log" -trace_screen -screen_file "$OUT/$4.screen.log" >"$OUT/$4.stdout.log" 2>&1 &
  UAC_PID=$!
}

# 1. capacity
if [ -z "$CAPACITY" ]; then
  # The route's cost alone allows 1000/COST_MS new calls/s per worker;
  # start at half that and climb by a tenth.
  theo=$((1000 * CHILDREN / COST_MS))
  rate=$((theo / 2)); [ "$rate" -lt 20 ] && rate=20
  step=$((theo / 10)); [ "$step" -lt 10 ] && step=10
  CAPACITY=0
  while :; do
    before=$(overload_503)
    uac uac.xml "$rate" 5 "capacity-$rate"; wait "$UAC_PID" || true
    read -r ok ko < <(sipp_counts "$OUT/capacity-$rate.screen.log")
    after=$(overload_503)
    printf 'capacity probe %4d calls/s: %s ok, %s failed, %d 503s\n' "$rate" "$ok" "$ko" "$((after - before))"
    if [ "$ko" != 0 ] || [ "$after" != "$before" ]; then break; fi
    CAPACITY=$rate
    rate=$((rate + step))
    sleep 2
  done
  [ "$CAPACITY" -gt 0 ] || { echo "overload.sh: not even $rate calls/s went through; see $OUT" >&2; exit 1; }
  sleep 3
fi
SURGE=$((CAPACITY * 2))

# 2. surge
IDLE=$(rss_kb "$PROXY_PID")
R0=$(overload_503)
uac uac_overload.xml "$SURGE" "$DURATION" surge
PEAK=$IDLE
: >"$OUT/samples.tsv"
T0=$SECONDS
# One sample a second (a sample itself takes a while: t is wall-clock seconds).
while kill -0 "$UAC_PID" 2>/dev/null; do
  r=$(rss_kb "$PROXY_PID"); [ "$r" -gt "$PEAK" ] && PEAK=$r
  printf '%d\t%d\t%d\n' "$((SECONDS - T0))" "$r" "$(overload_503)" >>"$OUT/samples.tsv"
  sleep 1
done
wait "$UAC_PID" || true
SURGE_END=$((SECONDS - T0))
read -r s_ok s_ko < <(sipp_counts "$OUT/surge.screen.log")
S503=$(sipp_503 "$OUT/surge.screen.log")
R1=$(overload_503)
kill -0 "$PROXY_PID" || { echo "overload.sh: serlua died during the surge; see $OUT" >&2; exit 1; }

# 3. recovery at the normal rate, sampling on
NORMAL=$((CAPACITY / 2))
uac uac.xml "$NORMAL" 20 recovery
while kill -0 "$UAC_PID" 2>/dev/null; do
  r=$(rss_kb "$PROXY_PID"); [ "$r" -gt "$PEAK" ] && PEAK=$r
  printf '%d\t%d\t%d\n' "$((SECONDS - T0))" "$r" "$(overload_503)" >>"$OUT/samples.tsv"
  sleep 1
done
wait "$UAC_PID" || true
read -r r_ok r_ko < <(sipp_counts "$OUT/recovery.screen.log")
R2=$(overload_503)
END_RSS=$(rss_kb "$PROXY_PID")
# The last second the 503 counter rose, relative to the end of the surge
# (a burst late in the recovery run counts: it is reported, not hidden).
LAST_RISE=$(awk -F'\t' 'NR > 1 && $3 > prev { last = $1 } { prev = $3 } END { print last + 0 }' "$OUT/samples.tsv")
kill -0 "$PROXY_PID" || { echo "overload.sh: serlua died; see $OUT" >&2; exit 1; }

printf '\n%-44s %s\n' "serlua overload (children $CHILDREN, route cost $COST_MS ms/INVITE)" ""
printf '%-44s %s calls/s\n' "sustainable rate (0 failures)" "$CAPACITY"
printf '%-44s %s calls/s for %s s\n' "surge offered" "$SURGE" "$DURATION"
printf '%-44s %s ok (of which %s refused with 503), %s failed\n' "surge calls" "$s_ok" "${S503:-?}" "$s_ko"
printf '%-44s %s\n' "503 + Retry-After sent by serlua" "$((R1 - R0))"
printf '%-44s %s / %s / %s MiB\n' "RSS idle / peak / end" "$((IDLE / 1024))" "$((PEAK / 1024))" "$((END_RSS / 1024))"
printf '%-44s %s s\n' "last 503 after the end of the surge, at" "$((LAST_RISE > SURGE_END ? LAST_RISE - SURGE_END : 0))"
printf '%-44s %s ok, %s failed, %s 503s\n' "recovery at $NORMAL calls/s for 20 s" "$r_ok" "$r_ko" "$((R2 - R1))"
printf 'logs and per-second samples (t, VmRSS KiB, 503s): %s\n' "$OUT"
