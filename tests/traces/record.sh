#!/usr/bin/env bash
# tests/traces/record.sh: records the traces in this folder from real runs
# of serlua, sipp and a small TCP client on the loopback interface. Needs
# root (tcpdump/dumpcap), sipp (sip-tester), tcpdump, dumpcap and editcap
# (tshark's packages), python3, and ports 5060-5063 and 5070 on 127.0.0.1
# and 5060 on 127.0.0.2 free.
#
#   cargo build && tests/traces/record.sh [SERLUA_BINARY] [SECTION...]
#
# SECTION: base (register_auth*, tcp_split, call*), pstn (pstn_*),
# nat_mediaproxy, nat_rtpproxy (nat_*: the shipped lua/ scripts); all of
# them when none is given. Every command that produced a committed file is
# below; README.md beside this script lists them per file.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERLUA=${1:-target/debug/serlua}
shift || true
SECTIONS=${*:-base pstn nat_mediaproxy nat_rtpproxy}
OUT=tests/traces
T=$(mktemp -d)
pids=()
proxy=""
cleanup() {
  for p in "${pids[@]}" $proxy; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

want() { [[ " $SECTIONS " == *" $1 "* ]]; }

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

# The traces of the shipped scripts hold only what the proxy on
# 127.0.0.1:5060 received and sent (not other tests' traffic on lo).
PROXY_ONLY='udp and ((src host 127.0.0.1 and src port 5060) or (dst host 127.0.0.1 and dst port 5060))'

# Captures what the proxy on 127.0.0.1:5060 receives and sends into FILE.
capture_proxy() {
  capture tcpdump -i lo -U -w "$OUT/$1" "$PROXY_ONLY"
  sleep 1
}

# sipp with the options every run below shares: fails on any unexpected
# message or after $SIPP_TIMEOUT (30 s; -timeout_error), errors to $T.
sipp_run() {
  local label=$1
  shift
  sipp "$@" -bind_local -nostdin -timeout "${SIPP_TIMEOUT:-30s}" -timeout_error \
    -trace_err -error_file "$T/sipp_$label.err" >/dev/null
}

# Stops the proxy started last.
stop_proxy() {
  kill "$proxy"
  wait "$proxy" 2>/dev/null || true
  proxy=""
}

if want base; then
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
fi

# --- 4. lua/pstn.lua: the PSTN gateway config ---------------------------------
# The proxy on 127.0.0.1:5060, the gateway (a sipp) on 127.0.0.2:5060 and
# trusted, alice's phone on 127.0.0.1:5061, a probe on 127.0.0.1:5063.
if want pstn; then
  DB="sqlite://$T/pstn.db"
  "$SERLUA" domain add example.com --db "$DB"
  "$SERLUA" domain add 127.0.0.1 --db "$DB"
  "$SERLUA" trusted add 127.0.0.2 any --db "$DB"
  "$SERLUA" user add alice@example.com alice-secret --db "$DB"
  SERLUA_ADDRESS=127.0.0.1:5060 SERLUA_PSTN_GATEWAY=127.0.0.2 SERLUA_PORTS=35000-35099 \
    "$SERLUA" run lua/pstn.lua --db "$DB" --ctl "$T/pstn.ctl" >"$T/pstn.log" 2>&1 &
  proxy=$!
  sleep 1
  alice_call=(-s 12125551234 -au alice -ap alice-secret -key caller alice -key domain example.com
    -key via_ip 127.0.0.1 -key sdp_ip 127.0.0.1 -key media_a 40000)

  # alice calls 1 + 10 digits: 407, then with credentials to the gateway.
  capture_proxy pstn_call.pcap
  sipp_run gw -sf tests/sipp/lua_gw.xml -i 127.0.0.2 -p 5060 -m 1 -key out_dir "$T" &
  gw=$!
  sleep 0.5
  sipp_run alice -sf tests/sipp/lua_uac.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -m 1 "${alice_call[@]}" \
    -key out_dir "$T" -key reinvite 0 -d 500
  wait "$gw"
  stop_captures

  # Toll fraud and open relay probes: INVITEs without credentials.
  capture_proxy pstn_unauth.pcap
  sipp_run probe1 -sf tests/sipp/lua_probe.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5063 -m 1 \
    -key ruri sip:12125551234@example.com -key from sip:alice@example.com -key route none
  stop_captures
  capture_proxy pstn_foreign.pcap
  sipp_run probe2 -sf tests/sipp/lua_probe.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5063 -m 1 \
    -key ruri sip:0114420794960@127.0.0.2:5060 -key from sip:mallory@evil.example -key route none
  stop_captures
  capture_proxy pstn_preloaded_route.pcap
  sipp_run probe3 -sf tests/sipp/lua_probe.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5063 -m 1 \
    -key ruri sip:2125551234@127.0.0.2 -key from sip:alice@example.com -key route 'sip:127.0.0.1:5060;lr'
  stop_captures

  # alice registers; the gateway calls her, unchallenged.
  capture_proxy pstn_gateway_in.pcap
  sipp_run alice_reg -sf tests/sipp/lua_reg.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -m 1 \
    -s alice -au alice -ap alice-secret -key domain example.com -key nat_ip 127.0.0.1
  sipp_run alice_uas -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5061 -m 1 &
  uas=$!
  sleep 0.5
  sipp_run gw_uac -sf tests/sipp/uac.xml 127.0.0.1:5060 -i 127.0.0.2 -p 5060 -m 1 -s alice -d 500
  wait "$uas"
  stop_captures

  # alice calls 1 + 10 digits, the gateway rings and never answers: 45 s
  # later the proxy cancels it and answers alice 408.
  capture_proxy pstn_ring_no_answer.pcap
  SIPP_TIMEOUT=70s sipp_run gw_ring -sf tests/sipp/cancel_uas.xml -i 127.0.0.2 -p 5060 -m 1 &
  gw=$!
  sleep 0.5
  SIPP_TIMEOUT=70s sipp_run alice_408 -sf tests/sipp/lua_noanswer.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -m 1 \
    "${alice_call[@]}"
  wait "$gw"
  stop_captures
  stop_proxy
fi

# --- 5, 6. lua/nat_mediaproxy.lua and lua/nat_rtpproxy.lua: NAT traversal --------
# The proxy on 127.0.0.1:5060; alice (public) on 127.0.0.1:5061; bob on
# 127.0.0.1:5062 looking NATed: his Via, Contact and SDP say 192.168.1.20.
for script in nat_mediaproxy nat_rtpproxy; do
  want "$script" || continue
  DB="sqlite://$T/$script.db"
  "$SERLUA" user add alice@example.com alice-secret --db "$DB"
  "$SERLUA" user add bob@example.com bob-secret --db "$DB"
  SERLUA_ADDRESS=127.0.0.1:5060 SERLUA_PORTS=35000-35099 \
    "$SERLUA" run "lua/$script.lua" --db "$DB" --ctl "$T/$script.ctl" >"$T/$script.log" 2>&1 &
  proxy=$!
  sleep 1
  mkdir -p "$T/$script"

  # bob (NATed) and alice register with digest auth.
  capture_proxy "${script}_register.pcap"
  sipp_run bob_reg -sf tests/sipp/lua_reg.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5062 -m 1 \
    -s bob -au bob -ap bob-secret -key domain example.com -key nat_ip 192.168.1.20
  sipp_run alice_reg -sf tests/sipp/lua_reg.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -m 1 \
    -s alice -au alice -ap alice-secret -key domain example.com -key nat_ip 127.0.0.1
  stop_captures

  # alice calls bob (a NATed callee), then hangs up.
  capture_proxy "${script}_call.pcap"
  sipp_run bob_uas -sf tests/sipp/lua_uas.xml -i 127.0.0.1 -p 5062 -m 1 \
    -s bob -key nat_ip 192.168.1.20 -key media_b 40002 -key out_dir "$T/$script" &
  uas=$!
  sleep 0.5
  sipp_run alice_uac -sf tests/sipp/lua_uac.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5061 -m 1 \
    -s bob -au alice -ap alice-secret -key caller alice -key domain example.com -key via_ip 127.0.0.1 \
    -key sdp_ip 127.0.0.1 -key media_a 40000 -key out_dir "$T/$script" -key reinvite 0 -d 500
  wait "$uas"
  stop_captures

  # bob (a NATed caller) calls alice, re-INVITEs, hangs up.
  capture_proxy "${script}_call_nated_caller.pcap"
  sipp_run alice_uas -sf tests/sipp/lua_uas.xml -i 127.0.0.1 -p 5061 -m 1 \
    -s alice -key nat_ip 127.0.0.1 -key media_b 40002 -key out_dir "$T/$script" &
  uas=$!
  sleep 0.5
  sipp_run bob_uac -sf tests/sipp/lua_uac.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5062 -m 1 \
    -s alice -au bob -ap bob-secret -key caller bob -key domain example.com -key via_ip 192.168.1.20 \
    -key sdp_ip 192.168.1.20 -key media_a 40000 -key out_dir "$T/$script" -key reinvite 1 -d 500
  wait "$uas"
  stop_captures
  stop_proxy
done

chmod 644 "$OUT"/*.pcap "$OUT"/*.pcapng
for f in "$OUT"/*.pcap "$OUT"/*.pcapng; do
  echo "$f: $(tcpdump -r "$f" 2>/dev/null | wc -l) packets"
done
