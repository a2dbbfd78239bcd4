-- A script with a syntax error on line 7 (tests/e2e.rs expects
-- "tests/scripts/bad_syntax.lua:7:"). Keep the line numbers in sync.
listen = os.getenv("SERLUA_LISTEN") or "udp:127.0.0.1:5060"

function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  local next_hop = = "127.0.0.1:5070"
  rewritehostport(next_hop)
  t_relay()
end
