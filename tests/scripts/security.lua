-- tests/scripts/security.lua: the reference's registrar (route[2] REGISTER
-- with digest auth, lookup for the rest) behind the two guards a public
-- SIP server needs first, used by tests/pike.rs and tests/e2e_security.rs:
--
--   * SIP scanners (sipvicious' svmap/svwar/svcrack, sipcli, and the many
--     tools that keep its "friendly-scanner" User-Agent) get nothing back:
--     an answer would confirm that a SIP server lives here.
--   * pike: a source sending more than reqs_density_per_unit requests per
--     sampling_time_unit, or failing digest authorization auth_failures
--     times, is blocked for remove_latency seconds and gets nothing back
--     either (SER's `if (!pike_check_req()) { drop; }`). Dropping, not a
--     403 or 503: a reply costs us a send and tells the attacker it is
--     being throttled; silence looks like a dead host.
--
-- Environment (set by the harness):
--   SERLUA_LISTEN        listen address, default udp:127.0.0.1:5060
--   SERLUA_PIKE_DENSITY  pike reqs_density_per_unit, default 30 (SER's)
--   SERLUA_PIKE_AUTH     pike auth_failures, default 10

listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"
alias = { "example.com" }
children = 2

modparam("pike", "sampling_time_unit", 2)
modparam("pike", "reqs_density_per_unit", tonumber(os.getenv("SERLUA_PIKE_DENSITY") or "30"))
modparam("pike", "remove_latency", 120)
modparam("pike", "auth_failures", tonumber(os.getenv("SERLUA_PIKE_AUTH") or "10"))

-- User-Agents of the common SIP scanners (case-insensitive ERE).
local SCANNERS = "friendly-scanner|sipvicious|sipcli|sip-scan|sundayddr|iWar|VaxSIPUserAgent|smap"

function route.main()
  local ua = msg:header("User-Agent")
  if ua and regex_match(ua, SCANNERS) then
    drop()
  end
  if not pike_check_req() then
    drop()
  end
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if not is_myself(msg.ruri) then
    -- Toll fraud: never relay to a domain that is not ours.
    sl_send_reply(403, "Relaying Denied")
    return
  end
  if msg.method == "REGISTER" then
    route[2]()
    return
  end
  if msg.method == "ACK" then
    return
  end
  if not lookup("location") then
    sl_send_reply(404, "User Not Found")
    return
  end
  if not t_relay() then
    sl_reply_error()
  end
end

route[2] = function()
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
