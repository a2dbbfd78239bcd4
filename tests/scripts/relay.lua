-- tests/scripts/relay.lua: the stateful relay used by the end-to-end tests
-- (tests/e2e.rs) and the benchmark (benches/relay.sh).
-- The harness chooses addresses and timers through environment variables:
--   SERLUA_LISTEN       listen address, default udp:127.0.0.1:5060
--   SERLUA_NEXT_HOP     host:port every new request is relayed to, default 127.0.0.1:5070
--   SERLUA_FR_TIMER     tm fr_timer in seconds, default 30
--   SERLUA_INV_TIMEOUT  when set, per-transaction INVITE timeout (inv_timeout AVP), seconds
--   SERLUA_CHILDREN     worker count, default 2
local next_hop = os.getenv("SERLUA_NEXT_HOP") or "127.0.0.1:5070"

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
children = tonumber(os.getenv("SERLUA_CHILDREN") or "2")
max_len = 4096
modparam("tm", "fr_timer", tonumber(os.getenv("SERLUA_FR_TIMER") or "30"))

function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  if msg.len > max_len then sl_send_reply(513, "Message Overflow"); return end
  if msg.method ~= "REGISTER" then record_route() end
  if loose_route() then route[1](); return end
  if os.getenv("SERLUA_INV_TIMEOUT") and msg.method == "INVITE" then avp_write("i:" .. os.getenv("SERLUA_INV_TIMEOUT"), "inv_timeout") end
  rewritehostport(next_hop)
  route[1]()
end

route[1] = function()
  if not t_relay() then sl_reply_error() end
end
