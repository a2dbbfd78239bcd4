-- A deliberately failing test (not named *_test.lua, so `serlua test`
-- finds it only when named): tests/serlua_test.rs runs it and checks that
-- the failure reads well — expected vs actual, the message the value came
-- from, and a diff against the message expected.
describe("registrar.lua", function()
  it("challenges a REGISTER with 407 (wrong: a registrar answers 401)", function()
    local px = proxy("tests/scripts/registrar.lua")
    local tr = trace.load("tests/traces/register_auth.pcap")
    px:receive(tr[1])
    local out = px:sent()
    assert.equals(1, #out)
    assert.equals(407, out[1].status)
  end)
end)
