-- lua/nat_mediaproxy.lua — the reference's "Handling of NAT using
-- Mediaproxy" ser.cfg (SER Getting Started), ported route for route.
--
-- Phones register with digest authentication; phones behind NAT are found
-- out (client_nat_test), reached at the address their packets came from,
-- and their media go through the relay (use_media_proxy). serlua's relay
-- runs inside the proxy: there is no mediaproxy daemon to start.
--
-- Reconstructed: the excerpt of the reference keeps this config's
-- numbered notes (31–46), not its lines. route[2], route[3], route[4] and
-- onreply_route[1] follow those notes step by step, in the words of the
-- PSTN config of the next chapter, which repeats this one with PSTN
-- handling added; the parameters, the main route and route[1] are that
-- config's without the PSTN parts (`uri==myself` where it has
-- is_uri_host_local(), no allow_trusted()), checked against the SER
-- module docs. Known gap kept from the reference: a request for another
-- domain is relayed without authentication (lua/pstn.lua closes it).
--
-- Set-up: `serlua user add alice@example.com secret` for each phone, then
-- `serlua run lua/nat_mediaproxy.lua`. See examples/README.md.

-- ---------------------------------------------------------------------
-- Edit these: the reference's "# INSERT YOUR IP ADDRESS HERE" lines.
-- (The environment overrides them; the tests use that.)
-- ---------------------------------------------------------------------
-- The proxy's public address and SIP port: Record-Route points here and
-- the relay announces this IP in SDP.
local ADDRESS = os.getenv("SERLUA_ADDRESS") or "192.0.2.13:5060"
-- The SIP domain of the users (their AOR is user@DOMAIN).
local DOMAIN = os.getenv("SERLUA_DOMAIN") or "example.com"

-- ---------------------------------------------------------------------
-- Core parameters (reconstructed)
-- ---------------------------------------------------------------------
debug = 3
listen = os.getenv("SERLUA_LISTEN") or ("udp:" .. ADDRESS)
alias = { DOMAIN } -- uri==myself also covers the domain
children = 4
-- The reference's fork=yes / log_stderror=no served its init.d script;
-- under systemd (examples/serlua.service) serlua stays in the foreground.

-- ---------------------------------------------------------------------
-- Module parameters (reconstructed)
-- ---------------------------------------------------------------------
modparam("registrar", "nat_flag", 6) -- save() remembers a NATed phone, lookup() sets flag 6 again
modparam("mediaproxy", "natping_interval", 30) -- keep NAT bindings open; mediaproxy did it itself
-- serlua's own relay instead of mediaproxy_socket; "ng:udp:HOST:PORT"
-- drives rtpengine or `serlua relay` elsewhere.
modparam("mediaproxy", "relay", os.getenv("SERLUA_RELAY") or "embedded")
modparam("mediaproxy", "rtp_ports", os.getenv("SERLUA_PORTS") or "35000-65000")

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
  if msg.method == "INVITE" and client_nat_test(3) then
    -- Marks the dialog as NATed: its in-dialog requests carry nat=yes.
    record_route_preset(ADDRESS .. ";nat=yes")
  elseif msg.method ~= "REGISTER" then
    record_route()
  end

  -- -----------------------------------------------------------------
  -- Call Tear Down Section (reconstructed)
  -- -----------------------------------------------------------------
  if msg.method == "BYE" or msg.method == "CANCEL" then
    end_media_session()
  end

  -- -----------------------------------------------------------------
  -- Loose Route Section (reconstructed)
  -- -----------------------------------------------------------------
  if loose_route() then
    -- A re-INVITE of a NATed dialog keeps its relay. ser.cfg searched
    -- for "^Route:.*;nat=yes", but loose_route() has already removed our
    -- Route here (serlua edits are visible at once): check_route_param
    -- reads what it removed. Kept from the reference: only a NATed
    -- caller marks the dialog, so a re-INVITE from a public caller to a
    -- NATed callee is not relayed (examples/README.md shows the fix).
    if msg.method == "INVITE" and (client_nat_test(3) or check_route_param("nat=yes")) then
      setflag(6)
      use_media_proxy()
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
  -- Default Message Handler (reconstructed)
  -- -----------------------------------------------------------------
  t_on_reply("1")
  if not t_relay() then
    -- Nothing was sent: give back the relay ports set up for this call.
    if msg.method == "INVITE" or msg.method == "ACK" then
      end_media_session()
    end
    sl_reply_error()
  end
end

route[2] = function()
  -- -----------------------------------------------------------------
  -- REGISTER Message Handler (reconstructed)
  -- -----------------------------------------------------------------
  sl_send_reply(100, "Trying")
  -- "Contact: *" unregisters everything and says nothing about NAT
  -- (note 31). A NATed phone's binding keeps the address its packets
  -- came from (flag 6 = nat_flag), its Contact stays as sent (note 32:
  -- fix_nated_contact here would break phones that check the 200).
  if not search("^Contact:[ ]*\\*") and client_nat_test(7) then
    setflag(6)
    fix_nated_register()
    force_rport()
  end

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
  -- INVITE Message Handler (reconstructed)
  -- -----------------------------------------------------------------
  -- The caller is NATed (note 34): flag 7, reply to where it sent
  -- from, and its Contact names its public address.
  if client_nat_test(3) then
    setflag(7)
    force_rport()
    fix_nated_contact()
  end

  if not proxy_authorize("", "subscriber") then
    proxy_challenge("", "0")
    return
  elseif not check_from() then
    sl_send_reply(403, "Use From=ID")
    return
  end
  consume_credentials()

  lookup("aliases")
  if not is_myself(msg.ruri) then
    route[4]()
    route[1]()
    return
  end

  -- A NATed callee's binding sets flag 6 here (nat_flag, note 39).
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end

  route[4]()
  route[1]()
end

route[4] = function()
  -- -----------------------------------------------------------------
  -- NAT Traversal Section (reconstructed)
  -- -----------------------------------------------------------------
  -- Relay when either end is NATed (7 caller, 6 callee), once per
  -- message: flag 8 guards against rewriting the SDP twice (note 42).
  if isflagset(6) or isflagset(7) then
    if not isflagset(8) then
      setflag(8)
      use_media_proxy()
    end
  end
end

onreply_route[1] = function()
  -- (reconstructed) The callee's answer goes through the relay too; the
  -- flags of the request are still set here (note 44). Only a reply with
  -- a body carries SDP to rewrite (note 45).
  if (isflagset(6) or isflagset(7)) and regex_match(msg.status, "(180)|(183)|2[0-9][0-9]") then
    if not search("^Content-Length:[ ]*0") then
      use_media_proxy()
    end
  end
  -- A NATed callee's Contact names its public address (note 46).
  if client_nat_test(1) then
    fix_nated_contact()
  end
end
