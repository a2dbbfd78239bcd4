-- tests/scripts/enum_leak.lua: a deliberately leaky registrar, the control
-- of the enumeration tests (tests/e2e_lua.rs): a request for a user who is
-- not registered gets 404 before any challenge, so a scanner tells the
-- registered users from the rest. The shipped scripts must not do this.
--
-- Environment: SERLUA_LISTEN (default udp:127.0.0.1:5060).

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
alias = { "example.com" }
children = 2

function route.main()
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if msg.method == "ACK" then
    return
  end
  if msg.method == "REGISTER" then
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
    return
  end
  -- The leak: the answer depends on whether the user exists.
  if not registered("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  proxy_challenge("", "0")
end
