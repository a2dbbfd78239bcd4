-- tests/scripts/registrar.lua: a registrar + proxy in the reference
-- ser.cfg's shape (main route, route[1] default handler, route[2] REGISTER
-- handler, route[3] INVITE handler), used by the end-to-end tests in
-- tests/e2e_registrar.rs and by benches/register.sh.
--
-- Users register as user@example.com with digest authentication against
-- the subscriber table; calls and other requests for a local user go to
-- the user's registered contact (lookup("location")), or get 404.
--
-- The harness chooses addresses and the database through environment
-- variables:
--   SERLUA_LISTEN        listen address, default udp:127.0.0.1:5060
--   SERLUA_DB_URL        database URL (sqlite://FILE, postgres://…, mysql://…);
--                        unset: serlua's default (or --db)
--   SERLUA_CHILDREN      worker count, default 2
--   SERLUA_NONCE_EXPIRE  auth nonce_expire in seconds, default 300
--   SERLUA_DEBUG         SER debug level, default 3

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
alias = { "example.com" }
children = tonumber(os.getenv("SERLUA_CHILDREN") or "2")
debug = tonumber(os.getenv("SERLUA_DEBUG") or "3")
if os.getenv("SERLUA_DB_URL") then
  db_url = os.getenv("SERLUA_DB_URL")
end

modparam("auth", "nonce_expire", tonumber(os.getenv("SERLUA_NONCE_EXPIRE") or "300"))
modparam("registrar", "max_expires", 3600)
modparam("tm", "fr_inv_timer", 30)

function route.main()
  -- ---------------------------------------------------------------
  -- Sanity Check Section
  -- ---------------------------------------------------------------
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if msg.len > max_len then
    sl_send_reply(513, "Message Overflow")
    return
  end
  -- ---------------------------------------------------------------
  -- Record Route Section
  -- ---------------------------------------------------------------
  if msg.method ~= "REGISTER" then
    record_route()
  end
  -- ---------------------------------------------------------------
  -- Loose Route Section
  -- ---------------------------------------------------------------
  if loose_route() then
    route[1]()
    return
  end
  -- ---------------------------------------------------------------
  -- Call Type Processing Section
  -- ---------------------------------------------------------------
  if not is_myself(msg.ruri) then
    sl_send_reply(403, "Relaying Denied")
    return
  end
  if msg.method == "ACK" then
    -- An ACK for us outside any transaction acknowledges one of our own
    -- stateless negative replies (SER's sl module absorbs it).
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
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  route[1]()
end

route[1] = function()
  -- ---------------------------------------------------------------
  -- Default Message Handler
  -- ---------------------------------------------------------------
  if not t_relay() then
    sl_reply_error()
  end
end

route[2] = function()
  -- ---------------------------------------------------------------
  -- REGISTER Message Handler
  -- ---------------------------------------------------------------
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
  -- ---------------------------------------------------------------
  -- INVITE Message Handler
  -- ---------------------------------------------------------------
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  route[1]()
end
