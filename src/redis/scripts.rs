//! The Lua scripts the Redis rate limiter runs, and the one call that runs
//! them: `EVALSHA`, then `EVAL` when Redis answers `NOSCRIPT` (a restarted
//! server, `SCRIPT FLUSH`, a replica promoted after a failover).
//!
//! Numbers: Redis runs Lua 5.1, whose numbers are doubles. Every time and
//! span is a whole number of microseconds below 2^53 (the limiter caps
//! spans at [`MAX_SPAN_US`], and `TIME` today is about 1.8 * 10^15 us), so
//! the arithmetic is exact; numbers going back to Redis are formatted with
//! `%.0f` (Lua's own `tostring` keeps only 14 digits).

use super::Error;
use crate::time::{BoxedDeadline, Timer, When};
use crate::unwind::{Panics, Payload, settle};
use ::redis::aio::ConnectionLike;
use ::redis::{Cmd, ErrorKind, RedisFuture, ServerErrorKind, Value};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// Every script starts by reading Redis's clock (`now`, in microseconds)
/// and defines `s(x)`, an exact decimal for a whole number (Lua's own
/// `tostring` keeps 14 digits).
macro_rules! prologue {
    () => {
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function s(x) return string.format('%.0f', x) end"#
    };
}

/// The longest period or GCRA span the scripts compute with: 2^52 us
/// (about 142 years). Longer periods are treated as this long.
pub(crate) const MAX_SPAN_US: u64 = 1 << 52;

/// A script and its SHA-1, computed once.
pub(crate) struct Lua {
    pub(crate) source: &'static str,
    pub(crate) sha: std::sync::LazyLock<String>,
}

/// The strict sliding window: a sorted set of grant stamps per key.
///
/// `KEYS[1]` the key; `ARGV`: max_calls, period (us), n, reserve (`1`: book
/// the earliest slot when refused), a member prefix unique to this call.
/// Reply `{status, wait_us, at_us}`: status 1 granted now (at = now), 2
/// reserved (granted at `at`, `wait` from now), 0 refused (`wait` until it
/// would be granted), 3 out of range (the slot would fall past 2^53 us,
/// where doubles, Lua's numbers and sorted-set scores alike, skip whole
/// numbers: refused rather than rounded). The expiry adds the period in
/// whole milliseconds, each part rounded up, so no sum passes 2^53.
///
/// A grant at `s` occupies every window `[x, x + period)` holding `s`.
/// Stamps are only ever added at or after the newest (a booked slot is in
/// the future), so the new stamps at `at` are within the quota when at most
/// `max - n` stamps are later than `at - period`: `at` is the latest of now,
/// the newest stamp, and the `(count - max + n)`-th stamp plus the period.
pub(crate) static WINDOW: Lua = Lua {
    source: concat!(
        prologue!(),
        r#"
local key = KEYS[1]
local max = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local reserve = ARGV[4] == '1'
local limit = 9007199254740992
redis.call('ZREMRANGEBYSCORE', key, '-inf', s(now - period))
local count = redis.call('ZCARD', key)
local at = now
if count > 0 then
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local newest = tonumber(last[2])
  if newest > limit then return {3, 0, 0} end
  if newest > at then at = newest end
  local j = count - max + n
  if j >= 1 then
    local oldest = redis.call('ZRANGE', key, j - 1, j - 1, 'WITHSCORES')
    if tonumber(oldest[2]) > limit - period then return {3, 0, 0} end
    local free = tonumber(oldest[2]) + period
    if free > at then at = free end
  end
end
if at > now and not reserve then
  return {0, at - now, at}
end
local score = s(at)
local args = {}
for i = 1, n do
  args[#args + 1] = score
  args[#args + 1] = ARGV[5] .. ':' .. i
  if #args >= 2000 or i == n then
    redis.call('ZADD', key, unpack(args))
    args = {}
  end
end
redis.call('PEXPIRE', key, s(math.ceil((at - now) / 1000) + math.ceil(period / 1000)))
if at > now then return {2, at - now, at} end
return {1, 0, now}
"#
    ),
    sha: std::sync::LazyLock::new(|| ::redis::Script::new(WINDOW.source).get_hash().to_owned()),
};

/// GCRA: one number per key, the theoretical arrival time (us).
///
/// `KEYS[1]` the key; `ARGV`: emission interval (us), burst, n, reserve.
/// Same reply as [`WINDOW`], and status 4 when the key holds a value that
/// is not a whole number of microseconds within the exact range (a key of
/// the user's under the prefix: left as it is).
pub(crate) static GCRA: Lua = Lua {
    source: concat!(
        prologue!(),
        r#"
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local reserve = ARGV[4] == '1'
local raw = redis.call('GET', key)
local tat = 0
if raw then
  tat = tonumber(raw)
  if tat == nil or tat ~= tat or tat < 0 or tat > 9007199254740992 or tat % 1 ~= 0 then
    return {4, 0, 0}
  end
end
if tat < now then tat = now end
if tat > 9007199254740992 - n * interval then return {3, 0, 0} end
local new_tat = tat + n * interval
local allow_at = new_tat - burst * interval
if allow_at < now then allow_at = now end
if allow_at > now and not reserve then
  return {0, allow_at - now, allow_at}
end
redis.call('SET', key, s(new_tat), 'PX', s(math.ceil((new_tat - now) / 1000)))
if allow_at > now then return {2, allow_at - now, allow_at} end
return {1, 0, now}
"#
    ),
    sha: std::sync::LazyLock::new(|| ::redis::Script::new(GCRA.source).get_hash().to_owned()),
};

/// Gives back booked slots whose waiters were dropped before their time.
///
/// `KEYS`: one per slot; `ARGV`: three per key: `w`, the member prefix and
/// n (a window: remove those members), or `g`, the arrival time the booking
/// set and its span (GCRA: roll back, only if nothing was booked or granted
/// since). Removing stamps or rolling back an untouched arrival time only
/// makes room: every grant and booking made so far was placed with the
/// slot counted, so none becomes too early.
pub(crate) static GIVE_BACK: Lua = Lua {
    source: concat!(
        prologue!(),
        r#"
for i, key in ipairs(KEYS) do
  local kind, a, b = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if kind == 'w' then
    local members = {}
    local n = tonumber(b)
    for j = 1, n do
      members[#members + 1] = a .. ':' .. j
      if #members >= 1000 or j == n then
        redis.call('ZREM', key, unpack(members))
        members = {}
      end
    end
  elseif redis.call('GET', key) == a then
    local back = tonumber(a) - tonumber(b)
    if back > now then
      redis.call('SET', key, s(back), 'PX', s(math.ceil((back - now) / 1000)))
    else
      redis.call('DEL', key)
    end
  end
end
return #KEYS
"#
    ),
    sha: std::sync::LazyLock::new(|| ::redis::Script::new(GIVE_BACK.source).get_hash().to_owned()),
};

/// Slots to give back before the next check: keys and `GIVE_BACK`'s
/// arguments.
#[derive(Default)]
pub(crate) struct GiveBack {
    pub(crate) keys: Vec<Vec<u8>>,
    pub(crate) args: Vec<String>,
}

/// What one request to the user's connection came to: Redis's answer
/// (`Ok`, a server error in the reply turned into an `Err` as redis-rs's
/// `query_async` does), or the panic of the connection's call or of its
/// future (the future dropped already, outside that panic's unwind).
type Asked = Result<::redis::RedisResult<Value>, Payload>;

/// One request on the user's connection. Its call and its future run
/// under [`settle`]: a panic of either comes back as `Err`, so the `async`
/// block of [`invoke`] drops its connection clone outside the unwind.
async fn ask<C: ConnectionLike>(conn: &mut C, cmd: &Cmd, handed: &mut bool) -> Asked {
    // Handed before the call: a connection may send the request and then
    // panic.
    *handed = true;
    let (out, panics) = settle(|| conn.req_packed_command(cmd)).await;
    match (out, panics.take()) {
        (_, Some(payload)) => Err(payload),
        (Some(reply), None) => Ok(reply.and_then(Value::extract_error)),
        (None, None) => unreachable!("settle gives an output or a panic"),
    }
}

/// `EVALSHA`, and `EVAL` (which also caches the script again) when Redis
/// does not know the hash. `handed` is set once a request is handed to the
/// connection (Redis may have run it, even if the connection panicked).
async fn run<C: ConnectionLike>(conn: &mut C, call: &Call, handed: &mut bool) -> Asked {
    let build = |verb: &str, head: &str| {
        let mut cmd = Cmd::new();
        cmd.arg(verb).arg(head).arg(call.keys.len());
        for k in &call.keys {
            cmd.arg(k.as_slice());
        }
        for a in &call.args {
            cmd.arg(a.as_str());
        }
        cmd
    };
    match ask(conn, &build("EVALSHA", &call.lua.sha), handed).await? {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            ask(conn, &build("EVAL", call.lua.source), handed).await
        }
        other => Ok(other),
    }
}

/// A script with its keys and arguments.
pub(crate) struct Call {
    pub(crate) lua: &'static Lua,
    pub(crate) keys: Vec<Vec<u8>>,
    pub(crate) args: Vec<String>,
}

/// One script call on a clone of `conn`. At its first poll it asks `first`
/// for the give-backs to send before it (those queued by dropped waiters
/// and permits: one more round trip, only when there are any; an error
/// reply is ignored: what it would have given back stays taken until it
/// expires, under-use only).
///
/// A panic of the connection (its `req_packed_command` or its future's
/// `poll`) propagates from this future's `poll` once the connection clone
/// is dropped (outside the unwind; a panic of its destructor then is
/// discarded) and the give-backs not answered are queued again.
pub(crate) fn invoke<C>(
    conn: &C,
    call: Call,
    first: impl FnOnce() -> Option<Taken> + Send + 'static,
) -> RedisFuture<'static, Value>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let conn = conn.clone();
    Box::pin(async move {
        let mut conn = conn;
        let mut out = Ok(Ok(Value::Nil));
        if let Some(mut back) = first() {
            out = run(&mut conn, &back.call, &mut back.handed).await;
            back.answered = out.is_ok();
        }
        if out.is_ok() {
            out = run(&mut conn, &call, &mut false).await;
        }
        match out {
            Ok(reply) => reply,
            Err(payload) => {
                let mut panics = Panics::default();
                panics.keep(Some(payload));
                panics.drop_stashing(conn);
                std::panic::resume_unwind(panics.take().expect("kept above"))
            }
        }
    })
}

/// Give-backs taken from their queue for one call. Dropped before Redis
/// answered them (the call cancelled, or the connection panicked), they go
/// back to the queue for the next call: a removal of a waiter's or a
/// permit's members (`p`, `t`, `w`) sent twice only removes what is gone
/// already. A GCRA roll-back (`g`) goes back only if it was never handed
/// to the connection (sent twice, it could roll back a later booking that
/// moved the arrival time to the same value).
pub(crate) struct Taken {
    queue: Arc<Mutex<GiveBack>>,
    call: Call,
    // The call's keys came from the queue (one per entry); else they are
    // the caller's, the same for every entry.
    own_keys: bool,
    // Arguments per entry.
    stride: usize,
    handed: bool,
    answered: bool,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = std::mem::take(&mut self.call.keys).into_iter();
        for entry in self.call.args.chunks(self.stride) {
            let key = if self.own_keys { keys.next() } else { None };
            if self.handed && entry[0] == "g" {
                continue;
            }
            queue.keys.extend(key);
            queue.args.extend(entry.iter().cloned());
        }
    }
}

/// Takes the queued give-backs of a [`GiveBack`] as one `lua` call, on
/// `keys` (every entry's) or on the keys queued with them (one each).
/// `stride`: the arguments per entry.
pub(crate) fn take_back(
    queue: &Arc<Mutex<GiveBack>>,
    lua: &'static Lua,
    keys: Option<&[Vec<u8>]>,
    stride: usize,
) -> Option<Taken> {
    let back = std::mem::take(&mut *queue.lock().unwrap_or_else(PoisonError::into_inner));
    if back.args.is_empty() {
        return None;
    }
    Some(Taken {
        queue: queue.clone(),
        own_keys: keys.is_none(),
        call: Call {
            lua,
            keys: keys.map_or(back.keys, <[_]>::to_vec),
            args: back.args,
        },
        stride,
        handed: false,
        answered: false,
    })
}

/// One script call under a timeout, its failures mapped to [`Error`]. Its
/// parts (the call, with the connection clone, and the deadline's sleep
/// and timer) are dropped each on its own: a panic of one does not drop
/// the others during its unwind.
pub(crate) struct ScriptCall<T: Timer> {
    call: Option<RedisFuture<'static, Value>>,
    deadline: BoxedDeadline<T>,
    timeout: Duration,
}

impl<T: Timer> ScriptCall<T> {
    /// `call` under `timeout` on `timer` (counted from the first poll).
    pub(crate) fn new(call: RedisFuture<'static, Value>, timeout: Duration, timer: T) -> Self {
        ScriptCall {
            call: Some(call),
            deadline: BoxedDeadline::new(timer, Some(When::After(timeout))),
            timeout,
        }
    }

    /// Redis's reply; [`Error::Timeout`] when it takes longer than the
    /// timeout (a reply already there wins, at any deadline).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Value, Error>> {
        let Some(call) = self.call.as_mut() else {
            panic!("a Redis script call polled after completion")
        };
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            // Finished: the `async` block has dropped its values.
            self.call = None;
            return Poll::Ready(out.map_err(Error::Redis));
        }
        if self.deadline.poll(cx).is_ready() {
            let mut panics = Panics::default();
            panics.drop_stashing(self.call.take());
            self.deadline.release(&mut panics);
            panics.resume();
            return Poll::Ready(Err(Error::Timeout {
                after: self.timeout,
            }));
        }
        Poll::Pending
    }
}

impl<T: Timer> Drop for ScriptCall<T> {
    fn drop(&mut self) {
        let mut panics = Panics::default();
        panics.drop_stashing(self.call.take());
        self.deadline.release(&mut panics);
        panics.resume();
    }
}

/// The distributed semaphore's acquire.
///
/// `KEYS`: holders (a sorted set, member `{id}:{i}` per permit, scored by
/// its lease expiry), queue (waiting tickets `{n}/{id}`, scored by arrival
/// time), beats (the same tickets, scored by heartbeat expiry). `ARGV`:
/// capacity, lease (us), n, mode (`t`: try; `w`: wait with a ticket), id,
/// ticket lifetime (us). Expired leases and tickets go first. Granted when
/// the permits held, plus those of every ticket ahead (all of them for
/// `t`), plus `n` fit the capacity. A ticket in the queue without a
/// heartbeat (its beat lost with the key: evicted under memory pressure,
/// deleted) could never be given back: it is dead, and removed when
/// seen. Reply `{1, expiry, now}` granted, `{0, held, ahead}` not now.
pub(crate) static SEM_ACQUIRE: Lua = Lua {
    source: concat!(
        prologue!(),
        r#"
local holders, queue, beats = KEYS[1], KEYS[2], KEYS[3]
local cap = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local mode = ARGV[4]
local id = ARGV[5]
local ttl = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', holders, '-inf', s(now))
local dead = redis.call('ZRANGEBYSCORE', beats, '-inf', s(now), 'LIMIT', 0, 1000)
if #dead > 0 then
  redis.call('ZREM', queue, unpack(dead))
  redis.call('ZREM', beats, unpack(dead))
end
local held = redis.call('ZCARD', holders)
local ticket = n .. '/' .. id
local keep = lease
if ttl > keep then keep = ttl end
local ms = s(math.ceil(keep / 1000) + 1)
if mode == 'w' then
  redis.call('ZADD', queue, 'NX', s(now), ticket)
  redis.call('ZADD', beats, s(now + ttl), ticket)
  redis.call('PEXPIRE', queue, ms)
  redis.call('PEXPIRE', beats, ms)
end
local ahead = 0
if held + n <= cap then
  local q = redis.call('ZRANGE', queue, 0, -1)
  for _, m in ipairs(q) do
    if m == ticket then break end
    local k = tonumber(string.match(m, '^(%d+)/'))
    if k == nil then
      return redis.error_reply('awaitkit: a foreign member in the queue')
    end
    if redis.call('ZSCORE', beats, m) then
      ahead = ahead + k
      if held + ahead + n > cap then break end
    else
      redis.call('ZREM', queue, m)
    end
  end
end
if held + ahead + n > cap then
  return {0, held, ahead}
end
if mode == 'w' then
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', beats, ticket)
end
local exp = s(now + lease)
local args = {}
for i = 1, n do
  args[#args + 1] = exp
  args[#args + 1] = id .. ':' .. i
  if #args >= 2000 or i == n then
    redis.call('ZADD', holders, unpack(args))
    args = {}
  end
end
redis.call('PEXPIRE', holders, ms)
return {1, now + lease, now}
"#
    ),
    sha: std::sync::LazyLock::new(|| {
        ::redis::Script::new(SEM_ACQUIRE.source)
            .get_hash()
            .to_owned()
    }),
};

/// The distributed semaphore's renewal: `KEYS[1]` holders; `ARGV`: id, n,
/// lease (us), key lifetime (us). Reply `{1, expiry}` renewed, `{0, 0}`
/// when the lease had already expired (the permits are gone: not renewed).
pub(crate) static SEM_RENEW: Lua = Lua {
    source: concat!(
        prologue!(),
        r#"
local holders = KEYS[1]
local id, n, lease, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', holders, '-inf', s(now))
if not redis.call('ZSCORE', holders, id .. ':1') then return {0, 0} end
local exp = s(now + lease)
local args = {}
for i = 1, n do
  args[#args + 1] = exp
  args[#args + 1] = id .. ':' .. i
  if #args >= 2000 or i == n then
    redis.call('ZADD', holders, 'XX', unpack(args))
    args = {}
  end
end
redis.call('PEXPIRE', holders, s(math.ceil(keep / 1000) + 1))
return {1, now + lease}
"#
    ),
    sha: std::sync::LazyLock::new(|| ::redis::Script::new(SEM_RENEW.source).get_hash().to_owned()),
};

/// The distributed semaphore's release, and its give-backs: `KEYS`
/// holders, queue, beats; `ARGV` pairs: `p`, `{id}/{n}` (remove the
/// permits `{id}:1..n`) or `t`, a ticket (leave the queue). Reply: the
/// permits removed.
pub(crate) static SEM_RELEASE: Lua = Lua {
    source: concat!(
        prologue!(),
        r#"
local removed = 0
for i = 1, #ARGV, 2 do
  local kind, what = ARGV[i], ARGV[i + 1]
  if kind == 'p' then
    local id, n = string.match(what, '^(.*)/(%d+)$')
    local members = {}
    n = tonumber(n)
    for j = 1, n do
      members[#members + 1] = id .. ':' .. j
      if #members >= 1000 or j == n then
        removed = removed + redis.call('ZREM', KEYS[1], unpack(members))
        members = {}
      end
    end
  else
    redis.call('ZREM', KEYS[2], what)
    redis.call('ZREM', KEYS[3], what)
  end
end
return removed
"#
    ),
    sha: std::sync::LazyLock::new(|| {
        ::redis::Script::new(SEM_RELEASE.source)
            .get_hash()
            .to_owned()
    }),
};
