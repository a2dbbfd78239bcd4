#!/usr/bin/env bash
# tests/traces/record.sh: records the traces in this folder from real runs
# of serlua, sipp and a small TCP client on the loopback interface. Needs
# root (tcpdump/dumpcap), sipp (sip-tester), tcpdump, dumpcap and editcap
# (tshark's packages), python3, and ports 5060, 5061 and 5070 free.
#
#   cargo build && tests/traces/record.sh [SERLUA_BINARY]
#
# Every command that produced a committed file is below; README.md beside
# this script lists them per file.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERLUA=${1:-target/debug/serlua}
OUT=tests/traces
T=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

# Starts a capture in the background; its pid goes to $pids.
capture() {
  "$@" 2>>"$T/capture.log" &
  pids+=($!)
}

# Stops the captures started since the last call (SIGINT flushes them).
stop_captures() {
  sleep 1
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# --- 1. REGISTER / 401 / REGISTER / 200 over UDP (registrar.lua) ---------------
"$SERLUA" user add alice@example.com secret --db "sqlite://$T/reg.db"
SERLUA_DB_URL="sqlite://$T/reg.db" SERLUA_CHILDREN=1 "$SERLUA" run tests/scripts/registrar.lua --ctl "$T/reg.ctl" \
  >"$T/registrar.log" 2>&1 &
proxy=$!
sleep 1
capture tcpdump -i lo -U -w "$OUT/register_auth.pcap" 'udp port 5060'
capture tcpdump -i any -y LINUX_SLL -U -w "$OUT/register_auth_sll.pcap" 'udp port 5060'
capture tcpdump -i any -y LINUX_SLL2 -U -w "$OUT/register_auth_sll2.pcap" 'udp port 5060'
sleep 1
printf 'SEQUENTIAL\nalice;[authentication username=alice password=secret]\n' >"$T/users.csv"
sipp -sf tests/sipp/reg_auth.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -inf "$T/users.csv" -m 1 -bind_local \
  -trace_err -error_file "$T/sipp_reg.err" >/dev/null
stop_captures

# --- 2. TCP: one REGISTER split across two segments (same registrar, TCP) ------
kill "$proxy"; wait "$proxy" 2>/dev/null || true
SERLUA_LISTEN=tcp:127.0.0.1:5060 SERLUA_DB_URL="sqlite://$T/reg.db" SERLUA_CHILDREN=1 \
  "$SERLUA" run tests/scripts/registrar.lua --ctl "$T/reg.ctl" >"$T/registrar_tcp.log" 2>&1 &
proxy=$!
sleep 1
capture tcpdump -i lo -U -w "$OUT/tcp_split.pcap" 'tcp port 5060'
sleep 1
python3 "$OUT/tcp_split_client.py" 127.0.0.1 5060 5061
stop_captures
kill "$proxy"; wait "$proxy" 2>/dev/null || true

# --- 3. A call: INVITE/100/180/200/ACK/BYE/200 through relay.lua -----------------
SERLUA_CHILDREN=1 "$SERLUA" run tests/scripts/relay.lua --ctl "$T/relay.ctl" >"$T/relay.log" 2>&1 &
proxy=$!
sleep 1
capture tcpdump -i lo -U -w "$OUT/call.pcap" 'udp port 5060'
capture dumpcap -q -i lo -f 'udp port 5060' -w "$OUT/call.pcapng"
sleep 2
sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5070 -bind_local -m 1 -trace_err -error_file "$T/sipp_uas.err" >/dev/null &
uas=$!
sleep 0.5
sipp -sf tests/sipp/uac.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -bind_local -m 1 -d 500 \
  -trace_err -error_file "$T/sipp_uac.err" >/dev/null
wait "$uas"
stop_captures
kill "$proxy"; wait "$proxy" 2>/dev/null || true

chmod 644 "$OUT"/*.pcap "$OUT"/*.pcapng
for f in "$OUT"/*.pcap "$OUT"/*.pcapng; do
  echo "$f: $(tcpdump -r "$f" 2>/dev/null | wc -l) packets"
done
