"""The Lua scripts behind RedisStore: every change to more than one key is one script.

Redis runs a script to completion before any other command, so each one is a
transaction that replicas cannot interleave with: two replicas cannot both
claim a task, a cancel cannot land between a claim and its lease, and the
counters always agree with the sets they count.

Conventions, shared through PRELUDE:
- ARGV[1] is the key prefix. A script builds key names from it (the same names
  as `keys.RedisKeys`) because most of them depend on data it reads first: a
  task's client decides which per-client sets to touch. Redis allows that on a
  single server or a replicated primary; Redis Cluster is not supported (a
  task's keys would live on different nodes).
- Times for leases come from the server's TIME, so replicas with skewed clocks
  still agree on when a lease ends. Lease deadlines are milliseconds (with a
  fraction) since the epoch.
- A task's fields are those written by `store._task_fields`; scripts read only
  the scalar ones (state, prio, seq, client, created_at, crashes, attempts,
  idem) and never parse the JSON ones. Scripts add one of their own: `tag`,
  the task's virtual start tag in its priority level (see `enqueue`).
- Every change to P:queue goes through `enqueue`, `unqueue` or CLAIM, which keep
  in step with it each tenant's lane (P:client:{id}:queue, its waiting tasks with
  the same scores), the lanes' heads (P:heads) and the per-tenant waiting counts
  (P:tenant_waiting). CLAIM walks the heads, so it passes over a tenant that is
  over its share of the rate limit in one step, whatever its backlog.
- A reply holding a task is the flat HGETALL list, decoded by the store.
- Numbers that must stay exact on the way back (scores, timestamps) are
  returned as strings: Lua numbers reach the client as truncated integers.
"""

from __future__ import annotations

PRELUDE = """
local P = ARGV[1]
local QUEUE = P .. ':queue'
local LEASES = P .. ':leases'
local SEQ = P .. ':seq'
local TASKS = P .. ':tasks'
local FINISHED = P .. ':finished'
local DONE = P .. ':done'
local UNDELIVERED = P .. ':undelivered'
local WAKE = P .. ':wake'
local FEED = P .. ':feed'
local TENANT_WAITING = P .. ':tenant_waiting'
local LAST_TAG = P .. ':last_tag'
local VIRTUAL_TIME = P .. ':virtual_time'
local HEADS = P .. ':heads'

local function task_key(id) return P .. ':task:' .. id end
local function client_tasks_key(client) return P .. ':client:' .. client .. ':tasks' end
local function pending_key(client) return P .. ':client:' .. client .. ':pending' end
local function lane_key(client) return P .. ':client:' .. client .. ':queue' end
local function share_key(client) return P .. ':client:' .. client .. ':share' end

-- keys.queue_score: higher priority first, then the virtual tag; exact below 2^53.
local BAND = 17592186044416
local function queue_score(prio, tag) return (5 - prio) * BAND + tag end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function now_ms() return now_us() / 1000 end

-- A tenant's score in HEADS is that of its first waiting task; with none, it is not there.
local function update_head(client)
  local first = redis.call('ZRANGE', lane_key(client), 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', HEADS, first[2], client)
  else
    redis.call('ZREM', HEADS, client)
  end
end

-- Makes a task wait. Within a priority level tenants take turns (start-time fair
-- queuing, as core/queue.py): a task's tag is its tenant's last tag in the level or the
-- level's virtual time (the highest tag claimed there), whichever is later, plus one.
-- With `keep_place` a task that was claimed but not run goes back to the tag it had, so
-- it leaves again first.
local function enqueue(id, key, keep_place)
  local f = redis.call('HMGET', key, 'prio', 'client', 'tag')
  local prio, client, tag = tonumber(f[1]), f[2], tonumber(f[3])
  if not (keep_place and tag) then
    local level = prio .. '|' .. client
    tag = math.max(tonumber(redis.call('HGET', VIRTUAL_TIME, prio) or '0'),
                   tonumber(redis.call('HGET', LAST_TAG, level) or '0')) + 1
    redis.call('HSET', LAST_TAG, level, tag)
    redis.call('HSET', key, 'tag', tag)
  end
  local score = queue_score(prio, tag)
  if redis.call('ZADD', QUEUE, score, id) == 1 then
    redis.call('HINCRBY', TENANT_WAITING, client, 1)
  end
  redis.call('ZADD', lane_key(client), score, id)
  update_head(client)
end

-- Books out of its tenant's lane a task of `client` that left P:queue, and counts it. A
-- tenant with nothing left waiting forgets its tags, so tenants that come and go leave
-- nothing behind.
local function left_queue(id, client)
  redis.call('ZREM', lane_key(client), id)
  update_head(client)
  if redis.call('HINCRBY', TENANT_WAITING, client, -1) <= 0 then
    redis.call('HDEL', TENANT_WAITING, client)
    for prio = 1, 4 do
      redis.call('HDEL', LAST_TAG, prio .. '|' .. client)
    end
  end
end

-- Takes a task out of the queue if it waits there.
local function unqueue(id, key)
  if redis.call('ZREM', QUEUE, id) == 1 then
    left_queue(id, redis.call('HGET', key, 'client'))
  end
end

local function waiting_of(client)
  return tonumber(redis.call('HGET', TENANT_WAITING, client) or '0')
end

local function undelivered() return tonumber(redis.call('GET', UNDELIVERED) or '0') end

local function is_live(state) return state == 'queued' or state == 'running' end
"""

PUT = (
    PRELUDE
    + """
-- ARGV: prefix, task id, client id, idempotency key name ('' if none), its TTL in ms,
--       then the task's fields as name, value pairs (including state, prio and seq).
-- Replaces any task with this id, as MemoryStore.put does.
local id, client, idem, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = task_key(id)
local old_client = redis.call('HGET', key, 'client')
if old_client and old_client ~= client then
  redis.call('ZREM', client_tasks_key(old_client), id)
end
unqueue(id, key)
redis.call('DEL', key)
redis.call('HSET', key, unpack(ARGV, 6))
local f = redis.call('HMGET', key, 'state', 'prio', 'seq')
local seq = tonumber(f[3])
redis.call('ZADD', TASKS, seq, id)
redis.call('ZADD', client_tasks_key(client), seq, id)
if f[1] == 'queued' then
  enqueue(id, key, false)
  redis.call('PUBLISH', WAKE, '1')
end
-- A sequence handed out later by ADMIT must not repeat this one.
if tonumber(redis.call('GET', SEQ) or '0') < seq then
  redis.call('SET', SEQ, seq)
end
if idem ~= '' then
  redis.call('SET', idem, id, 'PX', ttl)
end
return 1
"""
)

ADMIT = (
    PRELUDE
    + """
-- ARGV: prefix, task id, client id, idempotency key name ('' if none), its TTL in ms,
--       capacity, not_before (the oldest created_at an earlier task may have to count as
--       a repeat; '' for any), the client's own limit of waiting tasks (0: none), then the
--       task's fields as name, value pairs (without seq).
-- Returns {0, id, fields} for a repeat (the earlier task), {-1, waiting} when full,
-- {-2, waiting} when the client's own limit is reached, {1, sequence} for a new task.
local id, client, idem, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local capacity, not_before, tenant_limit = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
if idem ~= '' then
  local earlier = redis.call('GET', idem)
  if earlier then
    local ekey = task_key(earlier)
    local created = redis.call('HGET', ekey, 'created_at')
    if created and (not_before == '' or tonumber(created) >= tonumber(not_before)) then
      return {0, earlier, redis.call('HGETALL', ekey)}
    end
  end
end
local waiting = redis.call('ZCARD', QUEUE)
if waiting >= capacity then
  return {-1, waiting}
end
if tenant_limit > 0 and waiting_of(client) >= tenant_limit then
  return {-2, waiting_of(client)}
end
local seq = redis.call('INCR', SEQ)
local key = task_key(id)
redis.call('DEL', key)
redis.call('HSET', key, 'seq', seq, unpack(ARGV, 9))
redis.call('ZADD', TASKS, seq, id)
redis.call('ZADD', client_tasks_key(client), seq, id)
enqueue(id, key, false)
if idem ~= '' then
  redis.call('SET', idem, id, 'PX', ttl)
end
redis.call('PUBLISH', WAKE, '1')
return {1, seq}
"""
)

MARK_RUNNING = (
    PRELUDE
    + """
-- ARGV: prefix, task id, started_at. Returns the task's fields, or nil if it is not QUEUED;
-- then whoever claimed it must not run it, so its lease goes too.
local id = ARGV[2]
local key = task_key(id)
if redis.call('HGET', key, 'state') ~= 'queued' then
  redis.call('ZREM', LEASES, id)
  return false
end
redis.call('HSET', key, 'state', 'running', 'started_at', ARGV[3])
unqueue(id, key)
return redis.call('HGETALL', key)
"""
)

RECORD_ATTEMPT = (
    PRELUDE
    + """
-- ARGV: prefix, task id. A plain HINCRBY would bring an expired task back as a stub.
local key = task_key(ARGV[2])
if redis.call('EXISTS', key) == 1 then
  redis.call('HINCRBY', key, 'attempts', 1)
end
return 1
"""
)

FINISH = (
    PRELUDE
    + """
-- ARGV: prefix, task id, terminal state, finished_at, result JSON, the result's attempts,
--       the finishing replica's origin stamp.
-- Returns {1 if finished (0 if unknown or already terminal), undelivered count, and (when
-- finished) the kept result's attempts}.
-- The news goes to the other replicas in the same step, so a replica dying right after
-- finishing a task cannot leave a subscriber elsewhere waiting for its result.
local id = ARGV[2]
local key = task_key(id)
local f = redis.call('HMGET', key, 'state', 'attempts', 'client')
if not is_live(f[1]) then
  return {0, undelivered()}
end
-- The result counts every provider call recorded against the task, as MemoryStore's does.
local attempts = math.max(tonumber(ARGV[6]), tonumber(f[2] or '0'))
redis.call('HSET', key, 'state', ARGV[3], 'finished_at', ARGV[4], 'result', ARGV[5],
           'result_attempts', attempts)
unqueue(id, key)
redis.call('ZREM', LEASES, id)
redis.call('ZADD', FINISHED, ARGV[4], id)
redis.call('ZADD', pending_key(f[3]), redis.call('INCR', DONE), id)
redis.call('PUBLISH', FEED, ARGV[7] .. ' ' .. cjson.encode({k = 'result', t = id, c = f[3]}))
return {1, redis.call('INCR', UNDELIVERED), attempts}
"""
)

PENDING_RESULTS = (
    PRELUDE
    + """
-- ARGV: prefix, client id, 'all' or 'some', then (for 'some') distinct task ids.
-- Returns result JSON, result attempts, ... in completion order.
local pkey = pending_key(ARGV[2])
local ids
if ARGV[3] == 'all' then
  ids = redis.call('ZRANGE', pkey, 0, -1)
else
  local found = {}
  for i = 4, #ARGV do
    local order = redis.call('ZSCORE', pkey, ARGV[i])
    if order then
      found[#found + 1] = {tonumber(order), ARGV[i]}
    end
  end
  table.sort(found, function(a, b) return a[1] < b[1] end)
  ids = {}
  for i, entry in ipairs(found) do ids[i] = entry[2] end
end
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', task_key(id), 'result', 'result_attempts')
  if r[1] then
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
  end
end
return out
"""
)

ACK = (
    PRELUDE
    + """
-- ARGV: prefix, client id, task ids... Returns {how many were pending, undelivered count}.
local pkey = pending_key(ARGV[2])
local removed = 0
for i = 3, #ARGV do
  removed = removed + redis.call('ZREM', pkey, ARGV[i])
end
if removed == 0 then
  return {0, undelivered()}
end
return {removed, redis.call('DECRBY', UNDELIVERED, removed)}
"""
)

REQUEUE = (
    PRELUDE
    + """
-- ARGV: prefix, task id, '1' to count a crash. Returns {undelivered count, fields},
-- or nil if the task is unknown. Its result, if any, is forgotten, delivered or not.
local id = ARGV[2]
local key = task_key(id)
local client = redis.call('HGET', key, 'client')
if not client then
  return false
end
local count
if redis.call('ZREM', pending_key(client), id) == 1 then
  count = redis.call('DECR', UNDELIVERED)
else
  count = undelivered()
end
redis.call('ZREM', FINISHED, id)
redis.call('ZREM', LEASES, id)
redis.call('HSET', key, 'state', 'queued')
redis.call('HDEL', key, 'started_at', 'finished_at', 'result', 'result_attempts')
if ARGV[3] == '1' then
  redis.call('HINCRBY', key, 'crashes', 1)
end
enqueue(id, key, false)
redis.call('PUBLISH', WAKE, '1')
return {count, redis.call('HGETALL', key)}
"""
)

SCAN_TASKS = (
    PRELUDE
    + """
-- ARGV: prefix, index (a ZSET of task ids by sequence), the last id of the previous page
--       ('' to start), its score, page size, most tasks to return (0: no limit), then the
--       states wanted (none: any).
-- Returns {1 if no ids are left after this page (else 0), last id examined, its score,
--          id, fields, id, fields, ...}.
-- Pages keep a script short when there are many tasks. A page starts after the previous
-- one's last id; if that id went meanwhile (expired), at its score, and the caller drops
-- the ids it has already seen.
local index, after, after_score = ARGV[2], ARGV[3], ARGV[4]
local size, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local wanted, any = {}, #ARGV < 7
for i = 7, #ARGV do wanted[ARGV[i]] = true end
local start = 0
if after ~= '' then
  local rank = redis.call('ZRANK', index, after)
  if rank then
    start = rank + 1
  else
    start = redis.call('ZCOUNT', index, '-inf', '(' .. after_score)
  end
end
local page = redis.call('ZRANGE', index, start, start + size - 1, 'WITHSCORES')
local out = {0, after, after_score}
local examined, found = 0, 0
for i = 1, #page, 2 do
  local id = page[i]
  examined, out[2], out[3] = examined + 1, id, page[i + 1]
  local key = task_key(id)
  if any or wanted[redis.call('HGET', key, 'state')] then
    local fields = redis.call('HGETALL', key)
    if #fields > 0 then
      out[#out + 1] = id
      out[#out + 1] = fields
      found = found + 1
      if found == limit then break end
    end
  end
end
-- A short page read to its end is the end of the index; one cut short by the limit is not.
if examined == #page / 2 and examined < size then
  out[1] = 1
end
return out
"""
)

EXPIRE = (
    PRELUDE
    + """
-- ARGV: prefix, cutoff (finished_at at or before it expires), most tasks to look at.
-- Returns {tasks expired, finished entries looked at, undelivered count}.
local ids = redis.call('ZRANGEBYSCORE', FINISHED, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local expired = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', FINISHED, id)
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'client', 'idem')
  if f[1] then
    expired = expired + 1
    -- The key may name a newer task by now (after the idempotency window).
    if f[2] and redis.call('GET', f[2]) == id then
      redis.call('DEL', f[2])
    end
    if redis.call('ZREM', pending_key(f[1]), id) == 1 then
      redis.call('DECR', UNDELIVERED)
    end
    redis.call('ZREM', TASKS, id)
    redis.call('ZREM', client_tasks_key(f[1]), id)
    unqueue(id, key)
    redis.call('ZREM', LEASES, id)
    redis.call('DEL', key)
  end
end
return {expired, #ids, undelivered()}
"""
)

# -- Queue operations: the claims and leases replicas hand tasks around with --------------

CLAIM = (
    PRELUDE
    + """
-- ARGV: prefix, most ids to take, lease in ms, then the tenants' shares of the rate limit
--       (resilience/rate_share.py) in microseconds: the default interval and tolerance
--       (interval 0: no cap), then tenant, interval, tolerance for each tenant with a share
--       of its own.
-- Returns {microseconds until the first tenant passed over may start (-1: none was), the
--          ids, first to run first}.
-- Each id is leased: if this replica dies, RECLAIM puts it back once the lease ends.
-- Tenants are looked at in the order of their first waiting task (HEADS), which is the
-- queue's order, so taking each one's first task takes P:queue's lowest scores. A tenant
-- over its share keeps its place and is passed over; the next tenant's task is taken.
-- A share is a GCRA on Redis's clock (cluster/rate_limiter.py, without booking ahead): the
-- tenant may start when TAT - tolerance <= now; a start books TAT = max(TAT, now) +
-- interval, in a key that expires once the TAT has passed.
local want = tonumber(ARGV[2])
local now = now_us()
local deadline = now / 1000 + tonumber(ARGV[3])
local default = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local own = {}
for i = 6, #ARGV, 3 do
  own[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}
end
local out = {-1}
local rank = 0
while #out - 1 < want do
  local client = redis.call('ZRANGE', HEADS, rank, rank)[1]
  if not client then break end
  local share = own[client] or default
  local tat = now
  if share[1] > 0 then
    tat = math.max(tonumber(redis.call('GET', share_key(client)) or '0'), now)
  end
  local ready = tat - share[2]
  if ready > now then
    if out[1] < 0 or ready - now < out[1] then out[1] = ready - now end
    rank = rank + 1
  else
    if share[1] > 0 then
      tat = tat + share[1]
      redis.call('SET', share_key(client), string.format('%.0f', tat),
                 'PX', math.ceil((tat - now) / 1000))
    end
    local first = redis.call('ZRANGE', lane_key(client), 0, 0, 'WITHSCORES')
    local id = first[1]
    local prio = tonumber(redis.call('HGET', task_key(id), 'prio'))
    local tag = tonumber(first[2]) - (5 - prio) * BAND
    if tag > tonumber(redis.call('HGET', VIRTUAL_TIME, prio) or '0') then
      redis.call('HSET', VIRTUAL_TIME, prio, tag)
    end
    redis.call('ZREM', QUEUE, id)
    left_queue(id, client)
    redis.call('ZADD', LEASES, deadline, id)
    out[#out + 1] = id
  end
end
return out
"""
)

RENEW = (
    PRELUDE
    + """
-- ARGV: prefix, lease in ms, task ids... Extends the leases still held; XX: a lease that
-- was reclaimed or ended stays ended. Returns how many were renewed.
local deadline = now_ms() + tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', LEASES, 'XX', 'CH', deadline, ARGV[i])
end
return renewed
"""
)

UNCLAIM = (
    PRELUDE
    + """
-- ARGV: prefix, task id. A claimed task this replica will not run waits again, in the
-- place it had; unless it is no longer QUEUED (cancelled meanwhile: nothing to do). The
-- start CLAIM booked against its tenant's share stays booked: a lost slot only slows it.
local id = ARGV[2]
local key = task_key(id)
if redis.call('HGET', key, 'state') ~= 'queued' then
  return 0
end
redis.call('ZREM', LEASES, id)
enqueue(id, key, true)
redis.call('PUBLISH', WAKE, '1')
return 1
"""
)

GIVE_BACK = (
    PRELUDE
    + """
-- ARGV: prefix, task id. A RUNNING task this replica stops running (shutting down) waits
-- again, without counting a crash. Returns 1, or 0 (no change) if it is not RUNNING.
local id = ARGV[2]
local key = task_key(id)
if redis.call('HGET', key, 'state') ~= 'running' then
  return 0
end
redis.call('HSET', key, 'state', 'queued')
redis.call('HDEL', key, 'started_at')
redis.call('ZREM', LEASES, id)
enqueue(id, key, true)
redis.call('PUBLISH', WAKE, '1')
return 1
"""
)

RECLAIM = (
    PRELUDE
    + """
-- ARGV: prefix, max crashes, lease in ms, most leases to look at.
-- Ends the leases whose time is up: their replica died (or stalled). A RUNNING task waits
-- again with one more crash, unless that makes max crashes: then it is dead, re-leased to
-- the caller (who records it as failed) and returned as {id, fields, ...}. A task claimed
-- but never started waits again, no crash counted. A finished or gone one needs nothing.
local max_crashes, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local dead = {}
local requeued = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', LEASES, id)
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'state', 'crashes')
  if f[1] == 'running' then
    local crashes = tonumber(f[2] or '0')
    if crashes + 1 >= max_crashes then
      redis.call('ZADD', LEASES, now + lease, id)
      dead[#dead + 1] = id
      dead[#dead + 1] = redis.call('HGETALL', key)
    else
      redis.call('HSET', key, 'state', 'queued', 'crashes', crashes + 1)
      redis.call('HDEL', key, 'started_at')
      enqueue(id, key, true)
      requeued = requeued + 1
    end
  elseif f[1] == 'queued' then
    enqueue(id, key, true)
    requeued = requeued + 1
  end
end
if requeued > 0 then
  redis.call('PUBLISH', WAKE, '1')
end
return dead
"""
)
