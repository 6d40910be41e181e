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

-- Linked environments. An app groups one owner's prod, staging and dev projects, so the parity
-- report can compare them and promotion can carry configuration forward:
--
-- * `public.apps` (id, owner, name) and `public.app_environments`, one row per filled slot: a
--   project belongs to at most one app (unique project_id), an app has at most one project per
--   environment (primary key on app and environment). Owners link only their own projects into
--   their own apps (row level security), and only into the slot of the project's own environment
--   (a trigger, SQLSTATE PE008). A linked project changing environment moves to that slot, and is
--   refused (PE008) when the app already has a project there.
-- * Webhook endpoints get a `name`, a slug unique within their project: the identity the report
--   matches across environments ("the orders endpoint" of dev and of prod). An endpoint written
--   without a name gets one from its URL's host and path (a trigger); existing endpoints get
--   theirs lazily, when next written (see the end of this file for why not here).
-- * `public.promote_project_limits` copies a project's base rate limit and hard cap onto the next
--   environment of the same app. Owners cannot write those columns themselves; this function is
--   their one way to carry forward what the platform set in the source environment, and it
--   refuses (PE009) anything but a forward step between two projects linked into one app.

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, above), as one block, so a retry releases all of its locks.
select private.with_lock_retries($ddl$
-- Apps ---------------------------------------------------------------------------------------------

create table public.apps (
    id uuid primary key default gen_random_uuid(),
    owner_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
    name text not null check (char_length(btrim(name)) between 1 and 100),
    created_at timestamptz not null default now()
);
comment on table public.apps is
    'An application and its environments: up to one project each for prod, staging and dev '
    '(public.app_environments), compared by the parity report and promoted forward.';
comment on column public.apps.owner_id is 'The auth.users row that owns the app.';

create index apps_owner_id_idx on public.apps (owner_id);

create table public.app_environments (
    app_id uuid not null references public.apps (id) on delete cascade,
    environment public.environment not null,
    project_id uuid not null references public.projects (id) on delete cascade,
    linked_at timestamptz not null default now(),
    primary key (app_id, environment),
    constraint app_environments_project_id_key unique (project_id)
);
comment on table public.app_environments is
    'Which project fills each environment of an app. One project per environment per app, one '
    'app per project; the environment always equals the project''s own.';
comment on column public.app_environments.environment is
    'The slot: equals the project''s environment (PE008 otherwise), and follows it when the '
    'project changes environment.';

-- SQLSTATE PE008: a link that does not fit the app's slots.
-- Runs as the caller: a user matches only projects row level security lets them see, so the
-- check never reveals another owner's project.
create function private.enforce_app_environment() returns trigger
language plpgsql
set search_path = ''
as $$
declare
    project_environment public.environment;
    other_project uuid;
    other_app uuid;
begin
    -- FOR SHARE: the project's environment cannot change before this transaction ends.
    select p.environment into project_environment
      from public.projects as p
     where p.id = new.project_id
       for share;
    if not found then
        raise exception using
            errcode = 'insufficient_privilege',
            message = format('project %s not found', new.project_id),
            hint = 'Link one of your own projects.';
    end if;
    if new.environment is distinct from project_environment then
        raise exception using
            errcode = 'PE008',
            message = format(
                'project %s is %s: it can fill only the %s slot of an app, not %s',
                new.project_id, project_environment, project_environment,
                coalesce(new.environment::text, 'null')),
            hint = format('Link it as %s, or link a %s project.', project_environment,
                          new.environment);
    end if;
    -- The unique constraints refuse these whatever happens (concurrent links); this says so clearly.
    select l.app_id into other_app
      from public.app_environments as l
     where l.project_id = new.project_id
       and l.app_id <> new.app_id;
    if found then
        raise exception using
            errcode = 'PE008',
            message = format('project %s is already an environment of app %s', new.project_id,
                             other_app),
            hint = 'Unlink it there first.';
    end if;
    select l.project_id into other_project
      from public.app_environments as l
     where l.app_id = new.app_id
       and l.environment = new.environment
       and l.project_id <> new.project_id;
    if found then
        raise exception using
            errcode = 'PE008',
            message = format('the app already has a %s project (%s)', new.environment,
                             other_project),
            hint = 'Unlink that project first.';
    end if;
    return new;
end
$$;
revoke all on function private.enforce_app_environment() from public, anon, authenticated;
comment on function private.enforce_app_environment() is
    'Refuses (PE008) linking a project into a slot other than its environment, into a filled '
    'slot, or into a second app; refuses (42501) a project the caller cannot see.';

create trigger app_environments_enforce_environment
    before insert or update of app_id, environment, project_id on public.app_environments
    for each row execute function private.enforce_app_environment();

-- A linked project that changes environment moves to that slot of its app, or the change is
-- refused (PE008, through the trigger above) when the slot is filled.
create function private.move_app_environment() returns trigger
language plpgsql
security definer  -- owners cannot update links; the move is the database's, for their own project
set search_path = ''
as $$
begin
    update public.app_environments
       set environment = new.environment
     where project_id = new.id;
    return null;
end
$$;
revoke all on function private.move_app_environment() from public, anon, authenticated;
comment on function private.move_app_environment() is
    'Moves a linked project to its new environment''s slot of its app (PE008 if that is filled).';

alter table public.apps enable row level security;
alter table public.app_environments enable row level security;

revoke all on public.apps, public.app_environments from anon, authenticated;

grant select on public.apps to authenticated;
grant insert (name, owner_id) on public.apps to authenticated;
grant update (name) on public.apps to authenticated;
grant delete on public.apps to authenticated;

-- Linking is an insert, unlinking a delete; a link is never edited in place (relink instead).
grant select on public.app_environments to authenticated;
grant insert (app_id, environment, project_id) on public.app_environments to authenticated;
grant delete on public.app_environments to authenticated;

create policy "owners read their apps" on public.apps
    for select to authenticated
    using (owner_id = (select auth.uid()));
create policy "owners create their apps" on public.apps
    for insert to authenticated
    with check (owner_id = (select auth.uid()));
create policy "owners rename their apps" on public.apps
    for update to authenticated
    using (owner_id = (select auth.uid()))
    with check (owner_id = (select auth.uid()));
create policy "owners delete their apps" on public.apps
    for delete to authenticated
    using (owner_id = (select auth.uid()));

create policy "owners read their apps' environments" on public.app_environments
    for select to authenticated
    using (app_id in (select id from public.apps where owner_id = (select auth.uid())));
create policy "owners link their projects into their apps" on public.app_environments
    for insert to authenticated
    with check (
        app_id in (select id from public.apps where owner_id = (select auth.uid()))
        and project_id in (select id from public.projects where owner_id = (select auth.uid()))
    );
create policy "owners unlink from their apps" on public.app_environments
    for delete to authenticated
    using (app_id in (select id from public.apps where owner_id = (select auth.uid())));

-- Promotion of limits ------------------------------------------------------------------------------

-- The forward order of environments: dev, then staging, then prod. shared/parity.py holds the
-- same order for the rest of a promotion; a test checks that the two agree.
create function private.environment_rank(environment public.environment) returns integer
language sql
immutable
set search_path = ''
as $$
    select case environment when 'dev' then 1 when 'staging' then 2 when 'prod' then 3 end
$$;
revoke all on function private.environment_rank(public.environment) from public, anon;
grant execute on function private.environment_rank(public.environment)
    to authenticated, service_role;
comment on function private.environment_rank(public.environment) is
    'Promotion order: dev (1) before staging (2) before prod (3).';

-- SQLSTATE PE009: a promotion that is not one forward step inside one app.
create function public.promote_project_limits(source_project_id uuid, target_project_id uuid)
returns void
language plpgsql
volatile
security definer  -- owners cannot write rate_limit or request_cap; this is their one way
set search_path = ''
as $$
#variable_conflict use_column
declare
    platform constant boolean := private.caller_is_platform();
    source record;
    target record;
begin
    -- The target first and FOR UPDATE, the source FOR SHARE: both hold still until commit.
    select p.id, p.environment, l.app_id
      into target
      from public.projects as p
      left join public.app_environments as l on l.project_id = p.id
     where p.id = promote_project_limits.target_project_id
       and (platform or p.owner_id = (select auth.uid()))
       for update of p;
    if not found then
        raise exception using
            errcode = 'no_data_found',
            message = format('project %s not found', promote_project_limits.target_project_id);
    end if;
    select p.id, p.environment, p.rate_limit, p.request_cap, l.app_id
      into source
      from public.projects as p
      left join public.app_environments as l on l.project_id = p.id
     where p.id = promote_project_limits.source_project_id
       and (platform or p.owner_id = (select auth.uid()))
       for share of p;
    if not found then
        raise exception using
            errcode = 'no_data_found',
            message = format('project %s not found', promote_project_limits.source_project_id);
    end if;
    if source.app_id is null or source.app_id is distinct from target.app_id then
        raise exception using
            errcode = 'PE009',
            message = format('projects %s and %s are not environments of one app',
                             source.id, target.id),
            hint = 'Link both into the same app first.';
    end if;
    if private.environment_rank(source.environment)
       >= private.environment_rank(target.environment) then
        raise exception using
            errcode = 'PE009',
            message = format('promotion goes forward only (dev, staging, prod), not %s to %s',
                             source.environment, target.environment);
    end if;
    update public.projects
       set rate_limit = source.rate_limit,
           request_cap = source.request_cap
     where id = target.id;
end
$$;
revoke all on function public.promote_project_limits(uuid, uuid) from public, anon;
grant execute on function public.promote_project_limits(uuid, uuid)
    to authenticated, service_role;
comment on function public.promote_project_limits(uuid, uuid) is
    'Copies the base rate limit and hard cap of the caller''s project onto the next environment '
    'of the same app. Refuses (PE009) a step backwards or between projects of different apps.';

-- Endpoint names ---------------------------------------------------------------------------------

-- The name an endpoint gets from its URL: host and path, lower case, runs of anything else as one
-- dash, at most 50 characters (room for a suffix that makes it unique within its project).
create function private.endpoint_name_from_url(url text) returns text
language sql
immutable
set search_path = ''
as $$
    select coalesce(
        nullif(
            btrim(left(btrim(regexp_replace(lower(
                regexp_replace(
                    regexp_replace(url, '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*@)?', ''),
                    '[?#].*$', '')),
                '[^a-z0-9]+', '-', 'g'), '-'), 50), '-'),
            ''),
        'endpoint')
$$;
revoke all on function private.endpoint_name_from_url(text) from public, anon;
grant execute on function private.endpoint_name_from_url(text) to authenticated, service_role;
comment on function private.endpoint_name_from_url(text) is
    'A slug of the URL''s host and path, e.g. api-example-com-hooks-orders.';

-- An endpoint written without a name gets one from its URL, with the start of its id appended if
-- the project already has that name. Within one statement naming several rows, each row's check
-- sees the rows named before it.
create function private.name_endpoint() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if new.name is null then
        new.name := private.endpoint_name_from_url(new.url);
        if exists (select from public.webhook_endpoints as e
                    where e.project_id = new.project_id and e.name = new.name
                      and e.id <> new.id) then
            new.name := new.name || '-' || left(replace(new.id::text, '-', ''), 8);
        end if;
    end if;
    return new;
end
$$;
revoke all on function private.name_endpoint() from public, anon, authenticated;
comment on function private.name_endpoint() is
    'Names an endpoint written without a name after its URL''s host and path.';

-- The tables last ----------------------------------------------------------------------------------

-- The locks these statements take are held until the migration commits, so they come after
-- everything else. Nothing here rewrites or updates webhook_endpoints: the column is added to the
-- catalog, and existing endpoints are named lazily (the trigger below names any unnamed row when
-- it is next written; the parity report and promotion name a project's endpoints before reading
-- them). A backfill in this migration would hold ACCESS EXCLUSIVE on the table for the whole
-- UPDATE: about 10 s per 100,000 endpoints measured on a busy 2-core machine, during which event
-- fan-out and delivery claims would wait. What remains under the lock is building the partial
-- unique index, which only reads the table: about 0.1 s per 100,000 endpoints (all unnamed).
alter table public.webhook_endpoints add column name text;
comment on column public.webhook_endpoints.name is
    'A slug unique within the project, the endpoint''s identity across environments (the parity '
    'report matches dev''s "orders" with prod''s). Named from the URL''s host and path when not '
    'given; endpoints older than names get theirs when next written or compared.';

-- NOT VALID: existing rows are not scanned (they are unnamed until written), every new or
-- changed row is checked, and the trigger below names it first.
alter table public.webhook_endpoints
    add constraint webhook_endpoints_name_is_a_slug check (
        name is not null and name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
    ) not valid;

-- squawk-ignore require-concurrent-index-creation
create unique index webhook_endpoints_project_id_name_key
    on public.webhook_endpoints (project_id, name)
    where name is not null;

create trigger webhook_endpoints_name
    before insert or update on public.webhook_endpoints
    for each row
    when (new.name is null)
    execute function private.name_endpoint();

grant select (name) on public.webhook_endpoints to authenticated;
grant insert (name) on public.webhook_endpoints to authenticated;
grant update (name) on public.webhook_endpoints to authenticated;

-- projects last: a linked project's environment change moves it to that slot of its app.
create trigger projects_move_app_environment
    after update of environment on public.projects
    for each row
    when (old.environment is distinct from new.environment)
    execute function private.move_app_environment();
$ddl$);
