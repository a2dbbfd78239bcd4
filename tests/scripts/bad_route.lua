-- Calls route[7], which is not defined, on line 9; tests/e2e.rs expects
-- "tests/scripts/bad_route.lua:9:". Keep the line numbers in sync.
listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"

function route.main()
  if not mf_process_maxfwd_header(10) then
    sl_send_reply(483, "Too Many Hops"); return
  end
  route[7]()
end

route[1] = function()
  if not t_relay() then sl_reply_error() end
end
