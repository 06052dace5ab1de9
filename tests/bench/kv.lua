-- wrk script for the single-node benchmark (tests/bench/single-node.sh).
--
-- One script for every server and operation, chosen by the arguments after `--`:
--   wrk ... -s kv.lua https://127.0.0.1:PORT -- <kind> <op> <token> <keys> <value_bytes>
--     kind:        herd | ceiling (PUT/GET /v1/kv/bench/k<N>, bearer token)
--                  etcd (POST /v3/kv/put and /v3/kv/range on its JSON gateway, no auth)
--     op:          put | get
--     token:       bearer token for herd/ceiling ("-" for none)
--     keys:        how many distinct keys (bench/k0 .. bench/k<keys-1>)
--     value_bytes: length of the stored value: for herd/ceiling the JSON text of the body (a JSON
--                  string, quotes included); for etcd the same text, base64-encoded by the gateway
--
-- Every request is built once per thread in init() and then replayed in a cycle, so the Lua cost
-- per request is one table lookup and the load generator stays equally cheap for every server.
-- done() prints one machine-readable line ("BENCH key=value ...") that the shell script parses.

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1) .. b64chars:sub(c2 + 1, c2 + 1)
      .. (b and b64chars:sub(c3 + 1, c3 + 1) or "=") .. (c and b64chars:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

-- The stored value: a JSON string whose text (quotes included) is exactly `n` bytes.
local function json_value(n)
  if n < 2 then n = 2 end
  return '"' .. string.rep("v", n - 2) .. '"'
end

local thread_count = 0

-- Runs in the main Lua state once per thread before the threads start: give each an id so the
-- threads start at different places in the key space.
function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

local requests = {}
local n_requests = 0
local next_index = 1

function init(args)
  local kind, op, token = args[1], args[2], args[3]
  local keys = tonumber(args[4] or "10000")
  local value_bytes = tonumber(args[5] or "256")
  if kind ~= "herd" and kind ~= "ceiling" and kind ~= "etcd" then
    error("kv.lua: kind must be herd, ceiling or etcd, got " .. tostring(kind))
  end
  if op ~= "put" and op ~= "get" then
    error("kv.lua: op must be put or get, got " .. tostring(op))
  end
  local value = json_value(value_bytes)
  local value_b64 = base64(value)
  for k = 0, keys - 1 do
    local headers = { ["Content-Type"] = "application/json" }
    local req
    if kind == "etcd" then
      local key_b64 = base64("bench/k" .. k)
      if op == "put" then
        req = wrk.format("POST", "/v3/kv/put", headers,
          '{"key":"' .. key_b64 .. '","value":"' .. value_b64 .. '"}')
      else
        req = wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key_b64 .. '"}')
      end
    else
      if token ~= nil and token ~= "-" then
        headers["Authorization"] = "Bearer " .. token
      end
      local path = "/v1/kv/bench/k" .. k
      if op == "put" then
        req = wrk.format("PUT", path, headers, value)
      else
        headers["Content-Type"] = nil
        req = wrk.format("GET", path, headers, nil)
      end
    end
    requests[k + 1] = req
  end
  n_requests = keys
  -- Spread the threads over the key space (thread_id is set by setup(); 0 when absent).
  local id = tonumber(thread_id or 0) or 0
  next_index = ((id * 7919) % n_requests) + 1
end

function request()
  local req = requests[next_index]
  next_index = next_index + 1
  if next_index > n_requests then next_index = 1 end
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
