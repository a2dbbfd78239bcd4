-- Timers on the virtual clock: the reference PSTN config gives the
-- gateway 45 s to answer an INVITE (avp_write("i:45", "inv_timeout"));
-- this takes no real time.

local PSTN = [[
listen = "udp:192.0.2.13:5060"
modparam("tm", "fr_inv_timer", 120)
function route.main()
  if msg.method == "INVITE" then
    setflag(5)
    avp_write("i:45", "inv_timeout")
  end
  rewritehostport("192.0.2.245:5060")
  if not t_relay() then sl_reply_error() end
end
]]

local INVITE = [[
INVITE sip:+15551234567@192.0.2.13 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-pstn-1
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:+15551234567@192.0.2.13>
Call-ID: pstn-45@192.0.2.10
CSeq: 1 INVITE
Contact: <sip:alice@192.0.2.10:5060>
Content-Length: 0

]]

describe("PSTN gateway", function()
  local px
  before_each(function() px = proxy(PSTN) end)

  it("gives the gateway 45 s to answer, then cancels it and answers 408", function()
    px:receive(INVITE)
    local out = px:sent()
    assert.equals(100, out[1].status)
    assert.equals("INVITE", out[2].method)
    assert.equals("192.0.2.245:5060", out[2].dst)
    assert.is_true(px:isflagset(5))
    assert.equals(45, px:avp("inv_timeout"))
    -- The gateway rings, and no more.
    px:receive(sip.reply(out[2], 180, "Ringing", { to_tag = "gw1" }), { src = "192.0.2.245:5060" })
    assert.equals(180, px:sent()[1].status)
    px:advance(44)
    assert.is_nil(px:sent{ status = 408 }[1])
    px:advance(2)
    local timeout = px:sent{ status = 408 }[1]
    assert.equals(45, timeout.time)
    assert.equals("192.0.2.10:5060", timeout.dst)
    local cancel = px:history{ method = "CANCEL" }[1]
    assert.equals("192.0.2.245:5060", cancel.dst)
    assert.equals(45, cancel.time)
  end)

  pending("routes to a second gateway on 408 (a failure route; not in this script)")
end)
