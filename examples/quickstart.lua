-- examples/quickstart.lua — the smallest useful serlua registrar + proxy.
--
-- Phones register as user@example.com with digest authentication (users
-- live in the SQLite file serlua.db: `serlua user add alice@example.com
-- secret`), call each other through the proxy, and everything a call
-- needs in-dialog follows the Record-Route. Start it with:
--     cargo run --release -- run
-- Change DOMAIN (and listen) to your own, and point phones at the proxy.

local DOMAIN = "example.com"           -- the SIP domain this proxy serves

listen = { "udp:127.0.0.1:5060", "tcp:127.0.0.1:5060" }
alias = { DOMAIN }                      -- requests for DOMAIN are for us
debug = 3                               -- SER levels: 3 = info, 4 = debug
-- db_url = "sqlite://serlua.db"        -- the default; or postgres://… / mysql://…

modparam("tm", "fr_inv_timer", 30)      -- seconds a call may ring
modparam("registrar", "max_expires", 3600)

function route.main()
  -- Sanity checks, as the reference ser.cfg starts.
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if msg.len > max_len then
    sl_send_reply(513, "Message Overflow")
    return
  end

  if msg.method ~= "REGISTER" then
    record_route()
  end

  -- In-dialog requests follow their Route set.
  if loose_route() then
    route.relay()
    return
  end

  if msg.method == "REGISTER" then
    if is_myself(msg.ruri) then
      route.register()
    else
      sl_send_reply(403, "Not our domain")
    end
    return
  end

  if msg.method == "ACK" or msg.method == "CANCEL" then
    route.relay()
    return
  end

  -- Not an open relay: a request for a foreign domain must come from one
  -- of our users. Our own users prove who they are before we relay.
  local from_local = is_myself(msg.from_uri)
  if not from_local and not is_myself(msg.ruri) then
    sl_send_reply(403, "Relaying Denied")
    return
  end
  if from_local then
    if not proxy_authorize("", "subscriber") then
      proxy_challenge("", "0")
      return
    end
    if not check_from() then
      sl_send_reply(403, "Use From=ID")
      return
    end
    consume_credentials()
  end

  if is_myself(msg.ruri) then
    if msg.method == "OPTIONS" and not msg.ruri:find("@") then
      sl_send_reply(200, "OK")
      return
    end
    if not lookup("location") then
      sl_send_reply(404, "User Not Found")
      return
    end
  end
  route.relay()
end

function route.register()
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

-- The default message handler: relay statefully, answer errors.
function route.relay()
  if not t_relay() then
    sl_reply_error()
  end
end
