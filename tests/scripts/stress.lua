-- tests/scripts/stress.lua: the stateful relay of relay.lua with the
-- faults the reliability tests (tests/e2e_reliability.rs) and benches
-- (benches/overload.sh, benches/flood.sh) inject, each off unless its
-- variable is set:
--   SERLUA_LISTEN       listen address, default udp:127.0.0.1:5060
--   SERLUA_LISTEN_TCP   a TCP listen address as well
--   SERLUA_NEXT_HOP     host:port new requests are relayed to, default 127.0.0.1:5070
--   SERLUA_CHILDREN     workers, default 2
--   SERLUA_FR_TIMER     tm fr_timer, seconds (default 30)
--   SERLUA_INV_TIMEOUT  per-INVITE timeout before any reply (inv_timeout AVP), seconds
--   SERLUA_COST_MS      CPU milliseconds burnt on every new INVITE: a route
--                       with a real cost (database, HTTP) that makes the proxy
--                       saturate at a rate sipp can offer twice over
--   SERLUA_FAIL_HEADER  a request carrying this header makes the route fail
--                       with a Lua error (the core answers 500)
--   SERLUA_RELAY        modparam("rtpproxy", "relay", …): new INVITEs and
--                       their answers go through force_rtp_proxy(); the
--                       outcome is added as X-Media: relayed|failed
--   SERLUA_HTTP         http_listen (metrics)
local next_hop = os.getenv("SERLUA_NEXT_HOP") or "127.0.0.1:5070"
local cost = tonumber(os.getenv("SERLUA_COST_MS") or "0") / 1000
local fail_header = os.getenv("SERLUA_FAIL_HEADER")
local media = os.getenv("SERLUA_RELAY")

listen = { os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060" }
if os.getenv("SERLUA_LISTEN_TCP") then
  listen[2] = os.getenv("SERLUA_LISTEN_TCP")
end
children = tonumber(os.getenv("SERLUA_CHILDREN") or "2")
http_listen = os.getenv("SERLUA_HTTP")
modparam("tm", "fr_timer", tonumber(os.getenv("SERLUA_FR_TIMER") or "30"))
if media then
  modparam("rtpproxy", "relay", media)
end

local function burn(seconds)
  local t = os.clock()
  while os.clock() - t < seconds do end
end

function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  if msg.len > max_len then sl_send_reply(513, "Message Overflow"); return end
  if fail_header and msg:header(fail_header) then
    error("injected failure (" .. fail_header .. ")")
  end
  record_route()
  if loose_route() then route[1](); return end
  if msg.method == "INVITE" then
    if cost > 0 then burn(cost) end
    if os.getenv("SERLUA_INV_TIMEOUT") then avp_write("i:" .. os.getenv("SERLUA_INV_TIMEOUT"), "inv_timeout") end
    if media then
      append_hf("X-Media: " .. (force_rtp_proxy() and "relayed" or "failed") .. "\r\n")
      t_on_reply("media")
    end
  end
  rewritehostport(next_hop)
  route[1]()
end

route[1] = function()
  if not t_relay() then sl_reply_error() end
end

onreply_route.media = function()
  if msg.status == 200 and msg.body ~= "" then
    append_hf("X-Media: " .. (force_rtp_proxy() and "relayed" or "failed") .. "\r\n")
  end
end
