-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Schema changes that wait politely: private.with_lock_retries, exactly as defined by
-- 20260201000000_environments (see there and the README, "Migrations on big tables"). Created
-- again here because a database that applied that migration before the helper was added to it
-- does not have it.

-- How long private.with_lock_retries keeps trying: the setting parity.lock_retries_total (an
-- interval: '30s', '20min'; set per push with the connection option
-- `-c parity.lock_retries_total=20min`, or per database or role with ALTER ... SET), 5 minutes
-- when unset.
create or replace function private.lock_retries_total() returns interval
language sql
stable
set search_path = ''
as $$
    select coalesce(nullif(current_setting('parity.lock_retries_total', true), ''), '5min')::interval
$$;
comment on function private.lock_retries_total() is
    'How long private.with_lock_retries keeps trying: setting parity.lock_retries_total, else 5 min.';

-- Runs `statements` (one or more, separated by semicolons) in a savepoint with a short lock
-- timeout; when a lock is not granted in time, rolls the savepoint back (releasing every lock the
-- statements took), sleeps and tries again with a longer timeout. Try n waits at most
-- min(100 ms * 1.5^(n-1), 500 ms) for each lock and is followed by a sleep of
-- min(100 ms * 2^(n-1), 2 s). When the next try would end after the total, fails with SQLSTATE
-- 55P03 (lock_not_available), naming the sessions that held locks on the tables the statements
-- name, how long their transactions have run and how to end them; the caller's transaction (the
-- migration) then fails whole.
--
-- Put every lock-taking statement of a migration in one call, after everything else: a retry
-- releases all of them, and nothing runs afterwards while they are held.
create or replace function private.with_lock_retries(statements text) returns void
language plpgsql
volatile
set search_path = ''
-- Restored when the function returns: the timeouts of each try below last no longer than it.
set lock_timeout = '100ms'
as $$
declare
    total constant interval := private.lock_retries_total();
    started constant timestamptz := clock_timestamp();
    tries integer := 0;
    wait_ms integer;
    sleep_ms integer;
    try_started timestamptz;
    blockers text;
    names text;
    total_text constant text :=
        pg_catalog.round(pg_catalog.date_part('epoch', total)::numeric, 1) || ' s';
begin
    loop
        tries := tries + 1;
        wait_ms := least(100 * 1.5 ^ (tries - 1), 500);
        sleep_ms := least(100 * 2 ^ (tries - 1), 2000);
        perform pg_catalog.set_config('lock_timeout', wait_ms || 'ms', true);
        try_started := clock_timestamp();
        begin
            execute statements;
            return;
        exception when lock_not_available or deadlock_detected then
            -- The savepoint is rolled back: nothing waits behind us while we sleep.
            null;
        end;
        exit when clock_timestamp() + make_interval(secs => (sleep_ms + wait_ms) / 1000.0)
                  > started + total;
        perform pg_catalog.pg_sleep(sleep_ms / 1000.0);
    end loop;

    -- Who is in the way: sessions that have held a lock on one of the tables the statements name
    -- since before the last try began. (pg_blocking_pids cannot be asked while this session
    -- waits, and the wait is over by now.)
    with named as (
        select distinct c.oid
          from pg_catalog.regexp_matches(
                   statements, '([a-z_][a-z0-9_$]*)\.([a-z_][a-z0-9_$]*)', 'gi') as m(part)
          join pg_catalog.pg_class as c
            on c.oid = pg_catalog.to_regclass(m.part[1] || '.' || m.part[2])
         where c.relkind in ('r', 'p', 'm')
    ), holders as (
        select a.pid,
               coalesce(nullif(a.application_name, ''), '(none)') as application,
               a.usename,
               a.state,
               pg_catalog.round(pg_catalog.date_part('epoch', clock_timestamp() - a.xact_start))
                   as open_for,
               pg_catalog.string_agg(
                   distinct l.mode || ' on ' || l.relation::pg_catalog.regclass::text, ', ') as locks
          from pg_catalog.pg_locks as l
          join named on named.oid = l.relation
          join pg_catalog.pg_stat_activity as a on a.pid = l.pid
         where l.locktype = 'relation'
           and l.granted
           and l.pid <> pg_catalog.pg_backend_pid()
           and a.xact_start <= try_started
         group by a.pid, a.application_name, a.usename, a.state, a.xact_start
    )
    select pg_catalog.string_agg(
               pg_catalog.format('pid %s (application_name %L)', pid, application), ', '
               order by open_for desc),
           pg_catalog.string_agg(
               pg_catalog.format(
                   'pid %s, application_name %L, user %s, %s, transaction open for %s s, holds %s',
                   pid, application, usename, state, open_for, locks), E'\n'
               order by open_for desc)
      into names, blockers
      from holders;

    raise exception using
        errcode = 'lock_not_available',
        message = pg_catalog.format(
            'could not take the locks this migration needs within %s (%s tries): %s',
            total_text, tries,
            coalesce('blocked by ' || names,
                     'no session holds them now (the blocking transaction ended); push again')),
        detail = coalesce(blockers || E'\n', '') || pg_catalog.format(
            'Nothing of this migration was applied. End the blocking transactions (select '
            'pg_terminate_backend(<pid>)) or wait until they finish, then push again; the setting '
            'parity.lock_retries_total (now %s) sets how long to keep trying.', total_text),
        hint = 'See "Migrations on big tables" in the README.';
end
$$;
comment on function private.with_lock_retries(text) is
    'Runs DDL with a short lock timeout, retrying with backoff for parity.lock_retries_total '
    '(5 min by default); on giving up, names the sessions in the way.';
revoke all on function private.with_lock_retries(text) from public, anon, authenticated;
revoke all on function private.lock_retries_total() from public, anon, authenticated;

-- Three changes, in three steps. The concurrent index builds in the middle run outside any
-- transaction (the Supabase CLI commits what precedes them and runs what follows in a
-- transaction of its own), so the check added NOT VALID in the first step is validated in the
-- last one under a lock that lets reads and writes through. Every statement can run again: a
-- push that failed midway (a lock timeout, a build) is simply pushed again.

-- 1. Webhook URLs, the database's side. The console parses every URL (shared/webhook_urls.py,
-- with yarl, the parser the worker connects with) and stores its ASCII form; this check holds
-- what any stored form satisfies, for writers that reach the table directly (PostgREST): an
-- http(s) URL with a host, no user name or password (credentials in URLs end up in logs), no
-- spaces, control characters or #fragment, at most 2048 characters. It is never stricter than
-- the parser. It replaces the column's earlier check (scheme and length only).

-- Steps 1 and 2 take locks on tables in use: they run with short lock timeouts and retries
-- (private.with_lock_retries, above), as one block that ends the first transaction, so a retry
-- releases all of their locks.
select private.with_lock_retries($ddl$
-- The column's earlier check is dropped (the new one implies it), and the new one too, should a
-- failed push have left it: pushed again, this statement starts afresh.
alter table public.webhook_endpoints
    drop constraint if exists webhook_endpoints_url_check,
    drop constraint if exists webhook_endpoints_url_is_a_webhook_url,
    add constraint webhook_endpoints_url_is_a_webhook_url check (
        url ~ '^https?://[^/?#@[:space:][:cntrl:]]+([/?][^#[:space:][:cntrl:]]*)?$'
        and char_length(url) <= 2048
    ) not valid;
comment on constraint webhook_endpoints_url_is_a_webhook_url on public.webhook_endpoints is
    'An http(s) URL with a host and no user name, password, spaces or #fragment, at most 2048 '
    'characters: what the console''s URL parser stores (it stores host names in ASCII form).';

-- 2. One-time flashes, across console replicas. A flash (a new key or signing secret, shown once
-- after a redirect) travels in an encrypted cookie; the first replica to show it records its
-- random id here, and every replica refuses an id already recorded. Rows are kept as long as the
-- flash could still be opened (its cookie's validity), then purged by the console as it records
-- newer ones. Only the platform (service_role) reads or writes it; the `private` schema is not
-- exposed through PostgREST.

create table if not exists private.console_flashes_shown (
    flash_id text primary key check (char_length(flash_id) between 1 and 100),
    shown_at timestamptz not null default now(),
    expires_at timestamptz not null
);
comment on table private.console_flashes_shown is
    'Console flashes (one-time messages, new secrets among them) already shown by some replica.';
comment on column private.console_flashes_shown.flash_id is 'The flash''s random id (its nonce).';
comment on column private.console_flashes_shown.shown_at is 'When a replica showed it.';
comment on column private.console_flashes_shown.expires_at is
    'When the flash''s cookie stops being accepted anyway: the row is useless, and purged, after.';

create index if not exists console_flashes_shown_expires_at_idx
    on private.console_flashes_shown (expires_at);

alter table private.console_flashes_shown enable row level security;
revoke all on private.console_flashes_shown from public, anon, authenticated;
grant select, insert, delete on private.console_flashes_shown to service_role;
drop policy if exists console_flashes_shown_service on private.console_flashes_shown;
create policy console_flashes_shown_service on private.console_flashes_shown
    for all to service_role using (true) with check (true);
$ddl$);

-- 3. `parity status` counts the deliveries exhausted in the last day, by environment: an
-- index-only scan of this partial index (exhausted deliveries only, by completion time) instead
-- of a scan of every delivery ever made. Built concurrently: webhook_deliveries takes writes from
-- every event's fan-out; a build that failed midway leaves an invalid index, dropped first.

-- Their waits queue no reads or writes: they wait in one go for as long as the lock retries
-- keep trying (see 20261001000000_worker_endpoint_queues, which does the same).
select pg_catalog.set_config(
    'lock_timeout',
    (1000 * extract(epoch from private.lock_retries_total()))::bigint::text,
    false);

-- squawk-ignore ban-concurrent-index-creation-in-transaction
drop index concurrently if exists public.webhook_deliveries_exhausted_idx;
-- squawk-ignore ban-concurrent-index-creation-in-transaction
create index concurrently if not exists webhook_deliveries_exhausted_idx
    on public.webhook_deliveries (completed_at) include (environment)
    where status = 'exhausted';

-- 1, continued: existing rows are checked under SHARE UPDATE EXCLUSIVE (reads and writes go on);
-- new and updated rows were checked from the moment the constraint was added. (squawk reads the
-- file as one transaction; the concurrent builds above end the first one.)
-- squawk-ignore constraint-missing-not-valid
alter table public.webhook_endpoints validate constraint webhook_endpoints_url_is_a_webhook_url;
