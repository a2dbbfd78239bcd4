#!/usr/bin/env bash
# benches/relay.sh: calls/s and CPU cost of a stateful relay under sipp load.
#
#   benches/relay.sh [--rate R] [--duration S] [--children N] [--proxy P]
#   benches/relay.sh --sweep [--rates "500 1000 ..."] [--repeat 3] [--duration S] [--proxy P]
#
# One run: builds serlua in release mode, starts the proxy P (serlua with
# tests/scripts/relay.lua, or kamailio with benches/kamailio-relay.cfg: the
# same script line for line), a sipp UAS (tests/sipp/uas.xml) behind it and a
# sipp UAC (tests/sipp/uac.xml, INVITE..BYE, -r R -d 0) in front of it, places
# R*S calls, and prints:
#   offered rate, calls/s achieved (successful calls / elapsed), failed calls,
#   the proxy's CPU-seconds (utime+stime of all its threads and processes,
#   /proc/PID/stat, in clock ticks / getconf CLK_TCK) during the measured
#   window, CPU-seconds per 10,000 calls, peak RSS (VmHWM), and the CPU-seconds
#   of the two sipp processes (on 2 cores sipp itself is often the limit:
#   see --proxy none).
# --sweep runs each rate of --rates --repeat times (default 3; a fresh proxy
# each run), prints the median of each, and reports the highest rate at which
# no run had a failed call; it stops when the median run achieves less than
# 80% of the offered rate.
# The UAC is strict about order: a proxy that forwards a 180 after its 200
# fails that call (Kamailio with 2 workers does, about once per 1,000 calls).
#
# Proxies (add one: a start_proxy_NAME function below, and its name in PROXIES):
#   serlua    target/release/serlua run tests/scripts/relay.lua
#   kamailio  /usr/sbin/kamailio -f benches/kamailio-relay.cfg (apt-get install kamailio)
#   none      no proxy: the UAC calls the UAS directly (sipp's own ceiling)
#
# Options:
#   --rate R        offered calls/s (default 1000)
#   --duration S    seconds of calls (default 10): R*S calls are placed
#   --children N    proxy workers (serlua children / kamailio -n; default 2)
#   --uac-sockets K UDP sockets the UAC sends from (default 1: sipp -t u1; K > 1:
#                   -t un -max_socket K, calls spread over K source ports, so a
#                   proxy that keeps each source on one worker can use them all)
#   --proxy P       serlua | kamailio | none (default serlua)
#   --sweep         rate sweep (see above)
#   --rates "..."   rates for --sweep (default "500 1000 1500 2000 2500 3000 3500 4000 5000 6000")
#   --repeat K      runs per rate in --sweep (default 3)
#   --out DIR       logs (default bench-out/relay-<proxy>-<time>)
#   --no-build      do not run cargo build --release
#
# Everything listens on 127.0.0.1 only. Logs of each run (proxy stderr, sipp
# screens and error logs) stay in the --out directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROXIES="serlua kamailio none"
RATE=1000
DURATION=10
CHILDREN=2
UAC_SOCKETS=1
PROXY=serlua
SWEEP=0
RATES="500 1000 1500 2000 2500 3000 3500 4000 5000 6000"
REPEAT=3
OUT=""
BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --children) CHILDREN=$2; shift 2 ;;
    --uac-sockets) UAC_SOCKETS=$2; shift 2 ;;
    --proxy) PROXY=$2; shift 2 ;;
    --sweep) SWEEP=1; shift ;;
    --rates) RATES=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "relay.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

case " $PROXIES " in
  *" $PROXY "*) ;;
  *) echo "relay.sh: unknown proxy '$PROXY' (one of: $PROXIES)" >&2; exit 2 ;;
esac
command -v sipp >/dev/null || { echo "relay.sh: sipp is missing (apt-get install sip-tester)" >&2; exit 1; }
[ -n "$OUT" ] || OUT="bench-out/relay-$PROXY-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------
# helpers

free_port() {  # a free UDP port on 127.0.0.1 (bound, then released)
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# probe PORT: true once something answers an OPTIONS with Max-Forwards: 0
# (both relay scripts answer it with 483 themselves).
probe() {
  python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
me = s.getsockname()[1]
msg = ("OPTIONS sip:probe@127.0.0.1:%d SIP/2.0\r\n"
       "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-probe-%d;rport\r\n"
       "From: <sip:probe@127.0.0.1:%d>;tag=probe\r\nTo: <sip:probe@127.0.0.1:%d>\r\n"
       "Call-ID: probe-%d@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\n"
       "Content-Length: 0\r\n\r\n") % (port, me, time.time_ns(), me, port, time.time_ns())
s.settimeout(0.2)
s.sendto(msg.encode(), ("127.0.0.1", port))
try:
    data, _ = s.recvfrom(65536)
    sys.exit(0 if data.startswith(b"SIP/2.0 ") else 1)
except OSError:
    sys.exit(1)
PY
}

wait_ready() {  # wait_ready PORT PID NAME
  local i
  for i in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || { echo "relay.sh: $3 exited at start; see $OUT" >&2; return 1; }
    probe "$1" && return 0
    sleep 0.1
  done
  echo "relay.sh: $3 did not answer on 127.0.0.1:$1 within 10 s" >&2
  return 1
}

wait_bound() {  # wait_bound PORT: until a UDP socket is bound on 127.0.0.1:PORT
  local i
  for i in $(seq 1 100); do
    ss -Hlun "sport = :$1" 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  return 1
}

# The process tree under a pid (kamailio forks its workers).
tree_pids() {
  local root=$1
  awk -v root="$root" '
    FNR == 1 {
      line = $0; sub(/.*\) /, "", line); split(line, f, " ")
      pid = FILENAME; sub("/proc/", "", pid); sub("/stat", "", pid)
      parent[pid] = f[2]
    }
    END {
      keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
      for (p in keep) print p
    }' /proc/[0-9]*/stat 2>/dev/null
}

# cpu_ticks PID...: utime+stime (all threads) summed over the given processes.
cpu_ticks() {
  local total=0 p line rest
  for p in "$@"; do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${line##*) }
    # fields after "(comm) ": state ppid ... utime is the 12th, stime the 13th
    set -- $rest
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

# hwm_kb PID...: VmHWM summed over the processes (kB).
hwm_kb() {
  local total=0 p v
  for p in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# sipp_counts SCREENFILE: "successful failed" from sipp's final screen.
sipp_counts() {
  awk -F'|' '
    /Successful call/ { gsub(/ /, "", $3); ok = $3 }
    /Failed call/     { gsub(/ /, "", $3); ko = $3 }
    END { printf "%s %s\n", (ok == "" ? "?" : ok), (ko == "" ? "?" : ko) }' "$1" 2>/dev/null || echo "? ?"
}

now_ns() { date +%s%N; }

# UDP datagrams dropped on full receive buffers, system-wide (RcvbufErrors).
udp_drops() { awk '/^Udp:/ { if (++n == 1) { for (i = 2; i <= NF; i++) col[$i] = i } else { print $col["RcvbufErrors"] } }' /proc/net/snmp; }

PROXY_PID=""
UAS_PID=""
UAC_PID=""
cleanup() {
  local p
  for p in $UAC_PID $UAS_PID $PROXY_PID; do
    kill -TERM "$p" 2>/dev/null || true
  done
  sleep 0.3
  for p in $UAC_PID $UAS_PID $PROXY_PID; do
    kill -KILL "$p" 2>/dev/null || true
  done
  UAC_PID=""; UAS_PID=""; PROXY_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ---------------------------------------------------------------------------
# proxies: start_proxy_NAME DIR LISTEN_PORT NEXT_HOP_PORT sets PROXY_PID

start_proxy_serlua() {
  SERLUA_LISTEN="udp:127.0.0.1:$2" SERLUA_NEXT_HOP="127.0.0.1:$3" SERLUA_CHILDREN="$CHILDREN" \
    RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 \
    "$ROOT/target/release/serlua" run tests/scripts/relay.lua >"$1/proxy.stdout.log" 2>"$1/proxy.stderr.log" &
  PROXY_PID=$!
}

start_proxy_kamailio() {
  local kam
  kam=$(command -v kamailio || echo /usr/sbin/kamailio)
  [ -x "$kam" ] || { echo "relay.sh: kamailio is missing (apt-get install kamailio)" >&2; return 1; }
  mkdir -p "$1/kamailio-run"
  "$kam" -f "$ROOT/benches/kamailio-relay.cfg" -DD -E -l "udp:127.0.0.1:$2" -n "$CHILDREN" \
    -A "NEXT_HOP=\"127.0.0.1:$3\"" -Y "$1/kamailio-run" -P "$1/kamailio-run/kamailio.pid" -w "$1/kamailio-run" \
    -m 1024 -M 16 >"$1/proxy.stdout.log" 2>"$1/proxy.stderr.log" &
  PROXY_PID=$!
}

start_proxy_none() { PROXY_PID=""; }

# ---------------------------------------------------------------------------
# one run: run_once RATE DIR -> prints a report, leaves "RESULT ..." in DIR/result

run_once() {
  local rate=$1 dir=$2
  mkdir -p "$dir"
  local calls=$((rate * DURATION))
  local uas_port uac_port proxy_port target
  uas_port=$(free_port); uac_port=$(free_port); proxy_port=$(free_port)

  # UAS first, then the proxy, then the UAC.
  sipp -sf "$ROOT/tests/sipp/uas.xml" -i 127.0.0.1 -p "$uas_port" -bind_local -t u1 -nostdin \
    -m "$calls" -timeout "$((DURATION + 60))s" -buff_size 4194304 \
    -trace_err -error_file "$dir/uas.errors.log" -trace_screen -screen_file "$dir/uas.screen.log" \
    >"$dir/uas.stdout.log" 2>&1 &
  UAS_PID=$!
  wait_bound "$uas_port" || { echo "relay.sh: sipp UAS did not start; see $dir" >&2; return 1; }

  "start_proxy_$PROXY" "$dir" "$proxy_port" "$uas_port"
  local extra=()
  if [ "$UAC_SOCKETS" -gt 1 ]; then
    extra+=(-t un -max_socket "$UAC_SOCKETS")
  else
    extra+=(-t u1)
  fi
  if [ -n "$PROXY_PID" ]; then
    wait_ready "$proxy_port" "$PROXY_PID" "$PROXY" || return 1
    target="127.0.0.1:$proxy_port"
  else
    target="127.0.0.1:$uas_port"
    extra+=(-set no_proxy 1)
  fi

  local pids=() t0 t1 c0 c1 u0 u1 uas0 uas1
  [ -n "$PROXY_PID" ] && mapfile -t pids < <(tree_pids "$PROXY_PID")
  c0=$(cpu_ticks "${pids[@]}"); uas0=$(cpu_ticks "$UAS_PID")
  local drops0 drops1
  drops0=$(udp_drops)
  t0=$(now_ns)
  # -l: at most 2 s worth of open calls; -recv_timeout: a lost message fails
  # its call after 1 s instead of hanging the run (the elapsed time, and so
  # "achieved", then includes that wait).
  sipp -sf "$ROOT/tests/sipp/uac.xml" "$target" -i 127.0.0.1 -p "$uac_port" -bind_local -nostdin \
    -m "$calls" -r "$rate" -d 0 -l "$((rate * 2 + 100))" -recv_timeout 1000 -timeout "$((DURATION + 60))s" \
    -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 "${extra[@]}" \
    -trace_err -error_file "$dir/uac.errors.log" -trace_screen -screen_file "$dir/uac.screen.log" \
    >"$dir/uac.stdout.log" 2>&1 &
  UAC_PID=$!
  u0=0; uas1=$uas0
  # A sipp's CPU reads as 0 once it has exited: poll while the UAC runs and
  # keep the last reading of each.
  while kill -0 "$UAC_PID" 2>/dev/null; do
    u1=$(cpu_ticks "$UAC_PID"); [ "$u1" -gt "$u0" ] && u0=$u1
    [ -n "$PROXY_PID" ] && mapfile -t pids < <(tree_pids "$PROXY_PID")
    c1=$(cpu_ticks "${pids[@]}")
    s1=$(cpu_ticks "$UAS_PID"); [ "$s1" -gt "$uas1" ] && uas1=$s1
    sleep 0.2
  done
  local uac_rc=0
  wait "$UAC_PID" || uac_rc=$?
  t1=$(now_ns)
  drops1=$(udp_drops)
  UAC_PID=""
  # The window ends when the UAC is done (the last poll, <= 0.2 s before).
  local hwm=0 nproc=0
  if [ -n "$PROXY_PID" ]; then
    mapfile -t pids < <(tree_pids "$PROXY_PID")
    c1=$(cpu_ticks "${pids[@]}")
    hwm=$(hwm_kb "${pids[@]}")
    nproc=${#pids[@]}
  fi
  s1=$(cpu_ticks "$UAS_PID"); [ "$s1" -gt "$uas1" ] && uas1=$s1

  # The UAS ends by itself after its last call's 2 s timewait.
  local i
  for i in $(seq 1 50); do kill -0 "$UAS_PID" 2>/dev/null || break; sleep 0.1; done
  local uas_rc=0
  if kill -0 "$UAS_PID" 2>/dev/null; then kill -TERM "$UAS_PID" 2>/dev/null || true; fi
  wait "$UAS_PID" || uas_rc=$?
  UAS_PID=""
  if [ -n "$PROXY_PID" ]; then
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
  fi

  local ok ko uas_ok uas_ko
  read -r ok ko < <(sipp_counts "$dir/uac.screen.log")
  read -r uas_ok uas_ko < <(sipp_counts "$dir/uas.screen.log")
  [[ "$ok" =~ ^[0-9]+$ ]] || ok=0
  [[ "$ko" =~ ^[0-9]+$ ]] || ko=$calls
  awk -v rate="$rate" -v calls="$calls" -v ok="$ok" -v ko="$ko" -v uas_ok="$uas_ok" -v uas_ko="$uas_ko" \
      -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v u="$u0" -v s="$((uas1 - uas0))" -v tck="$TCK" \
      -v hwm="$hwm" -v nproc="$nproc" -v proxy="$PROXY" -v children="$CHILDREN" -v sockets="$UAC_SOCKETS" -v dir="$dir" \
      -v uac_rc="$uac_rc" -v uas_rc="$uas_rc" -v drops="$((drops1 - drops0))" '
    BEGIN {
      el = (t1 - t0) / 1e9; cps = ok / el; cpu = c / tck
      per10k = (ok > 0) ? cpu * 10000 / ok : 0
      printf "proxy                 %s (children %s, UAC sockets %s)\n", proxy, children, sockets
      printf "offered rate          %d calls/s (%d calls)\n", rate, calls
      printf "achieved              %.1f calls/s (%d successful in %.2f s)\n", cps, ok, el
      printf "failed calls          %d (UAC exit %d; UAS: %s successful, %s failed, exit %d)\n", ko, uac_rc, uas_ok, uas_ko, uas_rc
      if (proxy != "none") {
        printf "proxy CPU             %.2f CPU-s (%.1f%% of one core)\n", cpu, 100 * cpu / el
        printf "CPU per 10,000 calls  %.3f CPU-s\n", per10k
        printf "peak RSS (VmHWM)      %.1f MiB%s\n", hwm / 1024, (nproc > 1 ? sprintf(" (sum over %d processes; counts shared memory in each)", nproc) : "")
      }
      printf "sipp CPU              UAC %.2f CPU-s, UAS %.2f CPU-s\n", u / tck, s / tck
      printf "UDP drops             %d datagrams dropped on full receive buffers (system-wide)\n", drops
      printf "logs                  %s\n", dir
      printf "RESULT rate=%d achieved=%.1f ok=%d failed=%d cpu=%.3f per10k=%.3f hwm_kb=%d uac_cpu=%.2f uas_cpu=%.2f udp_drops=%d\n", \
        rate, cps, ok, ko, cpu, per10k, hwm, u / tck, s / tck, drops > (dir "/result")
    }'
}

# ---------------------------------------------------------------------------

if [ "$PROXY" = serlua ] && [ "$BUILD" = 1 ]; then
  echo "relay.sh: cargo build --release" >&2
  cargo build --release --bin serlua >&2
fi
if [ "$PROXY" = serlua ] && [ ! -x target/release/serlua ]; then
  echo "relay.sh: target/release/serlua is missing" >&2; exit 1
fi

if [ "$SWEEP" = 0 ]; then
  run_once "$RATE" "$OUT/rate-$RATE"
  exit 0
fi

# --sweep
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2"; }

best=""
summary="$OUT/sweep.txt"
printf "%-8s %-12s %-22s %-10s %-12s %s\n" "offered" "achieved" "failed (each run)" "CPU-s" "CPU-s/10k" "peak RSS" | tee "$summary"
for rate in $RATES; do
  fails=(); achieved=(); cpus=(); per=(); hwms=()
  for k in $(seq 1 "$REPEAT"); do
    d="$OUT/rate-$rate-run-$k"
    if run_once "$rate" "$d" >"$d.txt" 2>&1 && [ -f "$d/result" ]; then
      fails+=("$(field failed "$d/result")"); achieved+=("$(field achieved "$d/result")")
      cpus+=("$(field cpu "$d/result")"); per+=("$(field per10k "$d/result")"); hwms+=("$(field hwm_kb "$d/result")")
    else
      fails+=("error"); achieved+=(0); cpus+=(0); per+=(0); hwms+=(0)
      cleanup
    fi
  done
  m_ach=$(printf '%s\n' "${achieved[@]}" | median)
  m_cpu=$(printf '%s\n' "${cpus[@]}" | median)
  m_per=$(printf '%s\n' "${per[@]}" | median)
  m_hwm=$(printf '%s\n' "${hwms[@]}" | median)
  if [ "$PROXY" = none ]; then m_cpu=-; m_per=-; m_rss=-; else
    m_rss=$(awk -v k="$m_hwm" 'BEGIN { printf "%.1f MiB", k / 1024 }'); fi
  printf "%-8s %-12s %-22s %-10s %-12s %s\n" "$rate" "$m_ach" "$(IFS=,; echo "${fails[*]}")" "$m_cpu" "$m_per" "$m_rss" | tee -a "$summary"
  clean=1
  for f in "${fails[@]}"; do [ "$f" = 0 ] || clean=0; done
  [ "$clean" = 1 ] && best=$rate
  # Stop once the load is clearly beyond capacity: the median run achieved
  # less than 80% of the offered rate.
  if awk -v a="$m_ach" -v r="$rate" 'BEGIN { exit !(a < 0.8 * r) }'; then
    echo "(median achieved rate below 80% of $rate calls/s: stopping)" | tee -a "$summary"
    break
  fi
done
echo "highest rate with 0 failed calls in all $REPEAT runs: ${best:-none} calls/s ($PROXY, children $CHILDREN, UAC sockets $UAC_SOCKETS, ${DURATION}s runs; medians above)" | tee -a "$summary"
echo "logs: $OUT"
