-- tests/scripts/reload.lua: the stateful relay of relay.lua, stamped with
-- a version, for the script-reload test of tests/e2e_ops.rs. The test
-- copies it to its own directory, rewrites the VERSION line for each good
-- version and swaps broken variants in at the BREAK line (a syntax error,
-- an unknown function, an undefined route), then reloads with
-- `serlua ctl reload`.
--   * every request it relays carries `X-Script-Version: VERSION`;
--   * an OPTIONS to sip:version@… is answered here: 200 "Version VERSION".
-- Environment, as relay.lua: SERLUA_LISTEN, SERLUA_NEXT_HOP, SERLUA_CHILDREN;
-- SERLUA_CTL sets ctl_socket (unset: serlua's default or --ctl).
local VERSION = "1"
local next_hop = os.getenv("SERLUA_NEXT_HOP") or "127.0.0.1:5070"

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
children = tonumber(os.getenv("SERLUA_CHILDREN") or "2")
max_len = 4096
ctl_socket = os.getenv("SERLUA_CTL")

function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  -- BREAK
  if msg.len > max_len then sl_send_reply(513, "Message Overflow"); return end
  if msg.method ~= "REGISTER" then record_route() end
  if loose_route() then route[1](); return end
  if msg.method == "OPTIONS" and regex_match(msg.ruri, "^sip:version@") then
    sl_send_reply(200, "Version " .. VERSION)
    return
  end
  append_hf("X-Script-Version: " .. VERSION .. "\r\n")
  rewritehostport(next_hop)
  route[1]()
end

route[1] = function()
  if not t_relay() then sl_reply_error() end
end
