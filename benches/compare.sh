#!/usr/bin/env bash
# benches/compare.sh: serlua against Kamailio 5.6 (native cfg and KEMI Lua)
# and rtpengine, same machine, same workloads, alternating runs in one
# session; prints one table and writes it to bench-out/compare-<time>.md.
#
#   benches/compare.sh                       # everything, about 20 minutes
#   benches/compare.sh --quick               # every cell once, under 10 minutes (noisy)
#   benches/compare.sh --workloads "b c" --repeat 5 --duration 20
#
# Workloads (sipp on 127.0.0.1; the serlua script and its Kamailio twins):
#   a    REGISTER with digest auth, one distinct user per registration
#        (REGISTER, 401, REGISTER with credentials, 200; tests/sipp/reg_auth.xml).
#        serlua: tests/scripts/registrar.lua; Kamailio: benches/kamailio-registrar.cfg
#        and benches/kamailio-registrar-kemi.cfg + .lua (auth_db + db_sqlite,
#        usrloc write-back). Users are provisioned per run in a fresh SQLite
#        file with serlua's schema (`serlua db migrate`: Kamailio's tables).
#   b    calls INVITE, 100, 180, 200, ACK, BYE, 200 through the same
#        registrar/proxy (stateful, record-route) to a registered user: the
#        UAS registers first with digest auth (reg_auth.xml from its own
#        port), then the UAC (tests/sipp/uac.xml, -d 0) calls it; the proxy
#        does lookup("location") and t_relay().
#   c    (b) through lua/pstn.lua with the media relay engaged: the callee
#        registers with digest auth from "behind NAT" (tests/sipp/lua_reg.xml,
#        private Contact), the caller authenticates each INVITE (407, then
#        credentials: benches/sipp/auth_uac.xml, which fails a call whose
#        answer is not on a relay port), and the proxy relays the media of
#        every call (use_media_proxy: offer, answer, delete). serlua runs
#        its embedded relay; Kamailio runs benches/kamailio-pstn{,-kemi}.cfg
#        with rtpengine (userspace, --table=-1) over ng. CPU and memory here
#        are the proxy's plus the relay's (rtpengine is a process of its own;
#        serlua's relay is inside serlua). --c-routing nat-media runs (c)
#        through tests/scripts/nat_media.lua (rtpproxy-style NAT script, no
#        auth) and benches/kamailio-nat-media{,-kemi}.cfg instead.
#   d    relay forwarding only: benches/media.sh (serlua relay vs rtpengine
#        --table=-1, N calls at 50 packets/s each way, serlua-rtpload).
#   mem  memory per binding: --bindings distinct users register (workload a's
#        path) at --mem-rate; (Pss after - Pss before) / successful registrations.
#
# Figures per workload and system:
#   max rate      highest offered rate of --sweep-X (runs of --sweep-duration
#                 s, one per rate and system, alternating) with every call or
#                 registration placed and successful within 10% + 1.5 s of the
#                 load's nominal length;
#                 a system is not tried above its first failing rate. ">R"
#                 means the highest rate tried passed (on 2 cores the two
#                 sipps are soon the limit: benches/relay.sh --proxy none
#                 measures sipp alone). Kamailio's failed calls are mostly
#                 a 180 forwarded after its 200 (two workers on one socket).
#   CPU/10k       CPU-seconds per 10,000 calls (or registrations) at the fixed
#                 rate --rate-X: utime+stime of every thread of every process
#                 of the system (Kamailio's forked children, rtpengine in (c))
#                 from /proc/PID/stat over the load; median of --repeat rounds,
#                 the systems' order rotating each round.
#   peak Pss      highest sample (1/s) of Pss summed over the system's
#                 processes during those runs (shared memory counted once);
#                 median of the rounds.
#   p50/p99       response time from sipp -trace_rtt (1 ms resolution): (a) first
#                 REGISTER to the final 200, (b)/(c) INVITE to its 200; pooled
#                 over the rounds.
#   failed        failed calls over all cost rounds (sipp's counts; each run's
#                 successful count is checked against the calls placed).
# Ratios are serlua / Kamailio-KEMI-Lua and serlua / Kamailio-native
# (serlua / rtpengine for (d)). Goals noted under the table.
#
# Options:
#   --workloads "a b c d mem"   which parts to run (default all)
#   --systems "serlua kamailio-lua kamailio-native"   (default all three)
#   --duration S        seconds of each cost run (default 10)
#   --repeat K          cost rounds (default 3)
#   --rate-a R, --rate-b R, --rate-c R   fixed common rate (default 1000, 1000, 500)
#   --sweep-a "...", --sweep-b "...", --sweep-c "..."   sweep rates
#                       (defaults "1000 2000 3000 4000 6000", "1000 2000 3000 4000 5000",
#                       "500 1000 1500 2000 3000")
#   --sweep-duration S  seconds of each sweep run (default 5)
#   --no-sweep          skip the rate sweeps
#   --children N        proxy workers: serlua children, Kamailio -n (default 2)
#   --uac-sockets K     UDP sockets the load (UAC) sends from (default 1: sipp -t u1;
#                       K > 1: -t un -max_socket K, calls spread over K source
#                       ports, as many phones would; serlua keeps each source on
#                       one worker, Kamailio's workers share one socket)
#   --relay-threads T   rtpengine --num-threads in (c), media.sh --threads (default 1;
#                       serlua's embedded relay uses its default relay_threads 1)
#   --bindings N        bindings for the memory figure (default 100000)
#   --mem-rate R        registration rate for the memory figure (default 2500)
#   --media-streams N   (d) calls for the cost figure (default 500 = 50,000 packets/s)
#   --media-duration S  (d) seconds per run (default 10)
#   --media-sweep "..." (d) call counts for the capacity figure (default "500 1000 2000 3000")
#   --c-routing R       pstn (default) or nat-media: the routing of workload (c)
#   --script-c FILE     serlua script of workload (c) (default lua/pstn.lua, or
#                       tests/scripts/nat_media.lua with --c-routing nat-media)
#   --quick             --duration 4 --repeat 1 --sweep-duration 3, short sweeps,
#                       --bindings 20000, media 3 s: to check that every cell fills
#   --out DIR           logs and results (default bench-out/compare-<time>/)
#   --no-build          do not run cargo build --release
#   --report DIR        run nothing: print the table of an earlier run from its
#                       DIR/results.txt (give the same --workloads/--systems/rates)
#
# Needs: sipp (sip-tester), kamailio, kamailio-lua-modules, kamailio-sqlite-modules,
# kamailio-extra-modules (rtpengine module), rtpengine-daemon, sqlite3, python3;
# run as root, it installs the missing ones (apt-get), as scripts/test does.
# Everything listens on 127.0.0.1 only; every run is bounded in calls and time.
set -euo pipefail
# The whole script is one group: bash parses it before running any of it,
# so editing the file during a long run does not derail that run.
{
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

WORKLOADS="a b c d mem"
SYSTEMS="serlua kamailio-lua kamailio-native"
DURATION=10
REPEAT=3
declare -A RATE=([a]=1000 [b]=1000 [c]=500)
declare -A SWEEP=([a]="1000 2000 3000 4000 6000" [b]="1000 2000 3000 4000 5000" [c]="500 1000 1500 2000 3000")
SWEEP_DURATION=5
DO_SWEEP=1
CHILDREN=2
UAC_SOCKETS=1
RELAY_THREADS=1
BINDINGS=100000
MEM_RATE=2500
MEDIA_STREAMS=500
MEDIA_DURATION=10
MEDIA_SWEEP="500 1000 2000 3000"
C_ROUTING=pstn
SCRIPT_C=""
OUT=""
BUILD=1
REPORT_ONLY=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --workloads) WORKLOADS=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --rate-a) RATE[a]=$2; shift 2 ;;
    --rate-b) RATE[b]=$2; shift 2 ;;
    --rate-c) RATE[c]=$2; shift 2 ;;
    --sweep-a) SWEEP[a]=$2; shift 2 ;;
    --sweep-b) SWEEP[b]=$2; shift 2 ;;
    --sweep-c) SWEEP[c]=$2; shift 2 ;;
    --sweep-duration) SWEEP_DURATION=$2; shift 2 ;;
    --no-sweep) DO_SWEEP=0; shift ;;
    --children) CHILDREN=$2; shift 2 ;;
    --uac-sockets) UAC_SOCKETS=$2; shift 2 ;;
    --relay-threads) RELAY_THREADS=$2; shift 2 ;;
    --bindings) BINDINGS=$2; shift 2 ;;
    --mem-rate) MEM_RATE=$2; shift 2 ;;
    --media-streams) MEDIA_STREAMS=$2; shift 2 ;;
    --media-duration) MEDIA_DURATION=$2; shift 2 ;;
    --media-sweep) MEDIA_SWEEP=$2; shift 2 ;;
    --script-c) SCRIPT_C=$2; shift 2 ;;
    --c-routing) C_ROUTING=$2; shift 2 ;;
    --quick)
      DURATION=4; REPEAT=1; SWEEP_DURATION=3; BINDINGS=20000; MEDIA_DURATION=3
      MEDIA_STREAMS=250; MEDIA_SWEEP="250 1000"
      SWEEP[a]="1000 3000"; SWEEP[b]="1000 3000"; SWEEP[c]="500 1500"
      shift ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --report) OUT=$2; REPORT_ONLY=1; BUILD=0; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

for s in $SYSTEMS; do
  case "$s" in serlua|kamailio-lua|kamailio-native) ;; *) echo "compare.sh: unknown system $s" >&2; exit 2 ;; esac
done
case "$C_ROUTING" in
  pstn) SCRIPT_C=${SCRIPT_C:-lua/pstn.lua} ;;
  nat-media) SCRIPT_C=${SCRIPT_C:-tests/scripts/nat_media.lua} ;;
  *) echo "compare.sh: --c-routing is pstn or nat-media" >&2; exit 2 ;;
esac
for w in $WORKLOADS; do
  case "$w" in a|b|c|d|mem) ;; *) echo "compare.sh: unknown workload $w" >&2; exit 2 ;; esac
done

# --- prerequisites ---------------------------------------------------------------
missing=()
command -v sipp >/dev/null || missing+=(sip-tester)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v python3 >/dev/null || missing+=(python3)
if [[ " $SYSTEMS " == *" kamailio"* ]]; then
  command -v kamailio >/dev/null || missing+=(kamailio)
  KMOD=$(ls -d /usr/lib/*/kamailio/modules 2>/dev/null | head -n 1)
  [ -n "$KMOD" ] && [ -f "$KMOD/app_lua.so" ] || missing+=(kamailio-lua-modules)
  [ -n "$KMOD" ] && [ -f "$KMOD/db_sqlite.so" ] || missing+=(kamailio-sqlite-modules)
  [ -n "$KMOD" ] && [ -f "$KMOD/rtpengine.so" ] || missing+=(kamailio-extra-modules)
fi
if [[ " $WORKLOADS " == *" c "* || " $WORKLOADS " == *" d "* ]]; then
  command -v rtpengine >/dev/null || missing+=(rtpengine-daemon)
fi
if [ "${#missing[@]}" -gt 0 ] && [ "$REPORT_ONLY" = 0 ]; then
  # As scripts/test does: Debian's packages, when we may install them.
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "compare.sh: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "compare.sh: missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

STAMP=$(date +%Y%m%d-%H%M%S)
[ -n "$OUT" ] || OUT="bench-out/compare-$STAMP"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.txt"
[ "$REPORT_ONLY" = 1 ] || : >"$RESULTS"
TCK=$(getconf CLK_TCK)
TARGET=${CARGO_TARGET_DIR:-target}
SERLUA="$ROOT/$TARGET/release/serlua"
case "$TARGET" in /*) SERLUA="$TARGET/release/serlua" ;; esac

if [ "$BUILD" = 1 ]; then
  echo "compare.sh: cargo build --release" >&2
  cargo build --release --bin serlua --bin serlua-rtpload >&2
fi
[ -x "$SERLUA" ] || { echo "compare.sh: $SERLUA is missing" >&2; exit 1; }

log() { echo "$*" >&2; }

# --- processes ---------------------------------------------------------------------
PROXY_PID=""; RELAY_PID=""; UAS_PID=""; UAC_PID=""
stop_all() {
  local p
  for p in $UAC_PID $UAS_PID $PROXY_PID $RELAY_PID; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $UAC_PID $UAS_PID $PROXY_PID $RELAY_PID; do
    for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  UAC_PID=""; UAS_PID=""; PROXY_PID=""; RELAY_PID=""
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

# start_proxy SYSTEM WORKLOAD DIR PORT DBURL NGPORT: sets PROXY_PID (and RELAY_PID).
start_proxy() {
  local sys=$1 w=$2 dir=$3 port=$4 url=$5 ng=$6
  # Below the ephemeral range (32768-60999), where free_port finds the SIP ports.
  local lo=20000 hi=31999
  case "$sys" in
    serlua)
      local script=tests/scripts/registrar.lua
      [ "$w" = c ] && script=$SCRIPT_C
      SERLUA_LISTEN="udp:127.0.0.1:$port" SERLUA_DB_URL="$url" SERLUA_CHILDREN="$CHILDREN" \
        SERLUA_PORTS="$lo-$hi" SERLUA_ADDRESS="127.0.0.1:$port" SERLUA_DOMAIN=example.com RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 \
        "$SERLUA" run --db "$url" --children "$CHILDREN" --ctl "$dir/serlua.ctl" "$script" \
        >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
      PROXY_PID=$!
      ;;
    kamailio-*)
      local cfg
      case "$w" in c) cfg=kamailio-$C_ROUTING ;; *) cfg=kamailio-registrar ;; esac
      # db_sqlite wants sqlite:// + an absolute path: sqlite:////abs/file
      local args=(-A "DBURL=\"sqlite:///${url#sqlite://}\"")
      if [ "$sys" = kamailio-lua ]; then
        args+=(-A "KEMI_SCRIPT=\"$ROOT/benches/$cfg-kemi.lua\"")
        cfg=$cfg-kemi
      fi
      if [ "$w" = c ]; then
        rtpengine --config-file=none --foreground --log-stderr --log-level=3 --table=-1 --interface=127.0.0.1 \
          --listen-ng="127.0.0.1:$ng" --listen-cli="127.0.0.1:$((ng + 1))" --port-min=$lo --port-max=$hi \
          --num-threads="$RELAY_THREADS" --delete-delay=0 >"$dir/rtpengine.log" 2>&1 &
        RELAY_PID=$!
        wait_bound "$ng" || { log "rtpengine did not start; see $dir/rtpengine.log"; return 1; }
        args+=(-A "NG_SOCK=\"udp:127.0.0.1:$ng\"" -A "ADDRESS=\"127.0.0.1:$port\"")
      fi
      mkdir -p "$dir/kamailio-run"
      kamailio -f "$ROOT/benches/$cfg.cfg" -DD -E -l "udp:127.0.0.1:$port" -n "$CHILDREN" "${args[@]}" \
        -Y "$dir/kamailio-run" -P "$dir/kamailio-run/kamailio.pid" -w "$dir/kamailio-run" -m 1024 -M 16 \
        >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
      PROXY_PID=$!
      ;;
  esac
}

# relay_check DIR PORT: one call (uac.xml, -trace_msg) before the measured
# load of (c); prints "yes" when the answer the caller got names a relay port
# (20000-31999, where every relay of the bench allocates), else "no".
relay_check() {
  local dir=$1 port=$2
  mkdir -p "$dir/check"
  (cd "$dir/check" && sipp -sf "$ROOT/tests/sipp/uac.xml" "127.0.0.1:$port" -i 127.0.0.1 -p "$(free_port)" -bind_local \
    -t u1 -nostdin -s bench00000 -d 0 -m 1 -recv_timeout 3000 -timeout 10s -trace_msg >"$dir/check/sipp.log" 2>&1) || true
  if cat "$dir"/check/*_messages.log 2>/dev/null | awk '/^m=audio / && $2 >= 20000 && $2 <= 31999 { found = 1 } END { exit !found }'; then
    echo yes
  else
    echo no
  fi
}

# rtpengine_sessions NGPORT: the sessions rtpengine has handled since it
# started (its cli port is NGPORT + 1), or "?".
rtpengine_sessions() {
  local v
  v=$(rtpengine-ctl -ip 127.0.0.1 -port "$(($1 + 1))" list totals 2>/dev/null |
      awk -F: '/Total managed sessions/ { gsub(/ /, "", $2); print $2; exit }')
  echo "${v:-?}"
}

# run_sip WORKLOAD SYSTEM RATE COUNT DIR: one run; appends a RESULT line to
# DIR/result and prints a readable summary on stderr. COUNT calls or
# registrations at RATE per second.
run_sip() {
  local w=$1 sys=$2 rate=$3 n=$4 dir=$5
  rm -rf "$dir"; mkdir -p "$dir"
  local url="sqlite://$dir/db.sqlite" users=0
  # (a), mem: one user per registration; (b): the callee; (c): callee and caller.
  case "$w" in a|mem) users=$n ;; b) users=1 ;; c) users=2 ;; esac
  "$SERLUA" db migrate --db "$url" >"$dir/migrate.log" 2>&1 || { log "serlua db migrate failed; see $dir"; return 1; }
  subscribers_sql "$users" | sqlite3 "$dir/db.sqlite" || { log "loading $users subscribers failed"; return 1; }
  # WAL: Kamailio's auth_db readers and its usrloc writer (another process)
  # would otherwise lock each other out ("database is locked"); the same
  # file setting for every system.
  sqlite3 "$dir/db.sqlite" 'PRAGMA journal_mode=WAL;' >/dev/null
  if [ "$w" = c ] && [ "$C_ROUTING" = pstn ]; then
    # lua/pstn.lua's domain table (`serlua domain add example.com`); no
    # trusted peer, so every INVITE authenticates.
    sqlite3 "$dir/db.sqlite" "INSERT INTO domain (domain) VALUES ('example.com');"
    # Kamailio's usrloc checks the aliases table as a location table
    # (version 9), though its own schema file writes 8.
    [ "$sys" = serlua ] || sqlite3 "$dir/db.sqlite" "UPDATE version SET table_version = 9 WHERE table_name = 'aliases';"
  fi
  users_csv "$users" >"$dir/users.csv"

  local port uas_port uac_port ng
  port=$(free_port); uas_port=$(free_port); uac_port=$(free_port); ng=$(free_port)
  start_proxy "$sys" "$w" "$dir" "$port" "$url" "$ng" || return 1
  wait_ready "$port" "$PROXY_PID" "$sys" || { log "  see $dir/proxy.stderr.log"; stop_all; return 1; }
  local pids=()
  mapfile -t pids < <(tree_pids "$PROXY_PID")
  [ -n "$RELAY_PID" ] && pids+=("$RELAY_PID")

  # (b), (c): the callee registers from the UAS's port, then the UAS starts there.
  if [ "$w" = b ] || [ "$w" = c ]; then
    # The callee: with digest auth (b); from "behind NAT" (c), so that its
    # calls are relayed.
    local reg=(-sf "$ROOT/tests/sipp/reg_auth.xml" -inf "$dir/users.csv")
    if [ "$w" = c ] && [ "$C_ROUTING" = nat-media ]; then
      reg=(-sf "$ROOT/tests/sipp/reg_nat.xml" -s bench00000)
    elif [ "$w" = c ]; then
      reg=(-sf "$ROOT/tests/sipp/lua_reg.xml" -s bench00000 -au bench00000 -ap pw-0 -key domain example.com
           -key nat_ip 192.168.1.20)
    fi
    (cd "$dir" && sipp "${reg[@]}" "127.0.0.1:$port" -i 127.0.0.1 -p "$uas_port" -bind_local -t u1 -nostdin \
      -m 1 -recv_timeout 3000 -timeout 10s -trace_err -error_file "$dir/uas-register.errors.log" \
      >"$dir/uas-register.log" 2>&1) || { log "$sys: the UAS's REGISTER failed; see $dir"; stop_all; return 1; }
    wait_free "$uas_port" || true
    local uas_n=$n
    [ "$w" = c ] && [ "$C_ROUTING" = nat-media ] && uas_n=$((n + 1))  # and the relay check's call
    (cd "$dir" && exec sipp -sf "$ROOT/tests/sipp/uas.xml" -i 127.0.0.1 -p "$uas_port" -bind_local -t u1 -nostdin \
      -m "$uas_n" -timeout "$((n / rate + 60))s" -buff_size 4194304 \
      -trace_err -error_file "$dir/uas.errors.log" -trace_screen -screen_file "$dir/uas.screen.log" \
      >"$dir/uas.stdout.log" 2>&1) &
    UAS_PID=$!
    wait_bound "$uas_port" || { log "sipp UAS did not start; see $dir"; stop_all; return 1; }
  fi

  local engaged="-"
  # pstn: benches/sipp/auth_uac.xml checks every call's answer instead.
  [ "$w" = c ] && [ "$C_ROUTING" = nat-media ] && engaged=$(relay_check "$dir" "$port")
  [ "$w" = c ] && [ "$C_ROUTING" = pstn ] && engaged=each-call

  local uac=()
  case "$w" in
    a|mem) uac=(-sf "$ROOT/tests/sipp/reg_auth.xml" -inf "$dir/users.csv") ;;
    b) uac=(-sf "$ROOT/tests/sipp/uac.xml" -s bench00000 -d 0) ;;
    c) if [ "$C_ROUTING" = pstn ]; then
         uac=(-sf "$ROOT/benches/sipp/auth_uac.xml" -s bench00000 -au bench00001 -ap pw-1 -key caller bench00001
              -key domain example.com -d 0)
       else
         uac=(-sf "$ROOT/tests/sipp/uac.xml" -s bench00000 -d 0)
       fi ;;
  esac
  # sipp writes response times every rtt_freq calls (the rest is lost at exit).
  local rtt_freq=$(( n >= 2000 ? 20 : 1 ))
  local p0 c0 r0=0 t0 drops0
  if [ "$w" = mem ]; then p0=$(settled_pss_kb "${pids[@]}"); else p0=$(pss_kb "${pids[@]}"); fi
  c0=$(cpu_ticks "${pids[@]}")
  [ -n "$RELAY_PID" ] && r0=$(cpu_ticks "$RELAY_PID")
  drops0=$(udp_drops)
  t0=$(now_ns)
  if [ "$UAC_SOCKETS" -gt 1 ]; then uac+=(-t un -max_socket "$UAC_SOCKETS"); else uac+=(-t u1); fi
  (cd "$dir" && exec sipp "${uac[@]}" "127.0.0.1:$port" -i 127.0.0.1 -p "$uac_port" -bind_local -nostdin \
    -m "$n" -r "$rate" -l "$((rate * 2 + 100))" -recv_timeout 2000 -timeout "$((n / rate + 60))s" \
    -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 -trace_rtt -rtt_freq "$rtt_freq" \
    -trace_err -error_file "$dir/uac.errors.log" -trace_screen -screen_file "$dir/uac.screen.log" \
    >"$dir/uac.stdout.log" 2>&1) &
  UAC_PID=$!
  local peak=$p0 s k=0
  while kill -0 "$UAC_PID" 2>/dev/null; do
    sleep 0.25
    k=$((k + 1))
    if [ $((k % 4)) = 0 ]; then
      s=$(pss_kb "${pids[@]}"); [ "$s" -gt "$peak" ] && peak=$s
    fi
  done
  local uac_rc=0
  wait "$UAC_PID" || uac_rc=$?
  UAC_PID=""
  local t1 c1 r1=0 drops1
  t1=$(now_ns)
  c1=$(cpu_ticks "${pids[@]}")
  drops1=$(udp_drops)
  [ -n "$RELAY_PID" ] && r1=$(cpu_ticks "$RELAY_PID")
  s=$(pss_kb "${pids[@]}"); [ "$s" -gt "$peak" ] && peak=$s
  local settled=$s
  if [ "$w" = mem ]; then
    settled=$(settled_pss_kb "${pids[@]}")
  fi
  local sessions=$engaged
  [ "$w" = c ] && [ -n "$RELAY_PID" ] && sessions="$engaged,rtpengine:$(rtpengine_sessions "$ng")"
  if [ -n "$UAS_PID" ]; then
    for _ in $(seq 1 50); do kill -0 "$UAS_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  stop_all

  local ok ko uas_ok uas_ko p50 p99
  read -r ok ko < <(sipp_counts "$dir/uac.screen.log")
  [[ "$ok" =~ ^[0-9]+$ ]] || ok=0
  [[ "$ko" =~ ^[0-9]+$ ]] || ko=$n
  # Calls that never completed (sipp stopped by its -timeout) count as failed.
  [ $((ok + ko)) -lt "$n" ] && ko=$((n - ok))
  read -r uas_ok uas_ko < <(sipp_counts "$dir/uas.screen.log")
  read -r p50 p99 < <(rtt_percentiles "$dir"/*_rtt.csv)
  awk -v w="$w" -v sys="$sys" -v rate="$rate" -v n="$n" -v ok="$ok" -v ko="$ko" -v t0="$t0" -v t1="$t1" \
      -v c="$((c1 - c0))" -v cr="$((r1 - r0))" -v tck="$TCK" -v peak="$peak" -v p0="$p0" -v settled="$settled" \
      -v p50="$p50" -v p99="$p99" -v uac_rc="$uac_rc" -v uas_ok="${uas_ok/\?/-}" -v uas_ko="${uas_ko/\?/-}" \
      -v sessions="$sessions" -v drops="$((drops1 - drops0))" -v dir="$dir" '
    BEGIN {
      el = (t1 - t0) / 1e9; cps = ok / el; cpu = c / tck
      per10k = (ok > 0) ? cpu * 10000 / ok : 0
      perbind = (ok > 0) ? (settled - p0) * 1024 / ok : 0
      printf "  %-5s %-16s offered %5d/s: achieved %7.1f/s, ok %d failed %d (UAC exit %d; UAS ok %s failed %s), CPU %.2f s (relay process %.2f) = %.3f CPU-s/10k, Pss %.1f -> peak %.1f MiB, p50/p99 %s/%s ms, relay engaged %s, UDP drops %d\n", \
        w, sys, rate, cps, ok, ko, uac_rc, uas_ok, uas_ko, cpu, cr / tck, per10k, p0 / 1024, peak / 1024, p50, p99, sessions, drops > "/dev/stderr"
      if (w == "mem") printf "  %-5s %-16s %d bindings: Pss %.1f MiB before, %.1f MiB after: %.0f bytes per binding\n", \
        w, sys, ok, p0 / 1024, settled / 1024, perbind > "/dev/stderr"
      printf "RESULT w=%s sys=%s rate=%d n=%d elapsed=%.2f achieved=%.1f ok=%d failed=%d cpu=%.3f relay_cpu=%.3f relay_per10k=%.4f per10k=%.4f pss0_kb=%d peak_kb=%d settled_kb=%d perbind=%.1f p50=%s p99=%s sessions=%s drops=%d dir=%s\n", \
        w, sys, rate, n, el, cps, ok, ko, cpu, cr / tck, (ok > 0 ? cr / tck * 10000 / ok : 0), per10k, p0, peak, settled, perbind, p50, p99, sessions, drops, dir > (dir "/result")
    }'
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2"; }

# sustained RESULTFILE: every call placed and successful, and no later than
# 10% + 1.5 s after the load's nominal length (sipp start-up and the last
# call's end); a proxy that falls behind makes sipp hold calls back (-l) or
# lose them.
sustained() {
  local f=$1
  awk -v n="$(field n "$f")" -v ok="$(field ok "$f")" -v ko="$(field failed "$f")" -v el="$(field elapsed "$f")" \
      -v r="$(field rate "$f")" 'BEGIN { exit !(ko == 0 && ok == n && el <= 1.1 * n / r + 1.5) }'
}

# --- the phases --------------------------------------------------------------------
read -r -a SYS <<<"$SYSTEMS"
NSYS=${#SYS[@]}
rotated() {  # rotated ROUND: the systems in the order of that round
  local r=$1 i
  for i in $(seq 0 $((NSYS - 1))); do echo "${SYS[$(((i + r) % NSYS))]}"; done
}

T_START=$(date +%s)
[ "$REPORT_ONLY" = 1 ] && WORKLOADS_RUN="" || WORKLOADS_RUN=$WORKLOADS
for w in a b c; do
  [[ " $WORKLOADS_RUN " == *" $w "* ]] || continue
  rate=${RATE[$w]}
  log "== ($w) cost: $rate/s for $DURATION s, $REPEAT round(s), systems alternating"
  for r in $(seq 1 "$REPEAT"); do
    for sys in $(rotated "$r"); do
      d="$OUT/$w/cost-$sys-$r"
      if run_sip "$w" "$sys" "$rate" "$((rate * DURATION))" "$d"; then
        echo "phase=cost $(cat "$d/result")" >>"$RESULTS"
      else
        log "  $w $sys round $r: the run did not complete; see $d"
        echo "phase=cost RESULT w=$w sys=$sys rate=$rate error=1 dir=$d" >>"$RESULTS"
        stop_all
      fi
    done
  done
  [ "$DO_SWEEP" = 1 ] || continue
  log "== ($w) sweep: ${SWEEP[$w]} per s, $SWEEP_DURATION s each"
  declare -A stopped=()
  for rate in ${SWEEP[$w]}; do
    for sys in "${SYS[@]}"; do
      [ -n "${stopped[$sys]:-}" ] && continue
      d="$OUT/$w/sweep-$sys-$rate"
      if run_sip "$w" "$sys" "$rate" "$((rate * SWEEP_DURATION))" "$d"; then
        echo "phase=sweep $(cat "$d/result")" >>"$RESULTS"
        if ! sustained "$d/result"; then
          stopped[$sys]=1
        fi
      else
        echo "phase=sweep RESULT w=$w sys=$sys rate=$rate error=1 dir=$d" >>"$RESULTS"
        stopped[$sys]=1
        stop_all
      fi
    done
  done
  unset stopped
done

if [[ " $WORKLOADS_RUN " == *" mem "* ]]; then
  log "== memory per binding: $BINDINGS registrations at $MEM_RATE/s"
  for sys in "${SYS[@]}"; do
    d="$OUT/mem/$sys"
    if run_sip mem "$sys" "$MEM_RATE" "$BINDINGS" "$d"; then
      echo "phase=mem $(cat "$d/result")" >>"$RESULTS"
    else
      echo "phase=mem RESULT w=mem sys=$sys error=1 dir=$d" >>"$RESULTS"
      stop_all
    fi
  done
fi

if [[ " $WORKLOADS_RUN " == *" d "* ]]; then
  log "== (d) relay forwarding: benches/media.sh --streams $MEDIA_STREAMS --duration $MEDIA_DURATION --repeat $REPEAT --sweep \"$MEDIA_SWEEP\""
  mkdir -p "$OUT/d"
  if benches/media.sh --no-build --streams "$MEDIA_STREAMS" --duration "$MEDIA_DURATION" --repeat "$REPEAT" \
      --threads "$RELAY_THREADS" --sweep "$MEDIA_SWEEP" >"$OUT/d/media.out" 2>"$OUT/d/media.err"; then
    cat "$OUT/d/media.err" >&2
    cat "$OUT/d/media.out" >&2
  else
    log "  benches/media.sh failed; see $OUT/d/media.err"
  fi
fi
T_END=$(date +%s)

# --- the table ---------------------------------------------------------------------
MD="$ROOT/bench-out/compare-$STAMP.md"
mkdir -p "$ROOT/bench-out"
CMP_SYSTEMS="$SYSTEMS" CMP_WORKLOADS="$WORKLOADS" CMP_RATE_A=${RATE[a]} CMP_RATE_B=${RATE[b]} CMP_RATE_C=${RATE[c]} \
CMP_SWEEP_A="${SWEEP[a]}" CMP_SWEEP_B="${SWEEP[b]}" CMP_SWEEP_C="${SWEEP[c]}" CMP_DO_SWEEP=$DO_SWEEP \
CMP_CONFIG="children $CHILDREN; UAC sockets $UAC_SOCKETS; cost runs $DURATION s × $REPEAT round(s) at the fixed rates; sweep runs $SWEEP_DURATION s; relay threads $RELAY_THREADS; (c) serlua script $SCRIPT_C; $((T_END - T_START)) s in all; logs in $OUT" \
CMP_WHEN="$(date '+%Y-%m-%d %H:%M')" CMP_C_NAME="$(basename "$SCRIPT_C")" \
python3 - "$RESULTS" "$OUT/d/media.out" "$OUT/d/media.err" "$MD" <<'PY'
import re, statistics, sys, os
results, media_out, media_err, md_path = sys.argv[1:5]
E = os.environ
systems = E["CMP_SYSTEMS"].split()
workloads = E["CMP_WORKLOADS"].split()
rate = {w: int(E["CMP_RATE_" + w.upper()]) for w in "abc"}
sweep = {w: E["CMP_SWEEP_" + w.upper()].split() for w in "abc"}
do_sweep = E["CMP_DO_SWEEP"] == "1"
rows = []
for line in open(results):
    d = dict(re.findall(r"(\w+)=(\S+)", line))
    rows.append(d)

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None

def fmt(x, nd=2):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"

def pct(vals, q):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    import math
    i = max(1, math.ceil(len(vals) * q))
    return vals[i - 1]

names = {"serlua": "serlua", "kamailio-lua": "Kamailio KEMI-Lua", "kamailio-native": "Kamailio native"}
cols = [s for s in ["serlua", "kamailio-lua", "kamailio-native"] if s in systems]
wname = {"a": "(a) REGISTER + digest auth", "b": "(b) calls via registrar (INVITE..BYE)",
         "c": "(c) " + E["CMP_C_NAME"] + " + media relay", "d": "(d) relay forwarding (media.sh)",
         "mem": "memory per binding"}
unit = {"a": "regs", "b": "calls", "c": "calls"}

table = []  # (workload, metric, {sys: value}, digits, ratio?)
for w in ["a", "b", "c"]:
    if w not in workloads:
        continue
    cost = [r for r in rows if r.get("phase") == "cost" and r.get("w") == w]
    by = {s: [r for r in cost if r.get("sys") == s] for s in cols}
    vals = {}
    if do_sweep:
        best = {}
        for s in cols:
            sw = [r for r in rows if r.get("phase") == "sweep" and r.get("w") == w and r.get("sys") == s]
            passed = [int(r["rate"]) for r in sw if r.get("error") is None and r.get("failed") == "0"
                      and r.get("ok") == r.get("n") and num(r.get("elapsed")) is not None
                      and num(r["elapsed"]) <= 1.1 * int(r["n"]) / int(r["rate"]) + 1.5]
            if not sw:
                best[s] = None
            elif not passed:
                best[s] = "none ≤ " + sweep[w][0] if sweep[w] else "none"
            else:
                b = max(passed)
                best[s] = (">" if str(b) == sweep[w][-1] else "") + f"{b:,}"
        table.append((w, f"highest rate with 0 failed ({unit[w]}/s)", best, 0, False))
    cpu = {s: med([num(r.get("per10k")) for r in by[s] if r.get("error") is None]) for s in cols}
    label = f"CPU-s per 10,000 {unit[w]} at {rate[w]:,}/s"
    if w == "c":
        label += " (proxy + relay)"
    table.append((w, label, cpu, 3, True))
    if w == "c":
        rc = {s: (med([num(r.get("relay_per10k")) for r in by[s] if r.get("error") is None]) if s != "serlua" else "(in-process)") for s in cols}
        table.append((w, "  of which the relay process (rtpengine)", rc, 3, False))
    pk = {s: med([num(r.get("peak_kb")) / 1024 if num(r.get("peak_kb")) else None for r in by[s] if r.get("error") is None]) for s in cols}
    table.append((w, "peak Pss, MiB (sum over processes" + (", relay included)" if w == "c" else ")"), pk, 1, True))
    rt = {}
    for s in cols:
        files = []
        for r in by[s]:
            if r.get("error") is None and r.get("dir"):
                import glob
                files += glob.glob(os.path.join(r["dir"], "*_rtt.csv"))
        v = []
        for f in files:
            for ln in open(f).read().splitlines()[1:]:
                p = ln.split(";")
                if len(p) >= 2:
                    try:
                        v.append(float(p[1]))
                    except ValueError:
                        pass
        p50, p99 = pct(v, 0.5), pct(v, 0.99)
        rt[s] = None if p50 is None else f"{p50:g} / {p99:g}"
    table.append((w, "response time p50 / p99, ms (sipp, 1 ms steps)", rt, 0, False))
    fl = {}
    for s in cols:
        ok = sum(int(r.get("ok", 0)) for r in by[s] if r.get("error") is None)
        ko = sum(int(r.get("failed", 0)) for r in by[s] if r.get("error") is None)
        err = sum(1 for r in by[s] if r.get("error"))
        fl[s] = None if not by[s] else f"{ko} of {ok + ko}" + (f" ({err} run(s) broke)" if err else "")
    table.append((w, f"failed {unit[w]} in the cost runs", fl, 0, False))
    if w == "c":
        ss = {}
        for s in cols:
            v = [r.get("sessions", "?").replace("each-call", "every answer checked").replace(",rtpengine:", "; rtpengine sessions ")
                 for r in by[s]]
            ss[s] = " / ".join(dict.fromkeys(v)) or None
        table.append((w, "relay engaged per run (check; rtpengine's session count)", ss, 0, False))

mem_rows = [r for r in rows if r.get("phase") == "mem"]
if "mem" in workloads:
    v = {}
    for s in cols:
        m = [r for r in mem_rows if r.get("sys") == s and r.get("error") is None]
        v[s] = num(m[0]["perbind"]) if m else None
    n = next((r.get("ok") for r in mem_rows if r.get("ok")), "?")
    table.append(("mem", f"bytes per binding at {int(n):,} bindings (Pss delta / bindings)" if n != "?" else "bytes per binding", v, 0, True))
    base = {}
    for s in cols:
        m = [r for r in mem_rows if r.get("sys") == s and r.get("error") is None]
        base[s] = num(m[0]["pss0_kb"]) / 1024 if m and num(m[0].get("pss0_kb")) else None
    table.append(("mem", "Pss before the first REGISTER, subscribers provisioned, MiB", base, 1, True))

media = {}
if "d" in workloads and os.path.exists(media_out):
    txt = open(media_out).read()
    m = re.search(r"CPU-s per million packets \(median\)\s+(\S+)\s+(\S+)", txt)
    if m:
        media["cpu"] = (num(m.group(1)), num(m.group(2)))
    m = re.search(r"highest packet rate with 0 lost \(pkt/s\)\s+(\S+)\s+(\S+)", txt)
    if m:
        media["cap"] = (num(m.group(1)), num(m.group(2)))
    lat = {"serlua": [], "rtpengine": []}
    head = open(media_err).read() if os.path.exists(media_err) else ""
    part = head.split("== capacity")[0]
    for ln in part.splitlines():
        mm = re.match(r"(serlua|rtpengine)\s.*latency p50 (\S+) us p99 (\S+) us", ln)
        if mm:
            lat[mm.group(1)].append((num(mm.group(2)), num(mm.group(3))))
    media["lat"] = {k: (med([a for a, _ in v]), med([b for _, b in v])) for k, v in lat.items()}

hdr = ["workload", "metric"] + [names[s] for s in cols] + ["rtpengine"]
ratio_cols = []
if "kamailio-lua" in cols:
    ratio_cols.append(("kamailio-lua", "serlua / KEMI-Lua"))
if "kamailio-native" in cols:
    ratio_cols.append(("kamailio-native", "serlua / native"))
hdr += [t for _, t in ratio_cols] + ["serlua / rtpengine"]
out = []
out.append("| " + " | ".join(hdr) + " |")
out.append("|" + "---|" * len(hdr))
for w, metric, vals, nd, ratio in table:
    cells = [wname[w], metric] + [fmt(vals.get(s), nd) for s in cols] + ["—"]
    for s, _ in ratio_cols:
        a, b = vals.get("serlua"), vals.get(s)
        cells.append(f"{a / b:.2f}" if ratio and isinstance(a, float) and isinstance(b, float) and b else "—")
    cells.append("—")
    out.append("| " + " | ".join(cells) + " |")
if media:
    def mrow(metric, pair, nd):
        s, r = pair if pair else (None, None)
        cells = [wname["d"], metric, fmt(s, nd)] + ["—"] * (len(cols) - 1) + [fmt(r, nd)] + ["—"] * len(ratio_cols)
        cells.append(f"{s / r:.2f}" if s and r else "—")
        out.append("| " + " | ".join(cells) + " |")
    mrow("CPU-s per million packets (= µs/packet), median", media.get("cpu"), 3)
    mrow("highest packet rate with 0 lost (pkt/s)", media.get("cap"), 0)
    lat = media.get("lat", {})
    if lat:
        f = lambda k: None if not lat.get(k) or lat[k][0] is None else f"{lat[k][0]:g} / {lat[k][1]:g}"
        cells = [wname["d"], "relay latency p50 / p99, µs (serlua-rtpload)", f("serlua") or "—"] + ["—"] * (len(cols) - 1) + [f("rtpengine") or "—"] + ["—"] * len(ratio_cols) + ["—"]
        out.append("| " + " | ".join(cells) + " |")

goals = []
def ratio_of(w, prefix, s):
    for ww, metric, vals, nd, ratio in table:
        if ww == w and metric.startswith(prefix):
            a, b = vals.get("serlua"), vals.get(s)
            if isinstance(a, float) and isinstance(b, float) and b:
                return a / b
    return None
for w in ["b", "c"]:
    if w in workloads:
        for s, lim in [("kamailio-lua", 0.7), ("kamailio-native", 1.0)]:
            r = ratio_of(w, "CPU-s", s)
            if r is not None:
                goals.append(f"- ({w}) serlua CPU per call ≤ {lim} × {names[s]}: {r:.2f} — {'met' if r <= lim else 'missed'}")
if media.get("cpu") and media["cpu"][0] and media["cpu"][1]:
    r = media["cpu"][0] / media["cpu"][1]
    goals.append(f"- (d) relay CPU per packet ≤ rtpengine: {r:.2f} — {'met' if r <= 1 else 'missed'}")
for ww, metric, vals, nd, ratio in table:
    if ww == "mem" and metric.startswith("bytes per binding") and isinstance(vals.get("serlua"), float):
        b = vals["serlua"]
        goals.append(f"- memory per binding < 1 KiB: serlua {b:.0f} bytes — {'met' if b < 1024 else 'missed'}")

cfg = E["CMP_CONFIG"]
text = "\n".join(out)
md = (f"# serlua vs Kamailio 5.6 / rtpengine — benches/compare.sh, {E['CMP_WHEN']}\n\n"
      f"{cfg}\n\n{text}\n\nGoals:\n" + ("\n".join(goals) if goals else "- (none measured)") + "\n\n"
      "CPU: utime+stime of every thread of every process of the system from /proc over the load "
      "(Kamailio: main and all forked children; (c) Kamailio rows include rtpengine, serlua's relay is in-process). "
      "Memory: Pss summed over those processes, sampled once a second (shared memory counted once). "
      "Response times from sipp -trace_rtt, 1 ms resolution (0 = under 1 ms).\n")
open(md_path, "w").write(md)
print(md)
PY
cp "$MD" "$OUT/compare.md"
log "table: $MD"
exit 0
}
