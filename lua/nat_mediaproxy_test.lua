-- lua/nat_mediaproxy_test.lua — lua/nat_mediaproxy.lua against traces of
-- sipp runs through it (tests/traces/nat_mediaproxy_*.pcap; how they were
-- recorded: tests/traces/README.md). There the proxy was 127.0.0.1:5060,
-- alice's phone 127.0.0.1:5061 and bob's 127.0.0.1:5062, bob looking
-- NATed: his Via, Contact and SDP say 192.168.1.20.
--   serlua test lua/nat_mediaproxy_test.lua

local ALICE, BOB = "127.0.0.1:5061", "127.0.0.1:5062"

local function load(name)
  return trace.load("tests/traces/nat_mediaproxy_" .. name .. ".pcap")
end

-- The trace up to and including its first message for which `at` holds,
-- and the rest.
local function cut(tr, at)
  for i, m in ipairs(tr) do
    if at(m) then return { table.unpack(tr, 1, i) }, { table.unpack(tr, i + 1) } end
  end
  error("no such message in the trace", 2)
end

-- An INVITE (CSeq `n`) a phone sent to the proxy.
local function invite(n)
  return function(m) return m.method == "INVITE" and m.cseq == n and m.dst == "127.0.0.1:5060" end
end

-- "IP:PORT" of the audio stream an SDP announces.
local function media(body)
  return body:match("c=IN IP4 ([%d.]+)") .. ":" .. body:match("m=audio (%d+)")
end

describe("nat_mediaproxy.lua", function()
  local px
  before_each(function()
    px = proxy("lua/nat_mediaproxy.lua", { env = { SERLUA_ADDRESS = "127.0.0.1:5060", SERLUA_PORTS = "35000-35099" } })
    px.db.subscriber{ username = "alice", domain = "example.com", password = "alice-secret" }
    px.db.subscriber{ username = "bob", domain = "example.com", password = "bob-secret" }
  end)

  it("keeps where a NATed phone registered from (flag 6, received) and pings it", function()
    local tr = load("register")             -- bob (NATed), then alice: REGISTER, 100, 401, REGISTER, 100, 200
    local bob, alice = cut(tr, function(m) return m.status == 200 and m.dst == BOB end)
    px:replay(bob)
    assert.is_true(px:isflagset(6))         -- client_nat_test(7): private Via and Contact
    local b = px:bindings("bob")
    assert.equals(1, #b)
    assert.equals("sip:bob@192.168.1.20:5062", b[1].contact)   -- kept as sent
    assert.equals("sip:127.0.0.1:5062", b[1].received)         -- where his packets came from
    px:replay(alice)
    assert.is_false(px:isflagset(6))
    assert.is_nil(px:bindings("alice")[1].received)
    px:sent()
    px:advance(30)                          -- natping_interval: only bob, at his NAT's address
    local pings = px:sent()
    assert.truthy(#pings >= 1)
    for _, p in ipairs(pings) do
      assert.equals(BOB, p.dst)
      assert.equals("\0\0\0\0", p.raw)
    end
  end)

  it("relays alice's call to NATed bob: the offer, the answer, until the BYE", function()
    px:replay(load("register"))
    local tr = load("call")                 -- alice calls bob: INVITE, 407, ACK, INVITE + credentials, …, BYE
    local offer, rest = cut(tr, invite(2))
    px:replay(offer)
    assert.is_false(px:isflagset(7))        -- alice is not NATed,
    assert.is_true(px:isflagset(6))         -- bob is (lookup("location") sets the nat_flag),
    assert.is_true(px:isflagset(8))         -- and route[4] relayed the media once
    local inv = px:sent{ method = "INVITE" }[1]
    assert.equals(BOB, inv.dst)             -- his binding's received address
    assert.equals("sip:bob@192.168.1.20:5062", inv.ruri)
    local s = px:sessions()
    assert.equals(1, #s)
    assert.equals(tr[1].call_id, s[1].call_id)
    local st = s[1].streams[1]
    assert.equals("127.0.0.1:40000", st.caller.announced)
    assert.equals(st.callee.relay, media(inv.body))   -- bob sends his media to the relay

    local answer, bye = cut(rest, function(m) return m.status == 200 and m.src == BOB end)
    px:replay(answer)
    local ok = px:sent{ status = 200 }[1]
    assert.equals(ALICE, ok.dst)
    assert.equals("<sip:bob@127.0.0.1:5062>", ok:header("Contact"))  -- fix_nated_contact() in onreply_route
    st = px:sessions()[1].streams[1]
    assert.equals("192.168.1.20:40002", st.callee.announced)
    assert.equals(st.caller.relay, media(ok.body))    -- so does alice

    px:replay(bye)                          -- ACK, BYE, 200
    assert.equals(1, #px:sent{ method = "BYE", dst = BOB })
    assert.same({}, px:sessions())
  end)

  it("marks a NATed caller's dialog (flag 7, nat=yes) and keeps its relay across a re-INVITE", function()
    px:replay(load("register"))
    local tr = load("call_nated_caller")    -- bob calls alice, re-INVITEs, hangs up
    local offer, rest = cut(tr, invite(2))
    px:replay(offer)
    assert.is_true(px:isflagset(7))         -- client_nat_test(3): bob is NATed
    assert.is_false(px:isflagset(6))        -- alice is not
    local inv = px:sent{ method = "INVITE" }[1]
    assert.equals(ALICE, inv.dst)
    assert.equals("<sip:127.0.0.1:5060;nat=yes;lr>", inv:header("Record-Route"))
    assert.equals("<sip:bob@127.0.0.1:5062>", inv:header("Contact"))  -- fix_nated_contact()
    local relay = media(inv.body)
    assert.equals("192.168.1.20:40000", px:sessions()[1].streams[1].caller.announced)

    local reinvite, bye = cut(rest, function(m) return m.status == 200 and m.cseq == 3 and m.src == ALICE end)
    px:replay(reinvite)                     -- the answer, ACK, the re-INVITE and its answer
    assert.is_true(px:isflagset(6))         -- onreply_route of the re-INVITE: loose_route() saw nat=yes
    local again = px:sent{ method = "INVITE" }[1]
    assert.equals(relay, media(again.body)) -- the same relay ports, both ways
    local answers = px:history{ status = 200, cseq_method = "INVITE", dst = BOB }
    assert.equals(2, #answers)
    local s = px:sessions()
    assert.equals(1, #s)
    assert.equals(s[1].streams[1].callee.relay, relay)
    assert.equals(s[1].streams[1].caller.relay, media(answers[1].body))
    assert.equals(s[1].streams[1].caller.relay, media(answers[2].body))
    px:replay(bye)
    assert.same({}, px:sessions())
  end)
end)
