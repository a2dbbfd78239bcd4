-- Recorded traces (tests/traces, see its README) replayed through the
-- scripts that were running when they were recorded: the proxy under test
-- must do what the recorded proxy did.

-- "first line -> destination" of what a proxy at `addr` sent in a trace.
local function sent_by(tr, addr)
  local out = {}
  for _, m in ipairs(tr) do
    if m.src == addr then out[#out + 1] = m.first_line .. " -> " .. m.dst end
  end
  return out
end

local function flow(msgs)
  local out = {}
  for i, m in ipairs(msgs) do out[i] = m.first_line .. " -> " .. m.dst end
  return out
end

describe("registrar.lua", function()
  local px
  before_each(function()
    px = proxy("tests/scripts/registrar.lua")
    px.db.subscriber{ username = "alice", domain = "example.com", password = "secret" }
  end)

  it("replays a recorded REGISTER/401/REGISTER/200 with its recorded digest", function()
    local tr = trace.load("tests/traces/register_auth.pcap")
    assert.equals(4, #tr)
    px:replay(tr)
    local out = px:sent()
    assert.same(sent_by(tr, "127.0.0.1:5060"), flow(out))
    assert.equals(401, out[1].status)
    assert.matches('^Digest realm="example.com", nonce="', out[1]:header("WWW-Authenticate"))
    assert.equals(tr[1].src, out[1].dst)
    assert.equals(200, out[2].status)
    assert.equals("<sip:alice@127.0.0.1:5061>;expires=3600", out[2]:header("Contact"))
    local b = px:bindings("alice")
    assert.equals(1, #b)
    assert.equals("sip:alice@127.0.0.1:5061", b[1].contact)
    assert.equals("sipp reg_auth", b[1].user_agent)
    assert.equals("route.main", px:last_route().route)
  end)

  it("reads the same exchange from Linux cooked captures (SLL and SLL2)", function()
    local ref = trace.load("tests/traces/register_auth.pcap")
    for _, f in ipairs{ "tests/traces/register_auth_sll.pcap", "tests/traces/register_auth_sll2.pcap" } do
      local tr = trace.load(f)
      assert.equals(#ref, #tr)
      for i = 1, #ref do assert.equals(ref[i], tr[i]) end
    end
  end)

  it("still checks the recorded digest against the test database", function()
    local other = proxy("tests/scripts/registrar.lua")
    other.db.subscriber{ username = "alice", domain = "example.com", password = "not-the-recorded-one" }
    other:replay(trace.load("tests/traces/register_auth.pcap"))
    local out = other:sent()
    assert.equals(2, #out)
    assert.equals(401, out[2].status)
    assert.same({}, other:bindings("alice"))
  end)

  it("reassembles a REGISTER split over two TCP segments", function()
    local tcp = proxy("tests/scripts/registrar.lua", { env = { SERLUA_LISTEN = "tcp:127.0.0.1:5060" } })
    local tr = trace.load("tests/traces/tcp_split.pcap")
    assert.equals(2, #tr)
    assert.equals("tcp", tr[1].proto)
    assert.equals("REGISTER", tr[1].method)
    tcp:receive(tr[1])
    local out = tcp:sent()
    assert.equals(1, #out)
    assert.equals(401, out[1].status)
    assert.equals("tcp", out[1].proto)
    assert.equals(tr[1].src, out[1].dst)
  end)
end)

describe("relay.lua", function()
  it("replays a recorded call (pcap and pcapng) as the recorded proxy relayed it", function()
    for _, f in ipairs{ "tests/traces/call.pcap", "tests/traces/call.pcapng" } do
      local px = proxy("tests/scripts/relay.lua")
      local tr = trace.load(f)
      px:replay(tr)
      local out = px:sent()
      assert.same(sent_by(tr, "127.0.0.1:5060"), flow(out))
      -- The replies from the callee took the branch of the INVITE this
      -- proxy sent, and went upstream with the caller's.
      local invite = px:history{ method = "INVITE", dst = "127.0.0.1:5070" }[1]
      assert.truthy(invite.branch:find("^z9hG4bKsr"))
      local ok = px:history{ status = 200, cseq_method = "INVITE" }[1]
      assert.equals(tr[1].branch, ok.branch)
      assert.equals("<sip:127.0.0.1:5060;lr>", ok:header("Record-Route"))
      -- Every transaction ended: nothing more is sent.
      px:advance(64)
      assert.same({}, px:sent())
      local stats = px:stats()
      assert.equals(3, stats.rcv_requests)
      assert.equals(3, stats.rcv_replies)
      assert.equals(0, stats.script_errors)
    end
  end)
end)
