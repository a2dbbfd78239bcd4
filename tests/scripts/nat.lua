-- tests/scripts/nat.lua: a registrar + proxy for clients behind NAT, in the
-- shape of the reference's RTPproxy ser.cfg without auth or media: NATed
-- REGISTERs keep their source address (nat_uac_test, fix_nated_register),
-- NATed INVITEs get their Contact fixed, and registered NATed clients get
-- keepalives (natping). Used by tests/e2e_nat.rs.
--
-- The harness chooses through environment variables:
--   SERLUA_LISTEN            listen address, default udp:127.0.0.1:5060
--   SERLUA_NATPING_INTERVAL  nathelper natping_interval in seconds, default 30
--   SERLUA_SIPPING_METHOD    when set, request pings with this method
--   SERLUA_CHILDREN          worker count, default 2

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
children = tonumber(os.getenv("SERLUA_CHILDREN") or "2")

modparam("nathelper", "natping_interval", tonumber(os.getenv("SERLUA_NATPING_INTERVAL") or "30"))
modparam("nathelper", "ping_nated_only", 1)
if os.getenv("SERLUA_SIPPING_METHOD") then
  modparam("nathelper", "sipping_method", os.getenv("SERLUA_SIPPING_METHOD"))
end

function route.main()
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if msg.method ~= "REGISTER" then record_route() end
  if loose_route() then
    route[1]()
    return
  end
  if msg.method == "REGISTER" then
    route[2]()
    return
  end
  if msg.method == "ACK" then return end
  if msg.method == "CANCEL" then
    route[1]()
    return
  end
  if msg.method == "INVITE" and nat_uac_test(19) then
    setflag(7)
    force_rport()
    fix_nated_contact()
  end
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  -- The tests only ever talk over loopback: a lookup that would send to a
  -- registered private Contact instead of the address it registered from
  -- is refused here rather than sent off the machine.
  if not regex_match(msg.dst_uri or msg.ruri, "^sip:([^@]*@)?127\\.0\\.0\\.1(:|;|$)") then
    sl_send_reply(500, "Not Loopback")
    return
  end
  route[1]()
end

route[1] = function()
  if not t_relay() then sl_reply_error() end
end

route[2] = function()
  if nat_uac_test(19) then
    setflag(6)
    fix_nated_register()
  end
  if not save("location") then sl_reply_error() end
end
