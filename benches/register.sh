#!/usr/bin/env bash
# benches/register.sh: REGISTER-with-digest-auth throughput and CPU cost of
# serlua's registrar under sipp load.
#
#   benches/register.sh [--rate R] [--duration S] [--users N] [--db URL] [--children C]
#   benches/register.sh --sweep [--rates "500 1000 ..."] [--repeat 3] [--duration S] ...
#
# One run: builds serlua in release mode, creates N subscribers
# bench00000@example.com … (password pw-<i>) in a fresh SQLite file (or in
# the database of --db: migrated with `serlua db migrate`, the bench users
# replaced), starts `serlua run tests/scripts/registrar.lua` on it, and has
# sipp (tests/sipp/reg_auth.xml: REGISTER → 401 → REGISTER with credentials
# → 200 listing the binding, checked) register R*S times at R registrations/s,
# one user per registration, cycling through the N users (when R*S > N the
# later ones are refreshes of a binding). Prints:
#   offered rate, registrations/s achieved (successful / elapsed), failed,
#   serlua's CPU-seconds during the run (utime+stime of all its threads,
#   /proc/PID/stat, clock ticks / getconf CLK_TCK), CPU-s per 10,000
#   registrations, peak RSS (VmHWM), sipp's CPU-seconds, and the location
#   rows in the database after serlua stopped (SIGTERM flushes what is queued).
# --sweep runs each rate of --rates --repeat times (default 3; a fresh
# proxy and database each run), prints the median of each, and reports the
# highest rate at which no run had a failed registration; it stops when the
# median run achieves less than 80% of the offered rate.
#
# Options:
#   --rate R        offered registrations/s (default 1000)
#   --duration S    seconds of load (default 10): R*S registrations
#   --users N       subscribers (default: R*S, at most 100000; so every
#                   registration is a new user unless N is smaller)
#   --db URL        sqlite://FILE, postgres://… or mysql://… (default: a fresh
#                   SQLite file per run in the --out directory). Needs the
#                   sqlite3, psql or mysql client to load the subscribers.
#   --children C    serlua workers (default 2)
#   --sweep         rate sweep (see above)
#   --rates "..."   rates for --sweep (default "500 1000 1500 2000 2500 3000 4000 5000")
#   --repeat K      runs per rate in --sweep (default 3)
#   --out DIR       logs (default bench-out/register-<time>)
#   --no-build      do not run cargo build --release
#
# Everything listens on 127.0.0.1 only. Logs of each run (serlua's stderr,
# sipp's screen and error log) stay in the --out directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RATE=1000
DURATION=10
USERS=""
DB_URL=""
CHILDREN=2
SWEEP=0
RATES="500 1000 1500 2000 2500 3000 4000 5000"
REPEAT=3
OUT=""
BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --db) DB_URL=$2; shift 2 ;;
    --children) CHILDREN=$2; shift 2 ;;
    --sweep) SWEEP=1; shift ;;
    --rates) RATES=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "register.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

command -v sipp >/dev/null || { echo "register.sh: sipp is missing (apt-get install sip-tester)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "register.sh: python3 is missing" >&2; exit 1; }
[ -n "$OUT" ] || OUT="bench-out/register-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TCK=$(getconf CLK_TCK)
SERLUA="$ROOT/target/release/serlua"

# ---------------------------------------------------------------------------
# helpers

free_port() {  # a free UDP port on 127.0.0.1 (bound, then released)
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# probe PORT: true once something answers an OPTIONS with Max-Forwards: 0
# (registrar.lua answers it with 483 itself).
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

wait_ready() {  # wait_ready PORT PID
  local i
  for i in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { echo "register.sh: serlua exited at start; see $OUT" >&2; return 1; }
    probe "$1" && return 0
    sleep 0.1
  done
  echo "register.sh: serlua did not answer on 127.0.0.1:$1 within 30 s" >&2
  return 1
}

# cpu_ticks PID: utime+stime (all threads) of a process.
cpu_ticks() {
  local line rest
  line=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  rest=${line##*) }
  # fields after "(comm) ": state ppid ... utime is the 12th, stime the 13th
  set -- $rest
  echo $((${12} + ${13}))
}

hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# sipp_counts SCREENFILE: "successful failed" from sipp's final screen.
sipp_counts() {
  awk -F'|' '
    /Successful call/ { gsub(/ /, "", $3); ok = $3 }
    /Failed call/     { gsub(/ /, "", $3); ko = $3 }
    END { printf "%s %s\n", (ok == "" ? "?" : ok), (ko == "" ? "?" : ko) }' "$1" 2>/dev/null || echo "? ?"
}

now_ns() { date +%s%N; }

# The SQL that (re)creates the bench subscribers: N users, MD5 ha1/ha1b as
# `serlua user add` stores them (realm = domain = example.com).
subscribers_sql() {
  python3 - "$1" <<'PY'
import hashlib, sys
n = int(sys.argv[1])
md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
out = ["BEGIN;", "DELETE FROM subscriber WHERE username LIKE 'bench%';",
       "DELETE FROM location WHERE username LIKE 'bench%';"]
rows = []
for i in range(n):
    u, p = "bench%05d" % i, "pw-%d" % i
    rows.append("('%s','example.com','%s','%s','%s')" % (u, p, md5("%s:example.com:%s" % (u, p)),
                                                       md5("%s@example.com:example.com:%s" % (u, p))))
for k in range(0, len(rows), 1000):
    out.append("INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES " + ",".join(rows[k:k + 1000]) + ";")
out.append("COMMIT;")
print("\n".join(out))
PY
}

# sql_client URL: runs SQL from stdin against the database of URL.
sql_client() {
  local url=$1
  case "$url" in
    sqlite://*) sqlite3 "${url#sqlite://}" ;;
    postgres://*|postgresql://*) psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null ;;
    mysql://*)
      python3 - "$url" <<'PY' >"$OUT/.mysql-args"
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
args = ["-h", u.hostname or "127.0.0.1", "-P", str(u.port or 3306), "-u", urllib.parse.unquote(u.username or "root")]
if u.password: args.append("-p" + urllib.parse.unquote(u.password))
args.append(u.path.lstrip("/"))
print("\n".join(args))
PY
      mapfile -t margs <"$OUT/.mysql-args"
      mysql "${margs[@]}" ;;
    *) echo "register.sh: unsupported --db URL $url" >&2; return 1 ;;
  esac
}

PROXY_PID=""
UAC_PID=""
cleanup() {
  local p
  for p in $UAC_PID $PROXY_PID; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in $UAC_PID $PROXY_PID; do kill -KILL "$p" 2>/dev/null || true; done
  UAC_PID=""; PROXY_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ---------------------------------------------------------------------------
# one run: run_once RATE DIR -> prints a report, leaves "RESULT ..." in DIR/result

run_once() {
  local rate=$1 dir=$2
  mkdir -p "$dir"
  local regs=$((rate * DURATION))
  local users=${USERS:-$regs}
  [ "$users" -gt 100000 ] && [ -z "$USERS" ] && users=100000
  local url=${DB_URL:-sqlite://$dir/serlua.db}

  # The database: schema, then the bench subscribers.
  "$SERLUA" db migrate --db "$url" >"$dir/migrate.log" 2>&1 || { echo "register.sh: serlua db migrate failed; see $dir/migrate.log" >&2; return 1; }
  subscribers_sql "$users" | sql_client "$url" || { echo "register.sh: loading $users subscribers failed" >&2; return 1; }
  python3 - "$users" >"$dir/users.csv" <<'PY'
import sys
n = int(sys.argv[1])
print("SEQUENTIAL")
for i in range(n):
    print("bench%05d;[authentication username=bench%05d password=pw-%d]" % (i, i, i))
PY

  local proxy_port uac_port
  proxy_port=$(free_port); uac_port=$(free_port)
  SERLUA_LISTEN="udp:127.0.0.1:$proxy_port" SERLUA_DB_URL="$url" SERLUA_CHILDREN="$CHILDREN" \
    RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 \
    "$SERLUA" run tests/scripts/registrar.lua >"$dir/serlua.stdout.log" 2>"$dir/serlua.stderr.log" &
  PROXY_PID=$!
  wait_ready "$proxy_port" "$PROXY_PID" || return 1

  local t0 t1 c0 c1 u0 u1
  c0=$(cpu_ticks "$PROXY_PID")
  t0=$(now_ns)
  # -l: at most 2 s worth of open registrations; -recv_timeout: a lost
  # message fails its registration after 2 s instead of hanging the run.
  sipp -sf "$ROOT/tests/sipp/reg_auth.xml" "127.0.0.1:$proxy_port" -i 127.0.0.1 -p "$uac_port" -bind_local -t u1 \
    -nostdin -inf "$dir/users.csv" -m "$regs" -r "$rate" -l "$((rate * 2 + 100))" -recv_timeout 2000 \
    -timeout "$((DURATION + 60))s" -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 \
    -trace_err -error_file "$dir/uac.errors.log" -trace_screen -screen_file "$dir/uac.screen.log" \
    >"$dir/uac.stdout.log" 2>&1 &
  UAC_PID=$!
  u0=0; c1=$c0
  # A process's CPU reads as 0 once it has exited: poll while the UAC runs
  # and keep the last reading.
  while kill -0 "$UAC_PID" 2>/dev/null; do
    u1=$(cpu_ticks "$UAC_PID"); [ "$u1" -gt "$u0" ] && u0=$u1
    c1=$(cpu_ticks "$PROXY_PID")
    sleep 0.2
  done
  local uac_rc=0
  wait "$UAC_PID" || uac_rc=$?
  t1=$(now_ns)
  UAC_PID=""
  c1=$(cpu_ticks "$PROXY_PID")
  local hwm
  hwm=$(hwm_kb "$PROXY_PID")

  # SIGTERM: serlua writes what usrloc still has queued and exits 0.
  local proxy_rc=0
  kill -TERM "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || proxy_rc=$?
  PROXY_PID=""
  local rows="?"
  rows=$(echo "SELECT count(*) FROM location WHERE username LIKE 'bench%';" | \
    case "$url" in
      sqlite://*) sqlite3 "${url#sqlite://}" ;;
      postgres://*|postgresql://*) psql -At "$url" ;;
      *) sql_client "$url" | tail -n 1 ;;
    esac 2>/dev/null || echo "?")

  local ok ko
  read -r ok ko < <(sipp_counts "$dir/uac.screen.log")
  [[ "$ok" =~ ^[0-9]+$ ]] || ok=0
  [[ "$ko" =~ ^[0-9]+$ ]] || ko=$regs
  local expect_rows=$(( regs < users ? regs : users ))
  awk -v rate="$rate" -v regs="$regs" -v users="$users" -v ok="$ok" -v ko="$ko" -v t0="$t0" -v t1="$t1" \
      -v c="$((c1 - c0))" -v u="$u0" -v tck="$TCK" -v hwm="$hwm" -v children="$CHILDREN" -v dir="$dir" \
      -v uac_rc="$uac_rc" -v proxy_rc="$proxy_rc" -v rows="$rows" -v expect_rows="$expect_rows" -v url="$url" '
    BEGIN {
      el = (t1 - t0) / 1e9; rps = ok / el; cpu = c / tck
      per10k = (ok > 0) ? cpu * 10000 / ok : 0
      printf "database              %s\n", url
      printf "offered rate          %d registrations/s (%d registrations, %d users, children %s)\n", rate, regs, users, children
      printf "achieved              %.1f registrations/s (%d successful in %.2f s)\n", rps, ok, el
      printf "failed                %d (sipp exit %d)\n", ko, uac_rc
      printf "serlua CPU            %.2f CPU-s (%.1f%% of one core)\n", cpu, 100 * cpu / el
      printf "CPU per 10,000 regs   %.3f CPU-s\n", per10k
      printf "peak RSS (VmHWM)      %.1f MiB\n", hwm / 1024
      printf "sipp CPU              %.2f CPU-s\n", u / tck
      printf "location rows         %s after SIGTERM (expected %d; serlua exit %d)\n", rows, expect_rows, proxy_rc
      printf "logs                  %s\n", dir
      printf "RESULT rate=%d achieved=%.1f ok=%d failed=%d cpu=%.3f per10k=%.3f hwm_kb=%d uac_cpu=%.2f rows=%s\n", \
        rate, rps, ok, ko, cpu, per10k, hwm, u / tck, rows > (dir "/result")
    }'
}

# ---------------------------------------------------------------------------

if [ "$BUILD" = 1 ]; then
  echo "register.sh: cargo build --release" >&2
  cargo build --release --bin serlua >&2
fi
[ -x "$SERLUA" ] || { echo "register.sh: $SERLUA is missing" >&2; exit 1; }

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
    mkdir -p "$d"
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
  m_rss=$(awk -v k="$m_hwm" 'BEGIN { printf "%.1f MiB", k / 1024 }')
  printf "%-8s %-12s %-22s %-10s %-12s %s\n" "$rate" "$m_ach" "$(IFS=,; echo "${fails[*]}")" "$m_cpu" "$m_per" "$m_rss" | tee -a "$summary"
  clean=1
  for f in "${fails[@]}"; do [ "$f" = 0 ] || clean=0; done
  [ "$clean" = 1 ] && best=$rate
  if awk -v a="$m_ach" -v r="$rate" 'BEGIN { exit !(a < 0.8 * r) }'; then
    echo "(median achieved rate below 80% of $rate registrations/s: stopping)" | tee -a "$summary"
    break
  fi
done
echo "highest rate with 0 failed registrations in all $REPEAT runs: ${best:-none} registrations/s (children $CHILDREN, ${DURATION}s runs; medians above)" | tee -a "$summary"
echo "logs: $OUT"
