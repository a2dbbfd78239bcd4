-- tests/scripts/transport.lua: a record-routing stateful relay for the
-- transport end-to-end tests (tests/e2e.rs g–l): TCP, IPv6, several listen
-- sockets, a UAC and a UAS on different transports (double Record-Route).
-- The harness chooses addresses and timers through environment variables:
--   SERLUA_LISTEN      listen entries, separated by commas,
--                      e.g. "udp:127.0.0.1:5060,tcp:127.0.0.1:5060"
--   SERLUA_NEXT_HOP    host:port new requests are relayed to (IPv6 bracketed:
--                      "[::1]:5070"), default 127.0.0.1:5070
--   SERLUA_NEXT_PROTO  transport towards the next hop: "udp", "tcp", or
--                      "same" (the transport the request arrived on, default)
--   SERLUA_CHILDREN    worker count, default 2
--   SERLUA_DOUBLE_RR   modparam rr enable_double_rr, default 1
--   SERLUA_FR_TIMER    tm fr_timer in seconds, default 30
-- OPTIONS are answered 200 by the proxy itself (a liveness probe); OPTIONS
-- with Max-Forwards: 0 get 483, like every request.
local next_hop = os.getenv("SERLUA_NEXT_HOP") or "127.0.0.1:5070"
local next_proto = os.getenv("SERLUA_NEXT_PROTO") or "same"

local socks = {}
for entry in string.gmatch(os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060", "[^,]+") do
  socks[#socks + 1] = entry
end
listen = socks
children = tonumber(os.getenv("SERLUA_CHILDREN") or "2")
max_len = 4096
modparam("rr", "enable_double_rr", tonumber(os.getenv("SERLUA_DOUBLE_RR") or "1"))
modparam("tm", "fr_timer", tonumber(os.getenv("SERLUA_FR_TIMER") or "30"))

-- Requests for the next hop go by the configured transport. sipp's UAS
-- (tests/sipp/uas.xml) puts no ;transport=tcp in its Contact even when it
-- listens on TCP only, so the script also forces the transport of in-dialog
-- requests addressed to it, as a Kamailio admin would with $du.
local function to_next_hop()
  local proto = next_proto
  if proto == "same" then proto = msg.proto end
  if proto == "tcp" then msg.dst_uri = "sip:" .. next_hop .. ";transport=tcp" end
end

function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  if msg.len > max_len then sl_send_reply(513, "Message Overflow"); return end
  if msg.method == "OPTIONS" then sl_send_reply(200, "OK"); return end
  if msg.method ~= "REGISTER" then record_route() end
  if loose_route() then
    if string.find(msg.ruri, "@" .. next_hop, 1, true) then to_next_hop() end
    route[1]()
    return
  end
  rewritehostport(next_hop)
  to_next_hop()
  route[1]()
end

route[1] = function()
  if not t_relay() then sl_reply_error() end
end
