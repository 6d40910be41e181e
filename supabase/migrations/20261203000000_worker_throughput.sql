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

-- Two things that keep the worker's claim cheap for every tenant.
--
-- 1. A cap on webhook endpoints per project, held here so it binds every writer (console,
--    PostgREST, operators). A claim walks the endpoints that have work (one index probe each), so
--    a project with thousands of endpoints would make every other tenant's claims slower. The cap
--    is a row of private.platform_limits (default 50), changed by an operator with one UPDATE;
--    projects that already have more keep them, but cannot add another.
-- 2. Autovacuum settings for webhook_deliveries suited to a queue table: every delivery is
--    updated two or three times (claim, record, lease renewals), none of them HOT (the updates
--    change columns the queue indexes filter on), so dead index entries pile up at the head of
--    each endpoint's queue, where every claim reads. The default (20% of the table, which only
--    grows) let them stay for minutes; throughput fell by a fifth over four unvacuumed rounds.

-- Platform limits ----------------------------------------------------------------------------------

create table private.platform_limits (
    name text primary key check (name ~ '^[a-z_]+$'),
    value integer not null check (value >= 0),
    description text not null
);
comment on table private.platform_limits is
    'Limits the database enforces for every project, changed by an operator (UPDATE ... SET '
    'value); not exposed through PostgREST.';
comment on column private.platform_limits.name is 'What is limited, e.g. webhook_endpoints_per_project.';
comment on column private.platform_limits.value is 'The limit.';
comment on column private.platform_limits.description is 'What the limit bounds and why.';

alter table private.platform_limits enable row level security;
revoke all on private.platform_limits from public, anon, authenticated;
grant select on private.platform_limits to service_role;
create policy platform_limits_service_read on private.platform_limits
    for select to service_role using (true);

insert into private.platform_limits (name, value, description) values (
    'webhook_endpoints_per_project', 50,
    'Most webhook endpoints one project may have (enabled or not). Each endpoint with work costs '
    'every claim of every worker an index probe, so no tenant may have unbounded many.'
);

-- SQLSTATE PE010: a project already has as many webhook endpoints as it may.
-- Security definer: the count covers every endpoint of the project whatever the caller may see,
-- and reads the private limit. The project row is locked (FOR NO KEY UPDATE, which foreign-key
-- checks and readers pass) so that two endpoints created at once for one project are counted one
-- after the other: both cannot take the last place.
create function private.enforce_webhook_endpoint_limit() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    allowed integer;
    existing integer;
begin
    perform 1 from public.projects where id = new.project_id for no key update;
    select l.value into allowed
      from private.platform_limits as l
     where l.name = 'webhook_endpoints_per_project';
    allowed := coalesce(allowed, 50);
    select count(*) into existing
      from public.webhook_endpoints as w
     where w.project_id = new.project_id and w.id <> new.id;
    if existing >= allowed then
        raise exception using
            errcode = 'PE010',
            message = format(
                'project %s already has %s webhook endpoints, the most a project may have (%s)',
                new.project_id, existing, allowed),
            hint = 'Delete an endpoint it no longer needs, or subscribe an existing endpoint to more '
                   'event types; the platform can raise the limit.';
    end if;
    return new;
end
$$;
revoke all on function private.enforce_webhook_endpoint_limit() from public, anon, authenticated;
comment on function private.enforce_webhook_endpoint_limit() is
    'Refuses (PE010) a webhook endpoint beyond private.platform_limits '
    '(webhook_endpoints_per_project, default 50) for its project.';

-- Autovacuum for the queue -------------------------------------------------------------------------

-- Vacuum once 1,000 rows plus 1% of the table are dead (the default waits for 20%), analyze at
-- 2%, and vacuum appended rows at 1% too (their visibility map lets later vacuums skip them).
-- SET (storage parameters) takes SHARE UPDATE EXCLUSIVE: reads and writes go on; only vacuum and
-- other schema changes wait. In the block below all the same: it comes after the trigger (which
-- holds its lock until this migration commits), and must not wait 5 s for a vacuum meanwhile.

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, above), as one block, so a retry releases all of its locks.
select private.with_lock_retries($ddl$
-- Takes SHARE ROW EXCLUSIVE on webhook_endpoints for a moment (catalog only): writes to endpoints
-- wait for it, at most one try; reads (the claim's join) do not.
create trigger webhook_endpoints_enforce_limit
    before insert or update of project_id on public.webhook_endpoints
    for each row execute function private.enforce_webhook_endpoint_limit();

alter table public.webhook_deliveries set (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
$ddl$);
