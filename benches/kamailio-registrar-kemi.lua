-- benches/kamailio-registrar-kemi.lua: the routing of
-- tests/scripts/registrar.lua as a Kamailio KEMI Lua script (app_lua),
-- loaded by benches/kamailio-registrar-kemi.cfg. Same routes as the
-- native benches/kamailio-registrar.cfg; see there.

-- Sanity checks, record-route, loose routing, call type processing.
function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.kx.get_msglen() > 4096 then
    KSR.sl.sl_send_reply(513, "Message Overflow")
    return
  end
  if not KSR.is_REGISTER() then
    KSR.rr.record_route()
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
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "User Not Found")
    return
  end
  route_1()
end

-- Default message handler.
function route_1()
  if KSR.tm.t_relay() < 0 then
    KSR.sl.sl_reply_error()
  end
end

-- REGISTER handler. KEMI has no www_authorize/www_challenge: auth_check
-- (flags 0: no identity check, check_to() does that next) and
-- auth_challenge (401 for a REGISTER; flags 0: no qop) are the same checks.
function route_2()
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

-- INVITE handler.
function route_3()
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "User Not Found")
    return
  end
  route_1()
end
