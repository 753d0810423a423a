-- wrk script: POST the seed's 9-item batch (shared/seeds/004_*.txt) to /v1/parcels.
wrk.method = "POST"
wrk.path = "/v1/parcels"
wrk.headers["Content-Type"] = "application/json"
-- bench/ingest.py hands over the API key it configured (the peers ignore it).
local key = os.getenv("JOBPOOL_BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
wrk.body = [[{"Data":[
{"id":"1","time":"2017-01-01T00:00:01Z","data":"abc"},
{"id":"2","time":"2017-01-01T00:00:02Z","data":"def"},
{"id":"3","time":"2017-01-01T00:00:03Z","data":"ghi"},
{"id":"4","time":"2017-01-01T00:00:04Z","data":"jkl"},
{"id":"5","time":"2017-01-01T00:00:05Z","data":"mno"},
{"id":"6","time":"2017-01-01T00:00:06Z","data":"pqr"},
{"id":"7","time":"2017-01-01T00:00:07Z","data":"stu"},
{"id":"8","time":"2017-01-01T00:00:08Z","data":"vwx"},
{"id":"9","time":"2017-01-01T00:00:09Z","data":"yz0"}
]}]]

-- Count 202s, other 2xx (the peers), 503s and the rest per thread; done() sums them so
-- the runner can tell accepted work from refused work.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

-- JOBPOOL_BENCH_IDEMPOTENCY=1 (bench/ingest.py --idempotency): a fresh Idempotency-Key on
-- every request (the thread's id and a counter), as a careful client sends.
local keyed = os.getenv("JOBPOOL_BENCH_IDEMPOTENCY") == "1"
local serial = 0

function init(args)
  accepted, ok, refused, other = 0, 0, 0, 0
  prefix = string.format("bench-%d-%d-", os.time(), id)
end

function request()
  if not keyed then
    return wrk.request()
  end
  serial = serial + 1
  wrk.headers["Idempotency-Key"] = prefix .. serial
  return wrk.format()
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  elseif status >= 200 and status < 300 then
    ok = ok + 1
  elseif status == 503 then
    refused = refused + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local a, k, r, o = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted")
    k = k + t:get("ok")
    r = r + t:get("refused")
    o = o + t:get("other")
  end
  io.write(string.format("STATUS 202=%d other2xx=%d 503=%d other=%d\n", a, k, r, o))
  io.write(string.format("LAT p50=%d p99=%d\n", latency:percentile(50), latency:percentile(99)))
end
