-- lua/nat_rtpproxy.lua — the reference's "Handling of NAT using RTPproxy"
-- ser.cfg (SER Getting Started), ported route for route.
--
-- Phones register with digest authentication; nathelper finds phones
-- behind NAT (nat_uac_test), keeps their NAT bindings open and reaches
-- them at the address their packets came from; their media go through the
-- relay (force_rtp_proxy). serlua's relay runs inside the proxy: there is
-- no rtpproxy daemon to start and no rtpproxy_sock to configure.
--
-- What the excerpt of the reference cuts, and is reconstructed here from
-- its numbered notes (1–26) and the SER nathelper/registrar docs: the
-- module parameters, the main route, route[1] and the start of the
-- REGISTER handler route[2] (marked "reconstructed" below). Known gap
-- kept from the reference: a request for another domain is relayed
-- without authentication (`uri!=myself` below; lua/pstn.lua closes it).
--
-- Set-up: `serlua user add alice@example.com secret` for each phone, then
-- `serlua run lua/nat_rtpproxy.lua`. See examples/README.md.

-- ---------------------------------------------------------------------
-- Edit these: the reference's "# INSERT YOUR IP ADDRESS HERE" lines.
-- (The environment overrides them; the tests use that.)
-- ---------------------------------------------------------------------
-- The proxy's public address and SIP port: it listens here and the relay
-- announces this IP in SDP (the reference's rtpproxy must listen on a
-- public address for the same reason).
local ADDRESS = os.getenv("SERLUA_ADDRESS") or "192.0.2.13:5060"
-- The SIP domain of the users (their AOR is user@DOMAIN).
local DOMAIN = os.getenv("SERLUA_DOMAIN") or "example.com"

-- ---------------------------------------------------------------------
-- Core parameters
-- ---------------------------------------------------------------------
debug = 3
-- fork=yes and log_stderror=no (notes 1, 2) served the reference's init.d
-- script; under systemd (examples/serlua.service) serlua stays in the
-- foreground and logs to stderr. Set fork = true to detach instead.
listen = os.getenv("SERLUA_LISTEN") or ("udp:" .. ADDRESS)
alias = { DOMAIN } -- uri==myself also covers the domain
children = 4

-- ---------------------------------------------------------------------
-- Module parameters (reconstructed from notes 6–9)
-- ---------------------------------------------------------------------
modparam("nathelper", "natping_interval", 30) -- most NATs forget a binding after a minute or two
modparam("nathelper", "ping_nated_only", 1) -- phones with public addresses need no keepalive
modparam("registrar", "nat_flag", 6) -- save() remembers a NATed phone, lookup() sets flag 6 again
-- Where rtpproxy_sock pointed at the daemon: serlua's own relay, or
-- "ng:udp:HOST:PORT" for rtpengine or `serlua relay` on another machine.
modparam("rtpproxy", "relay", os.getenv("SERLUA_RELAY") or "embedded")
modparam("rtpproxy", "rtp_ports", os.getenv("SERLUA_PORTS") or "35000-65000")

function route.main()
  -- -----------------------------------------------------------------
  -- Sanity Check Section (reconstructed)
  -- -----------------------------------------------------------------
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if msg.len > max_len then
    sl_send_reply(513, "Message Overflow")
    return
  end

  -- -----------------------------------------------------------------
  -- Record Route Section (reconstructed)
  -- -----------------------------------------------------------------
  if msg.method ~= "REGISTER" then
    record_route()
  end

  -- -----------------------------------------------------------------
  -- Call Tear Down Section (reconstructed, note 10)
  -- -----------------------------------------------------------------
  if msg.method == "BYE" or msg.method == "CANCEL" then
    unforce_rtp_proxy()
  end

  -- -----------------------------------------------------------------
  -- Loose Route Section (reconstructed, note 11)
  -- -----------------------------------------------------------------
  if loose_route() then
    -- A re-INVITE (or the ACK answering one) keeps the media of a
    -- relayed call on the relay, whichever side sends it: "l" only
    -- touches calls the relay already has, so it stays outside the NAT
    -- test. Kept from the reference: the answer goes through the relay
    -- only when flag 6 is set, i.e. when this re-INVITE's sender is
    -- NATed (examples/README.md shows the fix for a public sender).
    if has_totag() and (msg.method == "INVITE" or msg.method == "ACK") then
      if nat_uac_test(19) then
        setflag(6)
        force_rport()
        fix_nated_contact()
      end
      force_rtp_proxy("l")
    end
    route[1]()
    return
  end

  -- -----------------------------------------------------------------
  -- Call Type Processing Section (reconstructed)
  -- -----------------------------------------------------------------
  if not is_myself(msg.ruri) then
    route[4]()
    route[1]()
    return
  end

  if msg.method == "ACK" then
    route[1]()
    return
  elseif msg.method == "CANCEL" then
    -- tm matches a CANCEL to its INVITE by itself (note 12).
    route[1]()
    return
  elseif msg.method == "INVITE" then
    route[3]()
    return
  elseif msg.method == "REGISTER" then
    route[2]()
    return
  end

  lookup("aliases")
  if not is_myself(msg.ruri) then
    route[4]()
    route[1]()
    return
  end

  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end

  route[1]()
end

route[1] = function()
  -- -----------------------------------------------------------------
  -- Default Message Handler (reconstructed, notes 15, 16)
  -- -----------------------------------------------------------------
  t_on_reply("1")
  if not t_relay() then
    -- Nothing was sent: give back the relay ports set up for this call.
    if msg.method == "INVITE" and isflagset(6) then
      unforce_rtp_proxy()
    end
    sl_reply_error()
  end
end

route[2] = function()
  -- -----------------------------------------------------------------
  -- REGISTER Message Handler
  -- -----------------------------------------------------------------
  -- (reconstructed, note 17:) "Contact: *" unregisters everything and
  -- says nothing about NAT. A NATed phone's binding keeps the address its
  -- packets came from (flag 6 = nat_flag); its Contact stays as sent.
  -- 19 = 16 source port differs from Via + 2 source IP differs from Via
  -- + 1 private Contact.
  if not search("^Contact:[ ]*\\*") and nat_uac_test(19) then
    setflag(6)
    fix_nated_register()
    force_rport()
  end

  -- (from here on, the reference's own lines)
  if not www_authorize("", "subscriber") then
    www_challenge("", "0")
    return
  end
  if not check_to() then
    sl_send_reply(401, "Unauthorized")
    return
  end
  consume_credentials()
  if not save("location") then
    sl_reply_error()
  end
end

route[3] = function()
  -- -----------------------------------------------------------------
  -- INVITE Message Handler
  -- -----------------------------------------------------------------
  if not proxy_authorize("", "subscriber") then
    proxy_challenge("", "0")
    return
  elseif not check_from() then
    sl_send_reply(403, "Use From=ID")
    return
  end
  consume_credentials()

  -- A NATed caller (note 18); a NATed callee's binding sets the same
  -- flag in lookup("location") below.
  if nat_uac_test(19) then
    setflag(6)
  end

  lookup("aliases")
  if not is_myself(msg.ruri) then
    route[4]()
    route[1]()
    return
  end

  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  route[4]()
  route[1]()
end

route[4] = function()
  -- -----------------------------------------------------------------
  -- NAT Traversal Section
  -- -----------------------------------------------------------------
  -- Either end NATed: replies go back where the caller sent from, its
  -- Contact names its public address, and the offer goes through the
  -- relay (note 22).
  if isflagset(6) then
    force_rport()
    fix_nated_contact()
    force_rtp_proxy()
  end
end

onreply_route[1] = function()
  -- The answer of a relayed call goes through the relay too; the flags of
  -- the request are still set here (note 24). Only a reply with a body
  -- carries SDP to rewrite.
  if isflagset(6) and regex_match(msg.status, "(180)|(183)|2[0-9][0-9]") then
    if not search("^Content-Length:[ ]*0") then
      force_rtp_proxy()
    end
  end
  -- A NATed callee's Contact names its public address (note 26).
  if nat_uac_test(1) then
    fix_nated_contact()
  end
end
