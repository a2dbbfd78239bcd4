-- Calls an unknown primitive (a typo of sl_send_reply) on line 8;
-- tests/e2e.rs expects "tests/scripts/bad_unknown_fn.lua:8:". Keep the
-- line numbers in sync.
listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"

function route.main()
  if not mf_process_maxfwd_header(10) then
    sl_send_replyy(483, "Too Many Hops")
    return
  end
  t_relay()
end
