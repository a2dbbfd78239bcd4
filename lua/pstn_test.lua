-- lua/pstn_test.lua — lua/pstn.lua against traces of sipp runs through it
-- (tests/traces/pstn_*.pcap; how they were recorded: tests/traces/README.md).
-- There the proxy was 127.0.0.1:5060, the PSTN gateway 127.0.0.2:5060
-- (trusted), alice's phone 127.0.0.1:5061 and a probe 127.0.0.1:5063.
--   serlua test lua/pstn_test.lua

local GW, ALICE = "127.0.0.2:5060", "127.0.0.1:5061"

local function load(name)
  return trace.load("tests/traces/" .. name .. ".pcap")
end

-- The trace up to and including its first message for which `at` holds,
-- and the rest.
local function cut(tr, at)
  for i, m in ipairs(tr) do
    if at(m) then return { table.unpack(tr, 1, i) }, { table.unpack(tr, i + 1) } end
  end
  error("no such message in the trace", 2)
end

-- "STATUS or METHOD -> destination" of each message.
local function flow(msgs)
  local out = {}
  for i, m in ipairs(msgs) do out[i] = (m.status or m.method) .. " -> " .. m.dst end
  return out
end

describe("pstn.lua", function()
  local px
  before_each(function()
    px = proxy("lua/pstn.lua", { env = {
      SERLUA_ADDRESS = "127.0.0.1:5060", SERLUA_PSTN_GATEWAY = "127.0.0.2", SERLUA_PORTS = "35000-35099",
    } })
    px.db.subscriber{ username = "alice", domain = "example.com", password = "alice-secret" }
    px.db.domain{ domain = "example.com" }
    px.db.domain{ domain = "127.0.0.1" }
    px.db.trusted{ src_ip = "127.0.0.2", proto = "any" }
  end)

  it("challenges an unauthenticated INVITE to the PSTN; nothing reaches the gateway", function()
    local tr = load("pstn_unauth")          -- INVITE sip:12125551234@example.com, From alice, no credentials
    px:receive(tr[1])
    local out = px:sent()
    assert.equals(1, #out)                  -- the challenge, and nothing to the gateway
    assert.equals(407, out[1].status)
    assert.equals(tr[1].src, out[1].dst)
    assert.matches('^Digest realm="example.com", nonce="', out[1]:header("Proxy-Authenticate"))
    px:replay({ tr[3] })                    -- the probe's ACK of the 407: absorbed before the script
    assert.same({}, px:sent())
    assert.equals(1, #px:routes())
  end)

  it("strips 1 + 10 digits and sends the call to the gateway once alice authenticates", function()
    local tr = load("pstn_call")            -- alice: INVITE, 407, ACK, INVITE + credentials, ..., BYE
    local head, rest = cut(tr, function(m) return m:header("Proxy-Authorization") ~= nil end)
    px:replay(head)                         -- with the recorded digest
    local out = px:sent()
    assert.equals(3, #out)                  -- the first INVITE got only the challenge
    assert.same({ 407, 100 }, { out[1].status, out[2].status })
    local inv = out[3]
    assert.equals("INVITE sip:2125551234@127.0.0.2 SIP/2.0", inv.first_line)
    assert.equals(GW, inv.dst)
    assert.is_nil(inv:header("Proxy-Authorization"))   -- consume_credentials(): the gateway never sees it
    assert.equals("<sip:127.0.0.1:5060;lr>", inv:header("Record-Route"))
    assert.equals(45, px:avp("inv_timeout"))
    px:replay(rest)                         -- the gateway answers; ACK, BYE through the proxy
    assert.same({ "180 -> " .. ALICE, "200 -> " .. ALICE, "ACK -> " .. GW, "BYE -> " .. GW, "200 -> " .. ALICE },
      flow(px:sent()))
  end)

  it("delivers the gateway's call to alice without a challenge", function()
    local tr = load("pstn_gateway_in")      -- alice registers; the gateway (127.0.0.2) calls her
    px:replay(tr)
    assert.is_nil(px:history{ status = 407 }[1])
    local inv = px:history{ method = "INVITE" }
    assert.equals(1, #inv)
    assert.equals("INVITE sip:alice@127.0.0.1:5061 SIP/2.0", inv[1].first_line)
    assert.equals(ALICE, inv[1].dst)
    assert.equals(GW, px:history{ status = 200, cseq_method = "INVITE" }[1].dst)
    assert.equals(1, #px:history{ method = "BYE", dst = ALICE })
    -- The same INVITE from anywhere else is challenged.
    local from_gw = cut(tr, function(m) return m.method == "INVITE" and m.src == GW end)
    local other = proxy("lua/pstn.lua", { env = { SERLUA_ADDRESS = "127.0.0.1:5060", SERLUA_PSTN_GATEWAY = "127.0.0.2" } })
    other.db.domain{ domain = "127.0.0.1" }
    other.db.trusted{ src_ip = "127.0.0.2", proto = "any" }
    other:receive(from_gw[#from_gw], { src = "127.0.0.9:5060" })
    assert.equals(407, other:sent()[1].status)
  end)

  it("gives the gateway 45 s to answer, then cancels it and answers 408", function()
    local tr = load("pstn_ring_no_answer")  -- the gateway rings and never answers
    local ringing = cut(tr, function(m) return m.status == 180 and m.src == GW end)
    px:replay(ringing)
    assert.equals(180, px:sent{ status = 180 }[1].status)
    px:advance(44); assert.is_nil(px:sent{ status = 408 }[1])
    px:advance(2)
    local timeout = px:history{ status = 408 }[1]
    assert.equals(ALICE, timeout.dst)
    local ringing_at = px:history{ status = 180 }[1].time   -- the INVITE timer runs from the 180
    assert.near(45, timeout.time - ringing_at, 0.001)        -- not fr_inv_timer's 27 s
    local cancel = px:history{ method = "CANCEL" }[1]
    assert.equals(GW, cancel.dst)
    assert.equals(timeout.time, cancel.time)
  end)

  it("refuses a request from a foreign domain to a foreign domain (403, not an open relay)", function()
    local tr = load("pstn_foreign")         -- mallory@evil.example -> sip:0114420794960@127.0.0.2:5060
    px:replay(tr)
    local out = px:sent()
    assert.equals(1, #out)
    assert.equals("SIP/2.0 403 Forbidden", out[1].first_line)
    assert.equals(tr[1].src, out[1].dst)
  end)

  it("refuses an INVITE with a pre-loaded Route and no To tag (403)", function()
    local tr = load("pstn_preloaded_route") -- Route: <sip:127.0.0.1:5060;lr>, To without tag, to the gateway
    assert.equals("<sip:127.0.0.1:5060;lr>", tr[1]:header("Route"))
    assert.is_nil(tr[1].to_tag)
    px:replay(tr)
    local out = px:sent()
    assert.equals(1, #out)
    assert.equals("SIP/2.0 403 Forbidden", out[1].first_line)
    assert.is_nil(px:history{ dst = GW }[1])
  end)
end)
