-- examples/quickstart.lua — the smallest useful serlua proxy.
--
-- A stateful SIP proxy on 127.0.0.1:5060 (UDP and TCP): it checks each
-- request like the reference ser.cfg's sanity section, record-routes,
-- follows Route headers for in-dialog requests, answers OPTIONS sent to
-- itself, and relays everything else to the host in the Request-URI.
-- Start it with:  cargo run --release -- run
-- (A registrar with a database arrives with the registrar issue; until
-- then requests for this proxy's own address get 404.)

listen = { "udp:127.0.0.1:5060", "tcp:127.0.0.1:5060" }
debug = 3                                   -- SER levels: 3 = info, 4 = debug

modparam("tm", "fr_timer", 30)              -- seconds to wait for any reply
modparam("tm", "fr_inv_timer", 120)         -- seconds an INVITE may ring

function route.main()
  -- Sanity checks (ser.cfg: mf_process_maxfwd_header / msg:len > max_len).
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops")
    return
  end
  if msg.len > max_len then
    sl_send_reply(513, "Message Overflow")
    return
  end

  -- Stay in the path of every dialog we set up.
  if msg.method ~= "REGISTER" then
    record_route()
  end

  -- In-dialog requests follow their Route set.
  if loose_route() then
    route[1]()
    return
  end

  if is_myself(msg.ruri) then
    if msg.method == "OPTIONS" then
      sl_send_reply(200, "OK")
    else
      sl_send_reply(404, "Not Found")
    end
    return
  end

  route[1]()
end

-- The default message handler: relay statefully, answer errors.
route[1] = function()
  if not t_relay() then
    sl_reply_error()
  end
end
