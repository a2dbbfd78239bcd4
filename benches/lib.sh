# benches/lib.sh: helpers for the benchmark scripts (sourced, not run):
# ports, readiness probes, process trees, CPU and memory from /proc, sipp's
# counts and response times, and the bench subscribers.
# Everything talks to 127.0.0.1 only.

# A free UDP port on 127.0.0.1 (bound, then released).
free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# probe PORT: true once something answers an OPTIONS with Max-Forwards: 0
# (every bench route script and config answers it with 483 itself).
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

# wait_ready PORT PID NAME: until the proxy answers on PORT (30 s at most).
wait_ready() {
  local i
  for i in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { echo "$3 exited at start" >&2; return 1; }
    probe "$1" && return 0
    sleep 0.1
  done
  echo "$3 did not answer on 127.0.0.1:$1 within 30 s" >&2
  return 1
}

# wait_bound PORT: until a UDP socket is bound on 127.0.0.1:PORT (5 s at most).
wait_bound() {
  local i
  for i in $(seq 1 100); do
    ss -Hlun "sport = :$1" 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  return 1
}

# wait_free PORT: until nothing is bound on 127.0.0.1:PORT any more (5 s at most).
wait_free() {
  local i
  for i in $(seq 1 100); do
    ss -Hlun "sport = :$1" 2>/dev/null | grep -q . || return 0
    sleep 0.05
  done
  return 1
}

# tree_pids PID: PID and all its descendants (Kamailio forks its workers).
# One cat over /proc/*/stat: a process that exits meanwhile is skipped (awk
# given the files itself may stop at one it cannot open: mawk does).
tree_pids() {
  local root=$1
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$root" '
    {
      pid = $1; line = $0; sub(/.*\) /, "", line); split(line, f, " ")
      parent[pid] = f[2]
    }
    END {
      keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
      for (p in keep) print p
    }'
}

# cpu_ticks PID...: utime+stime (all threads) summed over the processes, in
# clock ticks (getconf CLK_TCK).
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

# pss_kb PID...: Pss summed over the processes (kB): shared pages (Kamailio's
# shared memory, libraries) are counted once in the sum, split between the
# processes that map them.
pss_kb() {
  local total=0 p v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2; exit}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# settled_pss_kb PID...: Pss (as pss_kb) once it has stopped moving: sampled
# every 0.5 s until two samples in a row differ by under 0.5% (at most 20 s).
# A process that has just loaded a table, or just served a surge, is still
# returning freed pages; a single sample then measures the moment, not the state.
settled_pss_kb() {
  local prev cur i
  prev=$(pss_kb "$@")
  for i in $(seq 1 40); do
    sleep 0.5
    cur=$(pss_kb "$@")
    if [ $(( (cur > prev ? cur - prev : prev - cur) * 200 )) -le "$cur" ]; then
      break
    fi
    prev=$cur
  done
  echo "$cur"
}

# hwm_kb PID...: VmHWM summed over the processes (kB; shared pages count in each).
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

# rtt_percentiles FILE...: "p50 p99" (ms) of the response times sipp wrote
# with -trace_rtt (Date_ms;response_time_ms;rtd_no; sipp's clock has 1 ms
# resolution, so 0 means under a millisecond). "- -" when there are none.
rtt_percentiles() {
  awk -F';' 'FNR > 1 && NF >= 2 && $2 ~ /^[0-9.]+$/ { print $2 }' "$@" 2>/dev/null | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "- -"; exit }
      i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
      if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
      print v[i50], v[i99] }'
}

now_ns() { date +%s%N; }

# UDP datagrams dropped on full receive buffers, system-wide (RcvbufErrors).
udp_drops() { awk '/^Udp:/ { if (++n == 1) { for (i = 2; i <= NF; i++) col[$i] = i } else { print $col["RcvbufErrors"] } }' /proc/net/snmp; }

# subscribers_sql N: SQL (SQLite) that (re)creates the bench subscribers
# bench00000@example.com … with password pw-<i>, MD5 ha1/ha1b as
# `serlua user add` stores them (realm = domain = example.com). Kamailio's
# auth_db reads the same rows (password_column ha1).
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

# users_csv N: a sipp injection file for tests/sipp/reg_auth.xml (users in order).
users_csv() {
  python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
print("SEQUENTIAL")
for i in range(n):
    print("bench%05d;[authentication username=bench%05d password=pw-%d]" % (i, i, i))
PY
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
