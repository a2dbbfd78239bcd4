-- benches/kamailio-pstn-kemi.lua: the routing of lua/pstn.lua as a
-- Kamailio KEMI Lua script (app_lua), loaded by
-- benches/kamailio-pstn-kemi.cfg; rtpengine is the media relay. Same routes
-- as the native benches/kamailio-pstn.cfg; see there for the translations.

-- A #!define of the cfg (or -A on the command line), or the default.
local function def(name, default)
  local v = KSR.kx.get_def(name)
  if type(v) ~= "string" or v == "" then
    return default
  end
  return (v:gsub('"', ""))
end

-- The proxy's address for Record-Route (ADDRESS, else the socket the
-- request came in on: the same thing when it listens on one address).
local function address()
  return def("ADDRESS", nil) or (KSR.kx.get_rcvip() .. ":" .. KSR.kx.get_rcvport())
end
local PSTN_GATEWAY
local MEDIA = "replace-origin replace-session-connection"
local TEN_DIGITS = "^sip:" .. string.rep("%d", 10) .. "@"
local ONE_TEN_DIGITS = "^sip:1" .. string.rep("%d", 10) .. "@"

-- proxy_authorize("", "subscriber") or proxy_challenge; check_from();
-- consume_credentials(). False when the request was answered.
local function authenticate_caller()
  local realm = KSR.pv.get("$fd")
  if KSR.auth_db.auth_check(realm, "subscriber", 0) < 0 then
    KSR.auth.auth_challenge(realm, 0)
    return false
  elseif KSR.uri_db.check_from() < 0 then
    KSR.sl.sl_send_reply(403, "Use From=ID")
    return false
  end
  KSR.auth.consume_credentials()
  return true
end

function ksr_request_route()
  PSTN_GATEWAY = PSTN_GATEWAY or def("PSTN_GATEWAY", "192.0.2.245")
  -- Sanity Check Section
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.kx.get_msglen() > 4096 then
    KSR.sl.sl_send_reply(513, "Message Overflow")
    return
  end

  -- Record Route Section
  if KSR.is_INVITE() and KSR.nathelper.nat_uac_test(3) > 0 then
    KSR.rr.record_route_preset_one(address() .. ";nat=yes")
  elseif not KSR.is_REGISTER() then
    KSR.rr.record_route()
  end

  -- Call Tear Down Section
  if KSR.is_BYE() or KSR.is_CANCEL() then
    KSR.rtpengine.rtpengine_delete0()
  end

  -- Loose Route Section
  if KSR.rr.loose_route() > 0 then
    if (KSR.is_INVITE() or KSR.is_REFER()) and KSR.siputils.has_totag() < 0 then
      KSR.sl.sl_send_reply(403, "Forbidden")
      return
    end
    if KSR.is_INVITE() then
      if KSR.permissions.allow_trusted() < 0 then
        if not authenticate_caller() then
          return
        end
      end
      if KSR.nathelper.nat_uac_test(3) > 0 or KSR.rr.check_route_param("nat=yes") > 0 then
        KSR.setflag(6)
        KSR.rtpengine.rtpengine_manage(MEDIA)
      end
    end
    route_1()
    return
  end

  -- Call Type Processing Section
  if KSR.domain.is_uri_host_local() < 0 then
    if KSR.domain.is_from_local() > 0 or KSR.permissions.allow_trusted() > 0 then
      if KSR.permissions.allow_trusted() < 0 and not KSR.is_ACK() and not KSR.is_CANCEL() then
        if not authenticate_caller() then
          return
        end
      end
      route_4()
      route_1()
    else
      KSR.sl.sl_send_reply(403, "Forbidden")
    end
    return
  end

  if KSR.is_ACK() then
    route_1()
    return
  elseif KSR.is_CANCEL() then
    route_1()
    return
  elseif KSR.is_INVITE() then
    route_3()
    return
  elseif KSR.is_REGISTER() then
    route_2()
    return
  end

  KSR.registrar.lookup("aliases")
  if KSR.domain.is_uri_host_local() < 0 then
    route_4()
    route_1()
    return
  end

  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "User Not Found")
    return
  end

  route_1()
end

-- Default Message Handler
function route_1()
  KSR.tm.t_on_reply("ksr_onreply_route_1")
  if KSR.tm.t_relay() < 0 then
    if KSR.is_INVITE() or KSR.is_ACK() then
      KSR.rtpengine.rtpengine_delete0()
    end
    KSR.sl.sl_reply_error()
  end
end

-- REGISTER Message Handler
function route_2()
  KSR.sl.sl_send_reply(100, "Trying")
  if KSR.textops.search("^Contact:[ ]*\\*") < 0 and KSR.nathelper.nat_uac_test(7) > 0 then
    KSR.setflag(6)
    KSR.setbflag(6)
    KSR.nathelper.fix_nated_register()
    KSR.force_rport()
  end
  local realm = KSR.pv.get("$td")
  if KSR.auth_db.auth_check(realm, "subscriber", 0) < 0 then
    KSR.auth.auth_challenge(realm, 0)
    return
  end
  if KSR.uri_db.check_to() < 0 then
    KSR.sl.sl_send_reply(401, "Unauthorized")
    return
  end
  KSR.auth.consume_credentials()
  if KSR.registrar.save("location", 0) < 0 then
    KSR.sl.sl_reply_error()
  end
end

-- INVITE Message Handler
function route_3()
  if KSR.nathelper.nat_uac_test(3) > 0 then
    KSR.setflag(7)
    KSR.force_rport()
    KSR.nathelper.fix_nated_contact()
  end

  if KSR.permissions.allow_trusted() < 0 then
    if not authenticate_caller() then
      return
    end
  end

  if KSR.pv.get("$ru"):match(ONE_TEN_DIGITS) then
    KSR.pv.sets("$rU", KSR.pv.get("$rU"):sub(2))
  end

  KSR.registrar.lookup("aliases")
  if KSR.domain.is_uri_host_local() < 0 then
    route_4()
    route_1()
    return
  end

  if KSR.pv.get("$ru"):match("^sip:011%d*@") then
    route_4()
    route_5()
    return
  end

  if KSR.registrar.lookup("location") < 0 then
    if KSR.pv.get("$ru"):match(TEN_DIGITS) then
      route_4()
      route_5()
      return
    end
    KSR.sl.sl_send_reply(404, "User Not Found")
    return
  end
  if KSR.isbflagset(6) then
    KSR.setflag(6)
  end

  route_4()
  route_1()
end

-- NAT Traversal Section
function route_4()
  if KSR.isflagset(6) or KSR.isflagset(7) then
    if not KSR.isflagset(8) then
      KSR.setflag(8)
      KSR.rtpengine.rtpengine_manage(MEDIA)
    end
  end
end

-- PSTN Handler
function route_5()
  KSR.sethost(PSTN_GATEWAY)
  KSR.tm.t_set_fr_inv(45000)
  route_1()
end

function ksr_onreply_route_1()
  local status = KSR.kx.get_status()
  if (KSR.isflagset(6) or KSR.isflagset(7))
      and (status == 180 or status == 183 or (status >= 200 and status < 300)) then
    if KSR.textops.search("^Content-Length:[ ]*0") < 0 then
      KSR.rtpengine.rtpengine_manage(MEDIA)
    end
  end
  if KSR.nathelper.nat_uac_test(1) > 0 then
    KSR.nathelper.fix_nated_contact()
  end
end
