//! The Lua scripts of the Redis Streams queue: every step that reads and then writes runs as
//! one script, so it is atomic on the server (see the module docs for what each does).
//!
//! Conventions: times are the server's clock (`TIME`), in milliseconds, the same clock the
//! server uses for a pending entry's idle time; a hold member is `"<group> <entry id>"`
//! (group names have no spaces); a group's options are `"<ack deadline ms> <max attempts,
//! 0 for none> <dead-letter topic or empty>"`.

use redis::Script;

/// Helpers every script that needs them starts with: the server time, stream id order, the
/// dead-lettering of one entry, and the trim to what every group has acknowledged.
macro_rules! helpers {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function sid(id)
  local a, b = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end

local function less(x, y)
  local xa, xb = sid(x)
  local ya, yb = sid(y)
  return xa < ya or (xa == ya and xb < yb)
end

local function options(cfg)
  local deadline, max, dlq = string.match(cfg, '^(%d+) (%d+) (.*)$')
  return tonumber(deadline), tonumber(max), dlq
end

-- Copies an entry to the dead-letter topic's stream (when that topic exists and has groups:
-- a topic without groups keeps nothing) and settles it for the group.
local function dead_letter(stream, group, id, fields, dlq, prefix, hold)
  if dlq ~= '' and fields then
    local target = prefix .. dlq
    if redis.call('EXISTS', target) == 1 and #redis.call('XINFO', 'GROUPS', target) > 0 then
      local copy, has_id, has_p = {}, false, false
      for i = 1, #fields, 2 do
        if fields[i] == 'i' then has_id = true elseif fields[i] == 'p' then has_p = true end
        copy[#copy + 1] = fields[i]
        copy[#copy + 1] = fields[i + 1]
      end
      if not has_id then copy[#copy + 1] = 'i'; copy[#copy + 1] = id end
      if not has_p then copy[#copy + 1] = 'p'; copy[#copy + 1] = string.match(id, '^(%d+)') end
      redis.call('XADD', target, '*', unpack(copy))
    end
  end
  redis.call('XACK', stream, group, id)
  redis.call('ZREM', hold, group .. ' ' .. id)
end

-- Trims the entries every group has acknowledged: those below the lowest of each group's
-- oldest pending entry (or, with nothing pending, the entry after its last delivered one).
-- Without groups, nothing is kept.
local function trim(stream)
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then
    redis.call('XTRIM', stream, 'MAXLEN', 0)
    return
  end
  local point = nil
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    local pending = redis.call('XPENDING', stream, name)
    local here
    if tonumber(pending[1]) > 0 then
      here = pending[2]
    else
      local a, b = sid(last)
      here = string.format('%d-%d', a, b + 1)
    end
    if point == nil or less(here, point) then point = here end
  end
  redis.call('XTRIM', stream, 'MINID', point)
end
"#
    };
}

/// KEYS: stream. Creates the (empty) stream unless it exists: a stream with a group made and
/// removed again, so no entry id is used up.
const CREATE_TOPIC: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], '__mq_init', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], '__mq_init')
end
return 0
"#;

/// KEYS: stream, groups hash, [dead-letter stream]. ARGV: group, options.
/// Returns 0, 1 (no topic), 2 (no dead-letter topic).
const CREATE_GROUP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 0 then return 2 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  -- `$`: the group sees what is published from now on. A stream group of that name left by
  -- someone else (BUSYGROUP) is kept as it is.
  redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$')
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 0
"#;

/// KEYS: stream, groups hash, cursors hash, holds. ARGV: group.
const DELETE_GROUP: &str = concat!(
    helpers!(),
    r#"
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local p = ARGV[1] .. ' '
for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if string.sub(m, 1, #p) == p then redis.call('ZREM', KEYS[4], m) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
  trim(KEYS[1])
end
return 0
"#
);

/// KEYS: stream, de-duplication set, groups hash. ARGV: window ms, then per message: its id
/// (`""`: none), the number of field pairs, the pairs. Returns the ids (the producer's, or the
/// entry id), or nil when the topic does not exist.
const PUBLISH: &str = concat!(
    helpers!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = now_ms()
local window = tonumber(ARGV[1])
local out = {}
local pruned = false
local i = 2
while i <= #ARGV do
  local id = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local fields = {}
  for j = 1, 2 * n do fields[j] = ARGV[i + 1 + j] end
  i = i + 2 + 2 * n
  if id == '' then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', unpack(fields))
  else
    if not pruned then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
      pruned = true
    end
    if not redis.call('ZSCORE', KEYS[2], id) then
      redis.call('ZADD', KEYS[2], now + window, id)
      fields[#fields + 1] = 'i'
      fields[#fields + 1] = id
      redis.call('XADD', KEYS[1], '*', unpack(fields))
    end
    out[#out + 1] = id
  end
end
if redis.call('HLEN', KEYS[3]) == 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', 0) end
return out
"#
);

/// KEYS: stream, groups hash, cursors hash, holds. ARGV: group, count, consumer, stream key
/// prefix (for the dead-letter topic). Returns `{0, ack deadline ms, {id, delivery count,
/// fields}...}`, or `{1}` (no topic), `{2}` (no group).
///
/// The housekeeping of a receive; the read of new entries (`XREADGROUP >`) is a plain command
/// pipelined after it, so that new entries do not pass through Lua (converting a batch to Lua
/// tables and back cost more server time than the read itself). Expired leases (XAUTOCLAIM
/// from the group's cursor, min idle = the ack deadline): a claimed entry held by a nack delay
/// or an extension that has not run out goes back with its delivery count and an idle time
/// that makes it claimable when the hold ends (or after another deadline); one out of attempts
/// is dead-lettered. Then the trim (before the read: what the read delivers becomes pending,
/// so the trim never reaches it either way).
const RECEIVE: &str = concat!(
    helpers!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {1} end
local cfg = redis.call('HGET', KEYS[2], ARGV[1])
if not cfg then return {2} end
local deadline, max, dlq = options(cfg)
local now = now_ms()
local want = tonumber(ARGV[2])
local out = {0, deadline}
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local cursor = redis.call('HGET', KEYS[3], ARGV[1]) or '0-0'
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[3], deadline, cursor, 'COUNT', want)
if claimed[1] ~= cursor then redis.call('HSET', KEYS[3], ARGV[1], claimed[1]) end
for _, e in ipairs(claimed[2]) do
  local id, fields = e[1], e[2]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local count = tonumber(pending[1][4])
  local member = ARGV[1] .. ' ' .. id
  local held = redis.call('ZSCORE', KEYS[4], member)
  if held and tonumber(held) > now then
    local idle = deadline - (tonumber(held) - now)
    if idle < 0 then idle = 0 end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, id, 'IDLE', idle, 'RETRYCOUNT', count - 1, 'JUSTID')
  else
    if held then redis.call('ZREM', KEYS[4], member) end
    if max > 0 and count > max then
      dead_letter(KEYS[1], ARGV[1], id, fields, dlq, ARGV[4], KEYS[4])
    else
      out[#out + 1] = {id, count, fields}
    end
  end
end
trim(KEYS[1])
return out
"#
);

/// KEYS: stream. ARGV: group, entry id, delivery count. Returns 1 (acknowledged), 0 (not
/// pending: acknowledged before), 2 (stale: delivered again since), -1 (no topic), -2 (no
/// group).
///
/// The hot path, so it does the least: the check and the XACK. A hold the entry may still
/// have is left to run out (a receive prunes holds whose time has passed; an acknowledged
/// entry is never claimed again, so its hold has no effect).
const ACK: &str = r#"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p.err then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
  return -2
end
if #p == 0 then return 0 end
if tonumber(p[1][4]) ~= tonumber(ARGV[3]) then return 2 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// KEYS: stream, groups hash, holds. ARGV: group, entry id, delivery count, ms from now at
/// which the entry is deliverable again, consumer, mode (`nack` / `extend`), stream key
/// prefix. Returns 0 (done), 1 (dead-lettered), 2 (stale), 3 (not pending), -1 (no topic),
/// -2 (no group).
///
/// The entry becomes claimable when its idle time reaches the ack deadline: the idle time is
/// set (XCLAIM IDLE, JUSTID so the delivery count stays) to `deadline - ms`, and when `ms` is
/// longer than the deadline the hold set says until when a claim must put it back.
const LEASE: &str = concat!(
    helpers!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local cfg = redis.call('HGET', KEYS[2], ARGV[1])
if not cfg then return -2 end
local deadline, max, dlq = options(cfg)
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p.err then return -2 end
if #p == 0 then return 3 end
local count = tonumber(p[1][4])
if count ~= tonumber(ARGV[3]) then return 2 end
local ms = tonumber(ARGV[4])
local member = ARGV[1] .. ' ' .. ARGV[2]
if ARGV[6] == 'nack' and ms == 0 and max > 0 and count >= max then
  local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  local fields = nil
  if #e > 0 then fields = e[1][2] end
  dead_letter(KEYS[1], ARGV[1], ARGV[2], fields, dlq, ARGV[7], KEYS[3])
  return 1
end
if ms > 0 then
  redis.call('ZADD', KEYS[3], now_ms() + ms, member)
else
  redis.call('ZREM', KEYS[3], member)
end
local idle = deadline - ms
if idle < 0 then idle = 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], 0, ARGV[2], 'IDLE', idle, 'JUSTID')
return 0
"#
);

/// The compiled scripts (each knows its SHA; `EVALSHA` falls back to loading it).
pub(super) struct Scripts {
    pub(super) create_topic: Script,
    pub(super) create_group: Script,
    pub(super) delete_group: Script,
    pub(super) publish: Script,
    pub(super) receive: Script,
    pub(super) ack: Script,
    pub(super) lease: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            create_topic: Script::new(CREATE_TOPIC),
            create_group: Script::new(CREATE_GROUP),
            delete_group: Script::new(DELETE_GROUP),
            publish: Script::new(PUBLISH),
            receive: Script::new(RECEIVE),
            ack: Script::new(ACK),
            lease: Script::new(LEASE),
        }
    }
}
