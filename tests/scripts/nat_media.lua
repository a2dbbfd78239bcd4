-- tests/scripts/nat_media.lua: NAT traversal with the media relay, in the
-- shape of the reference's rtpproxy ser.cfg (route[2] REGISTER, route[3]
-- INVITE, route[4] NAT section, onreply_route[1]) without digest auth, so
-- that tests/e2e_media.rs exercises only the NAT and media parts.
--
-- Environment (set by the harness):
--   SERLUA_LISTEN   listen address, default udp:127.0.0.1:5060
--   SERLUA_RELAY    modparam("rtpproxy", "relay", …), default embedded
--   SERLUA_PORTS    modparam("rtpproxy", "rtp_ports", …), default 35000-35999

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
alias = { "example.com" }
children = 2
debug = tonumber(os.getenv("SERLUA_DEBUG") or "3")

modparam("registrar", "nat_flag", 6)
modparam("rtpproxy", "relay", os.getenv("SERLUA_RELAY") or "embedded")
modparam("rtpproxy", "rtp_ports", os.getenv("SERLUA_PORTS") or "35000-35999")

function route.main()
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  -- A caller behind NAT: reply to where it really is (RFC 3581).
  if nat_uac_test(19) then
    force_rport()
    setflag(6)
  end
  if msg.method ~= "REGISTER" then
    record_route()
  end
  if msg.method == "BYE" or msg.method == "CANCEL" then
    unforce_rtp_proxy()
  end
  if loose_route() then
    route[1]()
    return
  end
  if not is_myself(msg.ruri) then
    sl_send_reply(403, "Relaying Denied")
    return
  end
  if msg.method == "ACK" then
    return
  elseif msg.method == "REGISTER" then
    route[2]()
    return
  elseif msg.method == "INVITE" then
    route[3]()
    return
  end
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  route[1]()
end

route[1] = function()
  t_on_reply("1")
  if not t_relay() then
    if isflagset(6) then
      unforce_rtp_proxy()
    end
    sl_reply_error()
  end
end

route[2] = function()
  -- The Contact URI stays as the phone wrote it; the source address is
  -- kept as the binding's received (reference note 32).
  if isflagset(6) then
    fix_nated_register()
  end
  if not save("location") then
    sl_reply_error()
  end
end

route[3] = function()
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  route[4]()
  route[1]()
end

route[4] = function()
  -- NAT traversal: either end behind NAT (flag 6 from nat_uac_test, or
  -- from a binding saved with the NAT flag) relays the media.
  if isflagset(6) then
    fix_nated_contact()
    force_rtp_proxy()
  end
end

onreply_route[1] = function()
  if isflagset(6) and (msg.status == 180 or msg.status == 183 or (msg.status >= 200 and msg.status < 300)) then
    force_rtp_proxy()
  end
  if nat_uac_test(1) then
    fix_nated_contact()
  end
end
