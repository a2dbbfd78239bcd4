-- benches/kamailio-nat-media-kemi.lua: the routing of
-- tests/scripts/nat_media.lua as a Kamailio KEMI Lua script (app_lua),
-- loaded by benches/kamailio-nat-media-kemi.cfg; rtpengine is the media
-- relay. Same routes as the native benches/kamailio-nat-media.cfg; see there.

local MEDIA = "replace-origin replace-session-connection"

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  -- A caller behind NAT: reply to where it really is (RFC 3581).
  if KSR.nathelper.nat_uac_test(19) > 0 then
    KSR.force_rport()
    KSR.setflag(6)
  end
  if not KSR.is_REGISTER() then
    KSR.rr.record_route()
  end
  if KSR.is_BYE() or KSR.is_CANCEL() then
    KSR.rtpengine.rtpengine_delete0()
  end
  if KSR.rr.loose_route() > 0 then
    route_1()
    return
  end
  if not KSR.is_myself_ruri() then
    KSR.sl.sl_send_reply(403, "Relaying Denied")
    return
  end
  if KSR.is_ACK() then
    return
  elseif KSR.is_REGISTER() then
    route_2()
    return
  elseif KSR.is_INVITE() then
    route_3()
    return
  end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "User Not Found")
    return
  end
  route_1()
end

function route_1()
  KSR.tm.t_on_reply("ksr_onreply_route_1")
  if KSR.tm.t_relay() < 0 then
    if KSR.isflagset(6) then
      KSR.rtpengine.rtpengine_delete0()
    end
    KSR.sl.sl_reply_error()
  end
end

function route_2()
  if KSR.isflagset(6) then
    KSR.nathelper.fix_nated_register()
    KSR.setbflag(6)
  end
  if KSR.registrar.save("location", 0) < 0 then
    KSR.sl.sl_reply_error()
  end
end

function route_3()
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "User Not Found")
    return
  end
  if KSR.isbflagset(6) then
    KSR.setflag(6)
  end
  route_4()
  route_1()
end

function route_4()
  if KSR.isflagset(6) then
    KSR.nathelper.fix_nated_contact()
    KSR.rtpengine.rtpengine_manage(MEDIA)
  end
end

function ksr_onreply_route_1()
  local status = KSR.kx.get_status()
  if KSR.isflagset(6) and (status == 180 or status == 183 or (status >= 200 and status < 300)) then
    KSR.rtpengine.rtpengine_manage(MEDIA)
  end
  if KSR.nathelper.nat_uac_test(1) > 0 then
    KSR.nathelper.fix_nated_contact()
  end
end
