-- lua/pstn.lua — the reference's "PSTN Gateway Connectivity" ser.cfg
-- (SER Getting Started, chapter 9), ported route for route: the
-- mediaproxy NAT config plus calls to and from a PSTN gateway.
--
-- Phones register with digest authentication and call each other as in
-- lua/nat_mediaproxy.lua. 1 + 10 digits, 011 + digits and 10 digits that
-- are nobody's registration go to the gateway; the gateway itself is
-- trusted (the `trusted` table) and never challenged; everyone else pays
-- for PSTN calls with their password (toll fraud), and requests for other
-- domains are relayed only for our own authenticated users or the gateway.
--
-- Set-up (`serlua … --db URL` for another database than serlua.db):
--   serlua domain add example.com        # every domain we serve, and the
--   serlua domain add 192.0.2.13         # proxy's IP if phones use it
--   serlua trusted add 192.0.2.245 any   # the gateway
--   serlua user add alice@example.com secret
--   serlua run lua/pstn.lua
-- See examples/README.md.
--
-- The excerpt of the reference cuts the core and module parameters; they
-- are reconstructed from its notes (1–6, 22) and the SER module docs.
-- One deliberate change, marked "beyond the reference" below: a request
-- for another domain that claims one of our users in From must
-- authenticate, or anyone could forge that From and reach the gateway by
-- its address.

-- ---------------------------------------------------------------------
-- Edit these: the reference's "# INSERT YOUR IP ADDRESS HERE" lines.
-- (The environment overrides them; the tests use that.)
-- ---------------------------------------------------------------------
-- The proxy's public address and SIP port: it listens here, Record-Route
-- points here, and the relay announces this IP in SDP.
local ADDRESS = os.getenv("SERLUA_ADDRESS") or "192.0.2.13:5060"
-- The SIP domain of the users (their AOR is user@DOMAIN). The domain
-- table decides what is local (is_uri_host_local): add it there too.
local DOMAIN = os.getenv("SERLUA_DOMAIN") or "example.com"
-- The PSTN gateway's IP address (also a row of the trusted table).
local PSTN_GATEWAY = os.getenv("SERLUA_PSTN_GATEWAY") or "192.0.2.245"

-- ---------------------------------------------------------------------
-- Core parameters
-- ---------------------------------------------------------------------
debug = 3
-- fork=yes and log_stderror=no served the reference's init.d script;
-- under systemd (examples/serlua.service) serlua stays in the foreground
-- and logs to stderr. Set fork = true to detach instead.
listen = os.getenv("SERLUA_LISTEN") or ("udp:" .. ADDRESS)
alias = { DOMAIN }
children = 4

-- ---------------------------------------------------------------------
-- Module parameters (reconstructed)
-- ---------------------------------------------------------------------
modparam("registrar", "nat_flag", 6) -- save() remembers a NATed phone, lookup() sets flag 6 again
modparam("mediaproxy", "natping_interval", 30) -- keep NAT bindings open
modparam("mediaproxy", "relay", os.getenv("SERLUA_RELAY") or "embedded")
modparam("mediaproxy", "rtp_ports", os.getenv("SERLUA_PORTS") or "35000-65000")
-- SIP-to-SIP calls ring 27 s; route[5] gives PSTN calls longer through
-- the inv_timeout AVP (notes 1, 4, 22).
modparam("tm", "fr_inv_timer", 27)
modparam("tm", "fr_inv_timer_avp", "inv_timeout")
modparam("permissions", "trusted_table", "trusted") -- the gateway's row lives there (notes 2, 6)

function route.main()
  -- -----------------------------------------------------------------
  -- Sanity Check Section
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
  -- Record Route Section
  -- -----------------------------------------------------------------
  if msg.method == "INVITE" and client_nat_test(3) then
    -- Marks the dialog as NATed: its in-dialog requests carry nat=yes.
    record_route_preset(ADDRESS .. ";nat=yes")
  elseif msg.method ~= "REGISTER" then
    record_route()
  end

  -- -----------------------------------------------------------------
  -- Call Tear Down Section
  -- -----------------------------------------------------------------
  if msg.method == "BYE" or msg.method == "CANCEL" then
    end_media_session()
  end

  -- -----------------------------------------------------------------
  -- Loose Route Section
  -- -----------------------------------------------------------------
  if loose_route() then
    -- Only a request inside a dialog may arrive with a Route set: an
    -- INVITE or REFER with one but no To tag is someone pre-loading our
    -- address to slip past the checks below.
    if (msg.method == "INVITE" or msg.method == "REFER") and not has_totag() then
      sl_send_reply(403, "Forbidden")
      return
    end
    -- A re-INVITE can reach the gateway as well as a new one can: the
    -- same credentials or trust (note 7).
    if msg.method == "INVITE" then
      if not allow_trusted() then
        if not proxy_authorize("", "subscriber") then
          proxy_challenge("", "0")
          return
        elseif not check_from() then
          sl_send_reply(403, "Use From=ID")
          return
        end
        consume_credentials()
      end
      -- ser.cfg searched for "^Route:.*;nat=yes", but loose_route() has
      -- already removed our Route here (serlua edits are visible at
      -- once): check_route_param reads what it removed. As in
      -- lua/nat_mediaproxy.lua, only a NATed caller marks the dialog.
      if client_nat_test(3) or check_route_param("nat=yes") then
        setflag(6)
        use_media_proxy()
      end
    end
    route[1]()
    return
  end

  -- -----------------------------------------------------------------
  -- Call Type Processing Section
  -- -----------------------------------------------------------------
  -- Not an open relay (notes 8–13): another domain only for senders of
  -- ours and for the gateway; the domain table decides what is ours.
  if not is_uri_host_local() then
    if is_from_local() or allow_trusted() then
      -- Beyond the reference: From is only a claim. Our users prove it
      -- (ACK and CANCEL cannot, and follow their INVITE anyway).
      if not allow_trusted() and msg.method ~= "ACK" and msg.method ~= "CANCEL" then
        if not proxy_authorize("", "subscriber") then
          proxy_challenge("", "0")
          return
        elseif not check_from() then
          sl_send_reply(403, "Use From=ID")
          return
        end
        consume_credentials()
      end
      route[4]()
      route[1]()
    else
      sl_send_reply(403, "Forbidden")
    end
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
  if not is_uri_host_local() then
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
  -- Default Message Handler
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
  -- REGISTER Message Handler
  -- -----------------------------------------------------------------
  sl_send_reply(100, "Trying")
  -- "Contact: *" unregisters everything and says nothing about NAT. A
  -- NATed phone's binding keeps the address its packets came from (flag
  -- 6 = nat_flag); its Contact stays as sent.
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
  -- INVITE Message Handler
  -- -----------------------------------------------------------------
  if client_nat_test(3) then
    setflag(7)
    force_rport()
    fix_nated_contact()
  end

  -- The gateway is let in as it is; everyone else authenticates, since
  -- a call to the gateway costs its owner money (note 15).
  if not allow_trusted() then
    if not proxy_authorize("", "subscriber") then
      proxy_challenge("", "0")
      return
    elseif not check_from() then
      sl_send_reply(403, "Use From=ID")
      return
    end
    consume_credentials()
  end

  -- The gateway wants 10 digits, not 1 + 10 (note 16).
  if regex_match(msg.ruri, "^sip:1[0-9]{10}@") then
    strip(1)
  end

  lookup("aliases")
  if not is_uri_host_local() then
    route[4]()
    route[1]()
    return
  end

  if regex_match(msg.ruri, "^sip:011[0-9]*@") then -- International PSTN
    route[4]()
    route[5]()
    return
  end

  if not lookup("location") then
    -- 10 digits nobody registered as is a domestic number (note 19).
    if regex_match(msg.ruri, "^sip:[0-9]{10}@") then -- Domestic PSTN
      route[4]()
      route[5]()
      return
    end
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
  -- Relay when either end is NATed (7 caller, 6 callee), once per
  -- message: flag 8 guards against rewriting the SDP twice.
  if isflagset(6) or isflagset(7) then
    if not isflagset(8) then
      setflag(8)
      use_media_proxy()
    end
  end
end

route[5] = function()
  -- -----------------------------------------------------------------
  -- PSTN Handler
  -- -----------------------------------------------------------------
  rewritehost(PSTN_GATEWAY)
  -- PSTN calls take longer to answer: 45 s instead of fr_inv_timer's 27.
  avp_write("i:45", "inv_timeout")
  route[1]()
end

onreply_route[1] = function()
  if (isflagset(6) or isflagset(7)) and regex_match(msg.status, "(180)|(183)|2[0-9][0-9]") then
    if not search("^Content-Length:[ ]*0") then
      use_media_proxy()
    end
  end
  if client_nat_test(1) then
    fix_nated_contact()
  end
end
