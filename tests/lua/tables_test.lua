-- The throwaway database a test fills (px.db.*) and what a proxy under
-- test exposes besides its messages: flags, AVPs, route runs, media relay
-- sessions.

local SCRIPT = [[
listen = "udp:127.0.0.1:5060"
modparam("rtpproxy", "rtp_ports", "41000-41099")
function route.main()
  if allow_trusted() then append_hf("X-Trusted: yes\r\n") end
  if is_from_local() then append_hf("X-From-Local: yes\r\n") end
  if msg.method == "INVITE" then
    setflag(7)
    avp_write("s:gold", "class")
    force_rtp_proxy()
  elseif msg.method == "BYE" then
    unforce_rtp_proxy()
  end
  if msg.method == "INVITE" and not lookup("aliases") then
    sl_send_reply(404, "Not Found")
    return
  end
  if msg.method == "BYE" then rewritehostport("127.0.0.1:5070") end
  t_relay()
end
]]

local SDP = "v=0\r\no=alice 1 1 IN IP4 192.0.2.245\r\ns=-\r\nc=IN IP4 192.0.2.245\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

local function invite(to)
  return "INVITE sip:" .. to .. " SIP/2.0\r\n" ..
    "Via: SIP/2.0/UDP 192.0.2.245:5060;branch=z9hG4bK-tab-1\r\n" ..
    "Max-Forwards: 70\r\n" ..
    "From: <sip:alice@example.com>;tag=a1\r\n" ..
    "To: <sip:" .. to .. ">\r\n" ..
    "Call-ID: tables-1\r\n" ..
    "CSeq: 1 INVITE\r\n" ..
    "Contact: <sip:alice@192.0.2.245:5060>\r\n" ..
    "Content-Type: application/sdp\r\n" ..
    "Content-Length: " .. #SDP .. "\r\n\r\n" .. SDP
end

describe("px.db and the proxy's state", function()
  local px
  before_each(function()
    px = proxy(SCRIPT)
    px.db.trusted{ src_ip = "192.0.2.245", proto = "any" }
    px.db.domain{ domain = "example.com" }
    px.db.alias{ alias = "sales@example.com", target = "sip:bob@127.0.0.1:5070" }
  end)

  it("fills trusted, domain and aliases; exposes flags, AVPs and the relay session", function()
    px:receive(invite("sales@example.com"), { src = "192.0.2.245:5060" })
    local fwd = px:sent{ method = "INVITE" }[1]
    assert.equals("sip:bob@127.0.0.1:5070", fwd.ruri)
    assert.equals("127.0.0.1:5070", fwd.dst)
    assert.equals("yes", fwd:header("X-Trusted"))
    assert.equals("yes", fwd:header("X-From-Local"))
    assert.matches("c=IN IP4 127%.0%.0%.1", fwd.body)
    assert.is_true(px:isflagset(7))
    assert.equals("gold", px:avp("class"))
    assert.same({ 7 }, px:last_route().flag_list)
    assert.equals(1, #px:aliases("sales"))
    local s = px:sessions()
    assert.equals(1, #s)
    assert.equals("tables-1", s[1].call_id)
    assert.equals("192.0.2.245:4000", s[1].streams[1].caller.announced)
    -- The BYE ends the session.
    px:receive(("BYE sip:bob@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.245:5060;branch=z9hG4bK-tab-2\r\n" ..
      "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:sales@example.com>;tag=b1\r\n" ..
      "Call-ID: tables-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"), { src = "192.0.2.245:5060" })
    assert.equals(1, #px:sent{ method = "BYE", dst = "127.0.0.1:5070" })
    assert.same({}, px:sessions())
  end)

  it("answers 404 for an alias nobody added, from an untrusted source", function()
    px:receive(invite("nobody@example.com"), { src = "198.51.100.7:5060" })
    local out = px:sent()
    assert.equals(1, #out)
    assert.equals(404, out[1].status)
    assert.equals("198.51.100.7:5060", out[1].dst)
    assert.is_nil(out[1]:header("X-Trusted"))
  end)
end)
