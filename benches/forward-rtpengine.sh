#!/usr/bin/env bash
# benches/forward-rtpengine.sh: relay CPU per packet, serlua's forwarder
# against rtpengine's userspace forwarding, under the same serlua-rtpload.
#
#   benches/forward-rtpengine.sh [--streams N] [--duration S] [--threads T] [--tick-ms MS] [--repeat K] [--no-build]
#
# For each of K rounds (default 3), alternating:
#   serlua     the forwarder in-process (cargo bench --bench forward), its
#              getrusage over the run;
#   rtpengine  /usr/bin/rtpengine (apt-get install rtpengine-daemon), userspace
#              only (--table=-1), --num-threads=T, N calls set up over its ng
#              protocol (offer + answer, SDP pointing at rtpload's two ends),
#              its utime+stime (/proc/PID/stat) over the run.
# Each prints CPU-s per million packets relayed (= µs of relay CPU per
# packet) and the load's loss and latency; the summary gives the medians.
# N calls = N streams x 2 directions x 50 packets/s of 172 bytes.
# Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

STREAMS=200
DURATION=10
THREADS=1
TICK=2
REPEAT=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --tick-ms) TICK=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "forward-rtpengine.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v rtpengine >/dev/null || { echo "forward-rtpengine.sh: rtpengine is missing (apt-get install rtpengine-daemon)" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-target}
if [ "$BUILD" = 1 ]; then
  cargo bench --bench forward --no-run >&2
fi
BENCH=$(cargo bench --bench forward --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -1)
LOAD=$TARGET/release/serlua-rtpload
[ -x "$BENCH" ] && [ -x "$LOAD" ] || { echo "forward-rtpengine.sh: build first (cargo bench --bench forward --no-run)" >&2; exit 1; }
TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
RTPE_PID=""
cleanup() { [ -n "$RTPE_PID" ] && kill "$RTPE_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ng_sessions NG_PORT N A_ADDR B_ADDR: offer+answer N calls, print "a_port b_port" lines.
ng_sessions() {
  python3 - "$@" <<'PY'
import random, re, socket, sys
def benc(x):
    if isinstance(x, int): return b"i%de" % x
    if isinstance(x, str): x = x.encode()
    if isinstance(x, bytes): return b"%d:%s" % (len(x), x)
    if isinstance(x, dict): return b"d" + b"".join(benc(k) + benc(v) for k, v in sorted(x.items())) + b"e"
    raise TypeError(x)
def bdec(s, i=0):
    c = s[i:i+1]
    if c == b"i":
        j = s.index(b"e", i); return int(s[i+1:j]), j + 1
    if c in (b"l", b"d"):
        i += 1; out = []
        while s[i:i+1] != b"e":
            v, i = bdec(s, i); out.append(v)
        if c == b"l": return out, i + 1
        return {out[k].decode(): out[k+1] for k in range(0, len(out), 2)}, i + 1
    j = s.index(b":", i); n = int(s[i:j]); return s[j+1:j+1+n], j + 1 + n
def sdp(addr):
    ip, port = addr.rsplit(":", 1)
    return ("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
            "m=audio %s RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n") % (ip, ip, port)
ng, n, a, b = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
def cmd(d):
    cookie = b"%x" % random.getrandbits(48)
    for _ in range(50):
        try:
            s.sendto(cookie + b" " + benc(d), ("127.0.0.1", ng))
            while True:
                data, _ = s.recvfrom(65536)
                c, _, body = data.partition(b" ")
                if c == cookie: break
            break
        except OSError:
            import time; time.sleep(0.1)
    else:
        sys.exit("rtpengine does not answer on ng port %d" % ng)
    r, _ = bdec(body)
    if r.get("result") != b"ok": sys.exit("rtpengine: %r" % r)
    return r
port = lambda sd: int(re.search(rb"m=audio (\d+)", sd).group(1))
for i in range(n):
    cid = "bench-%x-%d" % (random.getrandbits(32), i)
    off = cmd({"command": "offer", "call-id": cid, "from-tag": "f%d" % i, "sdp": sdp(a)})
    ans = cmd({"command": "answer", "call-id": cid, "from-tag": "f%d" % i, "to-tag": "t%d" % i, "sdp": sdp(b)})
    # The rewritten answer goes to the caller (A sends there), the offer to the callee.
    print(port(ans["sdp"]), port(off["sdp"]))
PY
}

# json_field FILE EXPR
json_field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

run_serlua() {
  "$BENCH" --bench --streams "$STREAMS" --duration "$DURATION" --threads "$THREADS" --tick-ms "$TICK" | tail -1 | tee "$WORK/serlua.out" >&2
  sed -n 's/.*= \([0-9.]*\) CPU-s per million.*/\1/p' "$WORK/serlua.out"
}

run_rtpengine() {
  local ng a b c0 c1
  ng=$(free_port); a=$(free_port); b=$(free_port)
  rtpengine --config-file=none --foreground --log-stderr --log-level=3 --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$ng" --port-min=36000 --port-max=$((36000 + STREAMS * 4 + 200)) --num-threads="$THREADS" \
    >"$WORK/rtpengine.log" 2>&1 &
  RTPE_PID=$!
  ng_sessions "$ng" "$STREAMS" "127.0.0.1:$a" "127.0.0.1:$b" >"$WORK/pairs"
  c0=$(awk '{print $14 + $15}' "/proc/$RTPE_PID/stat")
  "$LOAD" --pairs "$WORK/pairs" --duration "$DURATION" --tick-ms "$TICK" --bind-a "127.0.0.1:$a" --bind-b "127.0.0.1:$b" \
    >"$WORK/load.json" 2>/dev/null
  c1=$(awk '{print $14 + $15}' "/proc/$RTPE_PID/stat")
  kill "$RTPE_PID"; wait "$RTPE_PID" 2>/dev/null || true; RTPE_PID=""
  local per
  per=$(awk -v c=$((c1 - c0)) -v t="$TCK" -v p="$(json_field "$WORK/load.json" 'r["received"]')" 'BEGIN { printf "%.3f", c / t * 1e6 / (p > 0 ? p : 1) }')
  echo "rtpengine: $STREAMS streams, $THREADS thread(s): relay $(awk -v c=$((c1 - c0)) -v t="$TCK" 'BEGIN { printf "%.2f", c / t }') CPU-s = $per CPU-s per million packets; lost $(json_field "$WORK/load.json" 'r["lost"]') of $(json_field "$WORK/load.json" 'r["sent"]'); latency p50 $(json_field "$WORK/load.json" 'r["latency_us"]["p50"]') us, p99 $(json_field "$WORK/load.json" 'r["latency_us"]["p99"]') us" >&2
  echo "$per"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
S=(); R=()
for _ in $(seq 1 "$REPEAT"); do
  S+=("$(run_serlua)")
  R+=("$(run_rtpengine)")
done
ms=$(printf '%s\n' "${S[@]}" | median)
mr=$(printf '%s\n' "${R[@]}" | median)
echo "median CPU-s per million packets ($STREAMS streams, $THREADS thread(s), tick $TICK ms, $REPEAT runs): serlua $ms, rtpengine $mr (serlua/rtpengine $(awk -v s="$ms" -v r="$mr" 'BEGIN { printf "%.2f", s / r }'))"
