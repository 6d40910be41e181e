-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Schema changes that wait politely ---------------------------------------------------------------
--
-- A lock request waiting in the queue blocks every later request that conflicts with it: an ALTER
-- TABLE waiting behind one long read of api_keys holds up every key lookup behind it for as long as
-- it waits. So each statement that takes such a lock on a table in use runs through
-- private.with_lock_retries: a try waits at most a short lock timeout (100 ms, rising to 500 ms),
-- then gives its place up, sleeps (letting traffic through) and tries again, as GitLab's
-- with_lock_retries does, for a bounded total (parity.lock_retries_total, 5 minutes by default).
-- Defined here, where it is first needed, and again (create or replace) by later migrations that
-- use it, so that a database which applied this migration before the helper existed gets it too.

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

-- Environments: every project and every API key is prod, dev or staging (US-001, US-002).
--
-- Invariant kept here, whatever sequence of statements runs: no active API key has an environment
-- different from its project's. Python decides how each environment behaves; Postgres decides which
-- environment a row is in and refuses mismatches.

create type public.environment as enum ('prod', 'dev', 'staging');
comment on type public.environment is
    'Deployment environment of a project and its keys. Keys show prod as "live" in their prefix.';

-- SQLSTATE PE001: a key's environment differs from its project's.
-- Runs as the caller (not security definer): a user can only match against projects that RLS lets
-- them see, so the check never reveals another owner's project.
create function private.enforce_api_key_environment() returns trigger
language plpgsql
set search_path = ''
as $$
declare
    project_environment public.environment;
begin
    if tg_op = 'UPDATE'
       and new.status <> 'active'
       and new.environment is not distinct from old.environment
       and new.project_id is not distinct from old.project_id then
        -- Revoking, or touching a key that is already revoked: nothing can become mismatched.
        return new;
    end if;

    -- FOR SHARE waits for, and then blocks, a concurrent change of the project's environment, so
    -- the two triggers cannot both pass on stale reads.
    select environment into project_environment
      from public.projects
     where id = new.project_id
       for share;

    if not found then
        raise exception using
            errcode = 'foreign_key_violation',
            message = format('project %s does not exist', new.project_id),
            hint = 'Create the key in one of your own projects.';
    end if;

    if new.environment is distinct from project_environment then
        raise exception using
            errcode = 'PE001',
            message = format(
                'API key environment %s does not match project environment %s',
                coalesce(new.environment::text, 'null'), project_environment),
            detail = format('project %s is %s', new.project_id, project_environment),
            hint = format('Create the key with environment %s.', project_environment);
    end if;
    return new;
end
$$;

-- SQLSTATE PE002: a project's environment changes while it has active keys.
create function private.enforce_project_environment_change() returns trigger
language plpgsql
set search_path = ''
as $$
declare
    active_keys bigint;
begin
    if new.environment is not distinct from old.environment then
        return new;
    end if;

    select count(*) into active_keys
      from public.api_keys
     where project_id = new.id
       and status = 'active';

    if active_keys > 0 then
        raise exception using
            errcode = 'PE002',
            message = format(
                'cannot change project environment from %s to %s while it has %s active API key%s',
                old.environment, new.environment, active_keys,
                case when active_keys = 1 then '' else 's' end),
            hint = 'Revoke the project''s active keys first, then issue keys for the new environment.';
    end if;
    return new;
end
$$;

-- The tables last: the ACCESS EXCLUSIVE locks these statements take are held until the migration
-- commits, so only catalog changes run under them.

-- A constant default is stored in the catalog, not written into each row: adding these columns
-- rewrites nothing and holds ACCESS EXCLUSIVE only for the catalog change. Existing projects become
-- prod, and new ones are prod unless they say otherwise.

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
-- api_keys before projects: the gateway's key lookup reads them in that order, and taking the
-- locks the other way round can deadlock with a lookup in flight (the lookup then fails).
-- Every existing project becomes prod (below), so every existing key is prod too: the same
-- metadata-only step fills them (no UPDATE of existing rows). Dropping the default afterwards keeps
-- the value of existing rows and makes every new key state its environment.
alter table public.api_keys
    add column environment public.environment not null default 'prod';
alter table public.api_keys alter column environment drop default;
comment on column public.api_keys.environment is
    'Must equal the project''s environment; enforced on every write and again by the gateway.';

alter table public.projects
    add column environment public.environment not null default 'prod';
comment on column public.projects.environment is
    'prod, dev or staging. Decides rate-limit multiplier, auto-suspend, log level and webhook '
    'retries. Cannot change while the project has active API keys.';

-- No index on active keys here: building one on a big api_keys would hold this migration's lock
-- for the whole build. The PE002 check counts a project's keys through api_keys_project_id_idx.

grant insert (environment) on public.projects to authenticated;
grant update (environment) on public.projects to authenticated;
grant insert (environment) on public.api_keys to authenticated;
grant select (environment) on public.api_keys to authenticated;

create trigger api_keys_enforce_environment
    before insert or update of environment, project_id, status on public.api_keys
    for each row execute function private.enforce_api_key_environment();

create trigger projects_enforce_environment_change
    before update of environment on public.projects
    for each row execute function private.enforce_project_environment_change();
$ddl$);
