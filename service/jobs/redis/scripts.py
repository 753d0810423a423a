"""The Redis store's scripts: each one state change of a job, done atomically in Redis.

Every script gets the key prefix as ``ARGV[1]`` and builds its keys from it (a job's hash
is found from a stream entry, so the keys cannot all be declared up front: jobpool needs a
standalone Redis or a primary with replicas, not Redis Cluster).

Streams (group ``jobpool`` on each):

- ``queue:<pool>``: jobs waiting to run. A job is added when it is accepted (or put back);
  a worker with room reads the oldest with XREADGROUP and starts them in the same script,
  acknowledging and deleting the entries at once.
- ``running``: jobs running somewhere. Nobody reads it with ``>``: the worker that starts
  a job adds an entry and takes it into its own pending list (XCLAIM FORCE). The entry's
  idle time is the job's lease: its worker renews it (XCLAIM JUSTID) and acknowledges it
  when the job ends. An entry idle longer than the lease belongs to a worker that is gone:
  XAUTOCLAIM hands it to a live worker, which puts the job back in its queue.

A job's hash holds ``entry`` and ``stream``: the one stream entry that stands for it now.

Jobs in flight per owner (the hash ``inflight``: owner -> jobs queued or running) change
only in the scripts that move a job into those states (ADD) or out of them (FINISH,
CANCEL), in the same step as the job's own state. So the count is exactly as durable as the
jobs: a host that dies leaves its jobs ``running``, they still count, and they stop counting
when whoever takes them over ends them. Moves between queued and running (START, CLAIM,
REQUEUE, a takeover) leave it alone. ADD refuses a job over the owner's cap in the step
that would store it, so the cap holds exactly, fleet-wide. RECOUNT counts them all again
from the streams (every queued job has an entry in its queue, every running one in
``running``), now and then: what a worker of an older version did without counting (during
a rolling upgrade), or anything else that made the count drift, lasts until then at most.
"""

from __future__ import annotations

from service.jobs.state import MOVES


def _sources() -> str:
    """The moves of :mod:`service.jobs.state` as a Lua table: move -> {source state: true}."""
    moves = ", ".join(
        f"{m.name} = {{" + ", ".join(f"{s.value} = true" for s in sorted(m.sources)) + "}"
        for m in MOVES
    )
    return f"local SOURCES = {{{moves}}}"


PRELUDE = (
    r"""
local P = ARGV[1]
local G = 'jobpool'
local RUN = P .. 'running'
local INFLIGHT = P .. 'inflight'
local SCHEDULED = P .. 'scheduled'
local STOPS = P .. 'stops'
local DELIVERIES = P .. 'deliveries'
"""
    + _sources()
    + r"""

-- Whether `move` (a name of service/jobs/state.py's MOVES) applies to a job in `state`.
local function may(move, state)
  return state ~= false and state ~= nil and SOURCES[move][state] == true
end

local function field(job, name)
  return redis.call('HGET', job, name)
end

-- The listing indexes (GET /v1/jobs): sorted sets whose members are job ids, all scored 0,
-- so they sort by id (time-ordered): every job, each owner's jobs, and each owner's jobs in
-- a state other than succeeded (as the SQLite store's partial index: a job that ends well
-- leaves it, and nearly all do). A job name filters the owner's walk (a handful of names).
local function owner_key(owner)
  return P .. 'owner:' .. #owner .. ':' .. owner
end

local function unindex_state(owner, state, id)
  if state and state ~= 'succeeded' then
    redis.call('ZREM', owner_key(owner) .. ':state:' .. state, id)
  end
end

local function index_state(owner, state, id)
  if state ~= 'succeeded' then
    redis.call('ZADD', owner_key(owner) .. ':state:' .. state, 0, id)
  end
end

-- A job's state changes here only (after it is stored), so the indexes follow it.
local function set_state(job, id, state)
  local h = redis.call('HMGET', job, 'owner', 'state')
  if h[2] ~= state then
    unindex_state(h[1], h[2], id)
    index_state(h[1], state, id)
  end
  redis.call('HSET', job, 'state', state)
end

-- A new job (its owner, name and state set) enters the indexes.
local function index_new(job, id)
  local h = redis.call('HMGET', job, 'owner', 'state')
  redis.call('ZADD', P .. 'jobs', 0, id)
  redis.call('ZADD', owner_key(h[1]), 0, id)
  index_state(h[1], h[2], id)
end

local function ensure_group(stream)
  -- BUSYGROUP (it exists) is the usual answer; pcall keeps it from ending the script.
  redis.pcall('XGROUP', 'CREATE', stream, G, '0', 'MKSTREAM')
end

-- Only these scripts add to RUN, each after ensure_running(): if it exists, so does its group.
local function ensure_running()
  if redis.call('EXISTS', RUN) == 0 then ensure_group(RUN) end
end

local function drop_entry(job)
  local e = redis.call('HGET', job, 'entry')
  if e then
    local s = redis.call('HGET', job, 'stream')
    redis.call('XACK', s, G, e)
    redis.call('XDEL', s, e)
    redis.call('HDEL', job, 'entry', 'stream', 'holder')
  end
end

local function enqueue(job, id)
  local q = P .. 'queue:' .. redis.call('HGET', job, 'pool')
  local e = redis.call('XADD', q, '*', 'job', id)
  redis.call('HSET', job, 'entry', e, 'stream', q)
  return e
end

-- The job leaves queued/running for good: its owner has one job fewer in flight. A job
-- stored before the count existed may find none: the count never goes below zero.
local function count_out(job)
  local owner = redis.call('HGET', job, 'owner')
  if owner and redis.call('HINCRBY', INFLIGHT, owner, -1) <= 0 then
    redis.call('HDEL', INFLIGHT, owner)
  end
end

-- queued -> running for consumer `me`: one more attempt, and a lease entry of its own.
local function start(job, id, me, now)
  drop_entry(job)
  set_state(job, id, 'running')
  redis.call('HSET', job, 'started', now)
  redis.call('HINCRBY', job, 'attempts', 1)
  local e = redis.call('XADD', RUN, '*', 'job', id)
  redis.call('XCLAIM', RUN, G, me, 0, e, 'FORCE', 'JUSTID')
  redis.call('HSET', job, 'entry', e, 'stream', RUN, 'holder', me)
  return e
end

-- Item results with a key (a parcel's id): the newest job's value wins. Each expires at
-- `expires` (ms): the result TTL after its job was made, as its job's own row would.
local function write_items(id, expires, i)
  local n = tonumber(ARGV[i])
  for k = i + 1, i + 2 * n, 2 do
    local key, value = ARGV[k], ARGV[k + 1]
    local holder = redis.call('HGET', key, 'job')
    if not holder or holder <= id then
      redis.call('HSET', key, 'job', id, 'value', value)
      redis.call('PEXPIREAT', key, expires)
    end
  end
  return i + 1 + 2 * n
end

-- Scheduled jobs whose time has come (`now`, seconds) go to their queues, at most `n`;
-- once queued they count in flight, as a queued job does. Returns how many moved.
local function promote(now, n)
  local ids = redis.call('ZRANGEBYSCORE', SCHEDULED, '-inf', now, 'LIMIT', 0, n)
  for _, id in ipairs(ids) do
    redis.call('ZREM', SCHEDULED, id)
    local job = P .. 'job:' .. id
    if may('due', redis.call('HGET', job, 'state')) then
      set_state(job, id, 'queued')
      redis.call('HINCRBY', INFLIGHT, redis.call('HGET', job, 'owner'), 1)
      enqueue(job, id)
    end
  end
  return #ids
end

-- The callbacks' outbox: a job that names one gets its delivery (fields d_* of its hash, and
-- its id in DELIVERIES, scored by when it is due) in the step that ends it.
local function outbox(job, id, now)
  if redis.call('HEXISTS', job, 'callback') == 1 then
    redis.call('HSET', job, 'd_state', 'pending', 'd_first', now, 'd_attempts', 0)
    redis.call('ZADD', DELIVERIES, now, id)
  end
end

-- A job that was running where it no longer runs goes back to its queue.
local function interrupt(e, reason)
  local entry = redis.call('XRANGE', RUN, e, e)
  redis.call('XACK', RUN, G, e)
  redis.call('XDEL', RUN, e)
  if not entry[1] then return 0 end
  local id = entry[1][2][2]
  local job = P .. 'job:' .. id
  local state = redis.call('HGET', job, 'state')
  if redis.call('HGET', job, 'entry') ~= e or not may('requeue', state) then return 0 end
  redis.call('HDEL', job, 'entry', 'stream', 'holder')
  set_state(job, id, 'queued')
  redis.call('HSET', job, 'error', reason, 'interrupted', '1')
  redis.call('HINCRBY', job, 'interruptions', 1)
  enqueue(job, id)
  return 1
end
"""
)

#: ARGV: prefix, id, pool, want (running 1, queued 0, scheduled s, ended f), queue max,
#: consumer, now (the time it may start, for a scheduled job; its end, for an ended one),
#: owner, owner's cap of jobs in flight (0: none), idempotency key ('' for none), its
#: fingerprint, its time to live (ms), items' expiry (ms), n items, key, value, … (an
#: ended batch's keyed results), field, value, … Returns {state, entry}: running (leased
#: by the consumer), queued, scheduled, succeeded or failed (stored ended), or not stored:
#: {full, jobs waiting}, {client_limit, in flight}, or {taken, job id, fingerprint} (the
#: key names another job: the check and the write are one step).
ADD = r"""
local id, pool, want, qmax, me, now = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local owner, cap = ARGV[8], tonumber(ARGV[9])
local idem, fingerprint, ttl = ARGV[10], ARGV[11], ARGV[12]
local job = P .. 'job:' .. id
if redis.call('EXISTS', job) == 1 then  -- a retry of an add that was stored
  return {redis.call('HGET', job, 'state'), redis.call('HGET', job, 'entry') or ''}
end
if idem ~= '' then
  local held = redis.call('HMGET', idem, 'job', 'fingerprint')
  if held[1] then return {'taken', held[1], held[2]} end
end
local fields = write_items(id, ARGV[13], 14)  -- none but for an ended job
-- Past every refusal below, the job is stored: its key with it.
local function keep_key()
  if idem ~= '' then
    redis.call('HSET', idem, 'job', id, 'fingerprint', fingerprint)
    redis.call('PEXPIRE', idem, ttl)
  end
end
if want == 'f' then  -- its work was done as it was accepted: never in flight
  redis.call('HSET', job, 'pool', pool, 'attempts', 1, 'finished', now, unpack(ARGV, fields))
  index_new(job, id)
  keep_key()
  redis.call('ZADD', P .. 'finished', now, id)
  outbox(job, id, now)
  return {redis.call('HGET', job, 'state'), ''}
end
if want == 's' then  -- not in flight until it is due (promote counts it then)
  redis.call('HSET', job, 'pool', pool, 'state', 'scheduled', 'attempts', 0, 'not_before', now,
             unpack(ARGV, fields))
  index_new(job, id)
  keep_key()
  redis.call('ZADD', SCHEDULED, now, id)
  return {'scheduled', ''}
end
if cap > 0 then
  local held = tonumber(redis.call('HGET', INFLIGHT, owner) or '0')
  if held >= cap then return {'client_limit', tostring(held)} end
end
local waiting = redis.call('XLEN', P .. 'queue:' .. pool)
if want == '1' and waiting == 0 then
  ensure_running()
  redis.call('HSET', job, 'pool', pool, 'state', 'running', 'attempts', 0, unpack(ARGV, fields))
  redis.call('HINCRBY', INFLIGHT, owner, 1)
  index_new(job, id)
  keep_key()
  return {'running', start(job, id, me, now)}
end
if waiting >= qmax then
  return {'full', tostring(waiting)}
end
redis.call('HSET', job, 'pool', pool, 'state', 'queued', 'attempts', 0, unpack(ARGV, fields))
redis.call('HINCRBY', INFLIGHT, owner, 1)
index_new(job, id)
keep_key()
return {'queued', enqueue(job, id)}
"""

#: ARGV: prefix, id, consumer, now. Returns the lease entry, or false if not queued.
START = r"""
local job = P .. 'job:' .. ARGV[2]
if not may('start', redis.call('HGET', job, 'state')) then return false end
ensure_running()
return start(job, ARGV[2], ARGV[3], ARGV[4])
"""

#: ARGV: prefix, consumer, now, then pool, count pairs.
#: Returns {{jobs left waiting per pool}, {{id, hash fields}, …}} of the jobs it started.
CLAIM = r"""
local me, now = ARGV[2], ARGV[3]
local left, started = {}, {}
promote(now, 1000)
ensure_running()
for i = 4, #ARGV, 2 do
  local q, n = P .. 'queue:' .. ARGV[i], tonumber(ARGV[i + 1])
  if n > 0 and redis.call('XLEN', q) > 0 then
    ensure_group(q)
    local got = redis.call('XREADGROUP', 'GROUP', G, me, 'COUNT', n, 'STREAMS', q, '>')
    if got then
      for _, entry in ipairs(got[1][2]) do
        local e, id = entry[1], entry[2][2]
        local job = P .. 'job:' .. id
        redis.call('XACK', q, G, e)
        redis.call('XDEL', q, e)
        if field(job, 'entry') == e and may('start', field(job, 'state')) then
          redis.call('HDEL', job, 'entry', 'stream')
          start(job, id, me, now)
          started[#started + 1] = {id, redis.call('HGETALL', job)}
        end
      end
    end
  end
  left[#left + 1] = redis.call('XLEN', q)
end
return {left, started}
"""

#: ARGV: prefix, id, done, failed, items' expiry (ms), n items, key, value, …
PROGRESS = r"""
local id = ARGV[2]
local job = P .. 'job:' .. id
write_items(id, ARGV[5], 6)
if redis.call('EXISTS', job) == 1 then
  redis.call('HSET', job, 'done', ARGV[3], 'failed', ARGV[4])
end
return 1
"""

#: ARGV: prefix, id, state, now, items' expiry (ms), n items, key, value, …, n set, field, value, …,
#: n del, field, … Only a queued or running job ends; returns the state it had.
FINISH = r"""
local id, state, now = ARGV[2], ARGV[3], ARGV[4]
local job = P .. 'job:' .. id
local i = write_items(id, ARGV[5], 6)
local was = redis.call('HGET', job, 'state')
if not may('finish', was) then return was or false end
drop_entry(job)
count_out(job)
redis.call('SREM', STOPS, id)
local n = tonumber(ARGV[i])
if n > 0 then redis.call('HSET', job, unpack(ARGV, i + 1, i + 2 * n)) end
i = i + 1 + 2 * n
n = tonumber(ARGV[i])
if n > 0 then redis.call('HDEL', job, unpack(ARGV, i + 1, i + n)) end
set_state(job, id, state)
redis.call('HSET', job, 'finished', now)
redis.call('ZADD', P .. 'finished', now, id)
outbox(job, id, now)
return was
"""

#: ARGV: prefix, id, consumer, error or '' (none). running -> queued, if still this
#: consumer's; it goes to the back of its queue.
REQUEUE = r"""
local id = ARGV[2]
local job = P .. 'job:' .. id
if not may('requeue', field(job, 'state')) or field(job, 'holder') ~= ARGV[3] then return 0 end
drop_entry(job)
set_state(job, id, 'queued')
redis.call('HDEL', job, 'interrupted')  -- cut off by a shutdown, not a crash
if ARGV[4] == '' then
  redis.call('HDEL', job, 'error')
else
  redis.call('HSET', job, 'error', ARGV[4])
end
enqueue(job, id)
return 1
"""

#: ARGV: prefix, id, now. scheduled or queued -> cancelled; a running job is asked to stop
#: (its holder finds it in ``stops``). Returns the state after, or false (no such job).
CANCEL = r"""
local id, now = ARGV[2], ARGV[3]
local job = P .. 'job:' .. id
local state = redis.call('HGET', job, 'state')
if state == 'running' then
  if redis.call('HSETNX', job, 'cancel_requested_at', now) == 1 then
    redis.call('SADD', STOPS, id)
  end
  return state
end
if not may('cancel', state) then return state or false end
if state == 'scheduled' then
  redis.call('ZREM', SCHEDULED, id)  -- not in flight: nothing to count out
else
  drop_entry(job)
  count_out(job)
end
set_state(job, id, 'cancelled')
redis.call('HSET', job, 'finished', now, 'cancelled_how', 'dequeued')
redis.call('ZADD', P .. 'finished', now, id)
outbox(job, id, now)
return 'cancelled'
"""

#: ARGV: prefix, id, consumer, not before, error, failed attempts (JSON). running ->
#: scheduled for its next attempt, if still this consumer's; out of flight until it is due.
RETRY = r"""
local id = ARGV[2]
local job = P .. 'job:' .. id
if not may('retry', field(job, 'state')) or field(job, 'holder') ~= ARGV[3] then return 0 end
drop_entry(job)
count_out(job)
set_state(job, id, 'scheduled')
redis.call('HSET', job, 'not_before', ARGV[4], 'error', ARGV[5],
           'failed_attempts', ARGV[6])
redis.call('ZADD', SCHEDULED, ARGV[4], id)
return 1
"""

#: ARGV: prefix, now. Scheduled jobs whose time has come go to their queues.
PROMOTE = r"""
return promote(ARGV[2], 1000)
"""

#: ARGV: prefix, id, progress (JSON). Kept while the job runs.
REPORT = r"""
local job = P .. 'job:' .. ARGV[2]
if field(job, 'state') == 'running' then redis.call('HSET', job, 'progress', ARGV[3]) end
return 1
"""

#: ARGV: prefix, consumer, reason, count. The running entries still pending for this
#: consumer name (left by the process that had it before) go back to their queues.
RECOVER_MINE = r"""
local me, reason, count = ARGV[2], ARGV[3], tonumber(ARGV[4])
ensure_group(RUN)
local n = 0
local pending = redis.call('XPENDING', RUN, G, '-', '+', count, me)
for _, p in ipairs(pending) do
  n = n + interrupt(p[1], reason)
end
return {n, #pending}
"""

#: ARGV: prefix, consumer, reason, lease ms, count, stale consumer ms, pool, …
#: Entries idle longer than the lease: running ones go back to their queues; queue entries
#: read but never acknowledged are put back. Consumers with nothing pending, idle for long,
#: are forgotten. Returns the number of jobs put back.
RECOVER_IDLE = r"""
local me, reason, lease = ARGV[2], ARGV[3], ARGV[4]
local count, stale = tonumber(ARGV[5]), tonumber(ARGV[6])
ensure_group(RUN)
local n, cursor, rounds = 0, '0-0', 0
repeat
  local r = redis.call('XAUTOCLAIM', RUN, G, me, lease, cursor, 'COUNT', count, 'JUSTID')
  cursor = r[1]
  for _, e in ipairs(r[2]) do n = n + interrupt(e, reason) end
  rounds = rounds + 1
until cursor == '0-0' or rounds >= 10
for i = 7, #ARGV do
  local q = P .. 'queue:' .. ARGV[i]
  if redis.call('EXISTS', q) == 1 then
    ensure_group(q)
    local r = redis.call('XAUTOCLAIM', q, G, me, lease, '0-0', 'COUNT', count)
    for _, entry in ipairs(r[2]) do
      local e, id = entry[1], entry[2][2]
      redis.call('XACK', q, G, e)
      redis.call('XDEL', q, e)
      local job = P .. 'job:' .. id
      if field(job, 'entry') == e and field(job, 'state') == 'queued' then
        enqueue(job, id)
        n = n + 1
      end
    end
  end
end
for _, stream in ipairs({RUN}) do
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, G)) do
    local info = {}
    for k = 1, #c, 2 do info[c[k]] = c[k + 1] end
    if info['pending'] == 0 and info['idle'] > stale and info['name'] ~= me then
      redis.call('XGROUP', 'DELCONSUMER', stream, G, info['name'])
    end
  end
end
return n
"""

#: ARGV: prefix, consumer, entry, … Resets the idle time of the entries this consumer still
#: holds; returns those it no longer holds (another worker took them over).
RENEW = r"""
local me = ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local e = ARGV[i]
  local p = redis.call('XPENDING', RUN, G, e, e, 1)
  if p[1] and p[1][2] == me then
    redis.call('XCLAIM', RUN, G, me, 0, e, 'JUSTID')
  else
    lost[#lost + 1] = e
  end
end
return lost
"""

#: ARGV: prefix, cutoff, limit. Deletes jobs finished before the cutoff (item results
#: expire by themselves); returns how many.
PURGE = r"""
local cutoff, limit = ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local job = P .. 'job:' .. id
  local h = redis.call('HMGET', job, 'owner', 'state')
  if h[1] then
    redis.call('ZREM', owner_key(h[1]), id)
    unindex_state(h[1], h[2], id)
  end
  redis.call('ZREM', P .. 'jobs', id)
  redis.call('ZREM', DELIVERIES, id)
  redis.call('DEL', job)
  redis.call('ZREM', P .. 'finished', id)
end
return #ids
"""

#: ARGV: prefix, least ms between two recounts in the fleet, pool, … Counts each owner's
#: jobs in flight again from the streams and puts the counts in place of the kept ones;
#: returns how many jobs it counted, or -1 when another worker recounted lately.
RECOUNT = r"""
if not redis.call('SET', P .. 'recounted', '1', 'NX', 'PX', ARGV[2]) then return -1 end
local counts, total = {}, 0
local function count(stream, state)
  if redis.call('EXISTS', stream) == 0 then return end
  for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+')) do
    local job = P .. 'job:' .. entry[2][2]
    local h = redis.call('HMGET', job, 'entry', 'state', 'owner')
    if h[1] == entry[1] and h[2] == state and h[3] then
      counts[h[3]] = (counts[h[3]] or 0) + 1
      total = total + 1
    end
  end
end
for i = 3, #ARGV do count(P .. 'queue:' .. ARGV[i], 'queued') end
count(RUN, 'running')
redis.call('DEL', INFLIGHT)
for owner, n in pairs(counts) do redis.call('HSET', INFLIGHT, owner, n) end
return total
"""

#: ARGV: prefix, index (a sorted set of job ids), lowest id ('-' or '[id'), below ('+' or
#: '(id'), limit, states wanted (comma-separated, '' for any), name or ''. The ids of the
#: index in that range, newest first, whose job has one of the states and the name, up to
#: limit (an index of the states themselves leaves little to skip).
LIST = r"""
local key, lo, hi, limit, name = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[7]
local want = {}
for s in string.gmatch(ARGV[6], '[^,]+') do want[s] = true end
local out = {}
while #out < limit do
  local ids = redis.call('ZREVRANGEBYLEX', key, hi, lo, 'LIMIT', 0, math.max(limit, 100))
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local h = redis.call('HMGET', P .. 'job:' .. id, 'state', 'name')
    if h[1] and (ARGV[6] == '' or want[h[1]]) and (name == '' or h[2] == name) then
      out[#out + 1] = id
      if #out >= limit then break end
    end
  end
  hi = '(' .. ids[#ids]
end
return out
"""

#: ARGV: prefix, now, lease until, n. Up to n deliveries due by now, each taken for one more
#: attempt and due again at the lease's end (a host that dies mid-POST leaves it to another).
#: Returns {{id, owner, url, attempt, first, traceparent or ''}, ...}.
TAKE_DELIVERIES = r"""
local now, lease, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', DELIVERIES, '-inf', now, 'LIMIT', 0, n)) do
  local job = P .. 'job:' .. id
  local h = redis.call('HMGET', job, 'd_state', 'owner', 'callback', 'd_first', 'traceparent')
  if h[1] ~= 'pending' then
    redis.call('ZREM', DELIVERIES, id)
  else
    local attempt = redis.call('HINCRBY', job, 'd_attempts', 1)
    redis.call('HSET', job, 'd_try', attempt)
    redis.call('ZADD', DELIVERIES, lease, id)
    out[#out + 1] = {id, h[2], h[3], attempt, h[4], h[5] or ''}
  end
end
return out
"""

#: ARGV: prefix, id, attempt, state, next at ('' unless pending), status (''), error (''),
#: now. The outcome of that attempt, if it is still the one in flight; returns 1, else 0.
SETTLE_DELIVERY = r"""
local id, try, state, next_at = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local status, err, now = ARGV[6], ARGV[7], ARGV[8]
local job = P .. 'job:' .. id
local h = redis.call('HMGET', job, 'd_state', 'd_try')
if h[1] ~= 'pending' or h[2] ~= try then return 0 end
redis.call('HSET', job, 'd_state', state)
local function put(name, value)
  if value == '' then redis.call('HDEL', job, name) else redis.call('HSET', job, name, value) end
end
put('d_status', status)
put('d_error', err)
if state == 'pending' then
  redis.call('ZADD', DELIVERIES, next_at, id)
else
  redis.call('ZREM', DELIVERIES, id)
end
if state == 'delivered' then redis.call('HSET', job, 'd_at', now) end
return 1
"""

#: ARGV: prefix, id, now. The job's delivery is pending again from now; 0 if it has none.
RESEND_DELIVERY = r"""
local id, now = ARGV[2], ARGV[3]
local job = P .. 'job:' .. id
if redis.call('HEXISTS', job, 'd_state') == 0 then return 0 end
redis.call('HSET', job, 'd_state', 'pending', 'd_first', now)
redis.call('HDEL', job, 'd_status', 'd_error', 'd_at', 'd_try')
redis.call('ZADD', DELIVERIES, now, id)
return 1
"""

SCRIPTS = {
    "list": LIST,
    "add": ADD,
    "start": START,
    "claim": CLAIM,
    "progress": PROGRESS,
    "finish": FINISH,
    "requeue": REQUEUE,
    "cancel": CANCEL,
    "retry": RETRY,
    "promote": PROMOTE,
    "report": REPORT,
    "recover_mine": RECOVER_MINE,
    "recover_idle": RECOVER_IDLE,
    "renew": RENEW,
    "purge": PURGE,
    "recount": RECOUNT,
    "take_deliveries": TAKE_DELIVERIES,
    "settle_delivery": SETTLE_DELIVERY,
    "resend_delivery": RESEND_DELIVERY,
}
