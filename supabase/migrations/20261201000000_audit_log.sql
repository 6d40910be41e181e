-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- The audit trail: one row per change that matters in a project, written by Postgres itself.
--
-- Triggers on the tables write it, so every path is covered alike: the console, a signed-in user
-- writing through PostgREST or pg_graphql, `parity` commands, the worker's sweeps and its handling
-- of a receiver's 410. Each trigger builds its entry from a list of the columns it audits (never
-- the whole row), so key hashes, tokens, signing secrets and session ids cannot enter the trail.
--
-- Who acted comes from the transaction's settings:
-- * `role` authenticated (PostgREST, the console's user transactions): actor `user`, its id from
--   `request.jwt.claims` ->> 'sub';
-- * otherwise the platform: `parity.actor` says `worker` (every transaction of the worker sets it)
--   or `operator` (`parity` commands); anything else is `platform` (service_role, migrations).
-- The request context comes from `request.headers` (PostgREST sets it; the console sets the same
-- two headers): the client address (first entry of x-forwarded-for, else x-real-ip) and the
-- user agent.
--
-- Nobody rewrites it: anon, authenticated and service_role hold no insert, update or delete
-- privilege, and a trigger refuses update, delete and truncate (SQLSTATE PE007) for everyone
-- but the retention job (`private.purge_audit_log`), which deletes only entries older than the
-- retention it is given.

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

create type public.audit_actor_type as enum ('user', 'platform', 'worker', 'operator');
comment on type public.audit_actor_type is
    'user: a signed-in user (console, PostgREST); platform: the platform''s services; worker: the '
    'worker (auto-suspend, a receiver''s 410); operator: a `parity` command.';

create table public.audit_log (
    id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    project_id uuid not null,
    project_name text not null,
    project_environment public.environment not null,
    owner_id uuid not null,
    actor_type public.audit_actor_type not null,
    actor_id uuid,
    action text not null check (action ~ '^[a-z_]+\.[a-z_]+$'),
    target_type text not null,
    target_id uuid not null,
    changes jsonb not null default '{}'::jsonb,
    correlation_id uuid not null,
    client_address text check (char_length(client_address) <= 100),
    user_agent text check (char_length(user_agent) <= 500)
);
comment on table public.audit_log is
    'Append-only audit trail: one row per change that matters in a project, written by triggers. '
    'Owners read their projects'' entries (deleted projects included); nobody rewrites them.';
comment on column public.audit_log.at is 'When the change was made (the database''s clock).';
comment on column public.audit_log.project_id is
    'The project changed. Not a foreign key: entries outlive their project.';
comment on column public.audit_log.project_name is 'The project''s name when the change was made.';
comment on column public.audit_log.project_environment is
    'The project''s environment when the change was made.';
comment on column public.audit_log.owner_id is
    'The project''s owner when the change was made: who may read the entry.';
comment on column public.audit_log.actor_id is
    'The signed-in user who acted (actor_type user); null for the platform.';
comment on column public.audit_log.action is
    '<target>.<verb>, e.g. api_key.revoked, webhook_endpoint.disabled.';
comment on column public.audit_log.target_id is 'The id of the project, key, endpoint or delivery.';
comment on column public.audit_log.changes is
    'Before and after of the audited columns that changed: {"column": {"before": .., "after": ..}}'
    '. Never a secret, token or hash.';
comment on column public.audit_log.correlation_id is
    'Shared by every entry written in one transaction, e.g. a rotation''s api_key.issued and the '
    'old key''s api_key.expiry_changed or api_key.revoked.';
comment on column public.audit_log.client_address is
    'The client''s address as the request carried it (x-forwarded-for), when there was a request.';
comment on column public.audit_log.user_agent is 'The request''s user agent, when there was one.';

-- The Activity card and the API page through one project's entries, newest first.
create index audit_log_project_at_idx on public.audit_log (project_id, at desc, id desc);
-- The read policy's column.
create index audit_log_owner_id_idx on public.audit_log (owner_id);
-- The retention job finds old entries; the table is appended in time order, which BRIN suits.
create index audit_log_at_brin_idx on public.audit_log using brin (at);

alter table public.audit_log enable row level security;
revoke all on public.audit_log from public, anon, authenticated, service_role;
grant select on public.audit_log to authenticated, service_role;

create policy "owners read their audit trail" on public.audit_log
    for select to authenticated
    using (owner_id = (select auth.uid()));

-- Writing entries ---------------------------------------------------------------------------------

-- Before and after of the columns two snapshots disagree on. A snapshot is a jsonb object built
-- from the audited columns only; null stands for no row (an insert's before, a delete's after).
create function private.audit_changes(before jsonb, after jsonb) returns jsonb
language sql
immutable
set search_path = ''
as $$
    select coalesce(
        jsonb_object_agg(k, jsonb_build_object('before', before -> k, 'after', after -> k)),
        '{}'::jsonb)
      from jsonb_object_keys(coalesce(after, before)) as k
     where (before -> k) is distinct from (after -> k)
       and not (before is null and after -> k = 'null'::jsonb)
       and not (after is null and before -> k = 'null'::jsonb)
$$;
revoke all on function private.audit_changes(jsonb, jsonb) from public, anon, authenticated;

-- Per transaction, one correlation id: the first entry makes it, later ones reuse it.
create function private.audit_correlation_id() returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    found_id text := current_setting('parity.audit_correlation_id', true);
begin
    if found_id is null or found_id = '' then
        found_id := gen_random_uuid()::text;
        perform set_config('parity.audit_correlation_id', found_id, true);
    end if;
    return found_id::uuid;
end
$$;
revoke all on function private.audit_correlation_id() from public, anon, authenticated;

-- One entry about project `project_id`; the actor and request context are the transaction's.
-- Projects pass their own snapshot (project_row); other tables pass null and it is read here.
create function private.audit_write(
    project_row public.projects,
    project_id uuid,
    action text,
    target_type text,
    target_id uuid,
    changes jsonb
) returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    role_name constant text := current_setting('role');
    claims text;
    headers jsonb;
    actor public.audit_actor_type;
    actor_user uuid;
    address text;
begin
    if project_row is null then
        select p.* into project_row from public.projects as p where p.id = audit_write.project_id;
        if not found then
            return;  -- the project is being deleted with its rows: its own entry says so
        end if;
    end if;

    if role_name = 'authenticated' or role_name = 'anon' then
        actor := 'user'::public.audit_actor_type;
        claims := nullif(current_setting('request.jwt.claims', true), '');
        actor_user := (claims::jsonb ->> 'sub')::uuid;
    else
        actor := case current_setting('parity.actor', true)
                     when 'worker' then 'worker'::public.audit_actor_type
                     when 'operator' then 'operator'::public.audit_actor_type
                     else 'platform'::public.audit_actor_type
                 end;
    end if;

    headers := nullif(current_setting('request.headers', true), '')::jsonb;
    address := btrim(split_part(coalesce(headers ->> 'x-forwarded-for', headers ->> 'x-real-ip'),
                                ',', 1));

    insert into public.audit_log (
        project_id, project_name, project_environment, owner_id, actor_type, actor_id, action,
        target_type, target_id, changes, correlation_id, client_address, user_agent)
    values (
        project_row.id, project_row.name, project_row.environment, project_row.owner_id, actor,
        actor_user, action, target_type, target_id, changes, private.audit_correlation_id(),
        left(nullif(address, ''), 100), left(nullif(headers ->> 'user-agent', ''), 500));
end
$$;
revoke all on function private.audit_write(public.projects, uuid, text, text, uuid, jsonb)
    from public, anon, authenticated;

-- What is audited of each table: these lists, never the whole row. A column left out (a key's
-- hash, an endpoint's secret, the gateway's last_used_at, usage counters) cannot reach the trail.

create function private.audit_project_columns(p public.projects) returns jsonb
language sql
immutable
set search_path = ''
as $$
    select jsonb_build_object(
        'name', p.name, 'environment', p.environment, 'status', p.status,
        'rate_limit', p.rate_limit, 'request_cap', p.request_cap)
$$;

create function private.audit_api_key_columns(k public.api_keys) returns jsonb
language sql
immutable
set search_path = ''
as $$
    select jsonb_build_object(
        'name', k.name, 'kind', k.kind, 'environment', k.environment, 'prefix', k.prefix,
        'last_four', k.last_four, 'status', k.status, 'expires_at', k.expires_at,
        'revoked_at', k.revoked_at)
$$;

-- Picked by name from the row, so that `name`, which the next migration (20261202000000_apps)
-- adds to endpoints, is audited from then on: a column list still, the secret is not in it.
create function private.audit_webhook_endpoint_columns(e public.webhook_endpoints) returns jsonb
language sql
immutable
set search_path = ''
as $$
    select coalesce(jsonb_object_agg(c.key, c.value), '{}'::jsonb)
      from jsonb_each(to_jsonb(e)) as c
     where c.key in ('name', 'url', 'description', 'event_types', 'enabled', 'disabled_by',
                     'disabled_reason')
$$;

create function private.audit_suspension_columns(s public.suspensions) returns jsonb
language sql
immutable
set search_path = ''
as $$
    select jsonb_build_object(
        'reason', s.reason, 'requests', s.requests, 'request_cap', s.request_cap,
        'window_start', s.window_start, 'lifted_by', s.lifted_by, 'lift_reason', s.lift_reason)
$$;

revoke all on function private.audit_project_columns(public.projects),
    private.audit_api_key_columns(public.api_keys),
    private.audit_webhook_endpoint_columns(public.webhook_endpoints),
    private.audit_suspension_columns(public.suspensions)
    from public, anon, authenticated;

-- Projects: created, renamed, environment changed, limits changed, suspended, unsuspended,
-- deleted. A suspension is the project's status changing (whoever changes it); the suspension
-- row written beside it (by the sweep, or by `parity suspensions lift`) adds its reason and
-- figures, or who lifted it and why.
create function private.audit_projects() returns trigger
language plpgsql
security definer  -- nobody may insert into audit_log but these triggers
set search_path = ''
as $$
declare
    suspension public.suspensions;
    changes jsonb;
begin
    if tg_op = 'INSERT' then
        perform private.audit_write(new, new.id, 'project.created', 'project', new.id,
            private.audit_changes(null, private.audit_project_columns(new)));
        return null;
    elsif tg_op = 'DELETE' then
        perform private.audit_write(old, old.id, 'project.deleted', 'project', old.id,
            private.audit_changes(private.audit_project_columns(old), null));
        return null;
    end if;

    if new.name is distinct from old.name then
        perform private.audit_write(new, new.id, 'project.renamed', 'project', new.id,
            jsonb_build_object('name', jsonb_build_object('before', old.name, 'after', new.name)));
    end if;
    if new.environment is distinct from old.environment then
        perform private.audit_write(new, new.id, 'project.environment_changed', 'project', new.id,
            jsonb_build_object('environment',
                jsonb_build_object('before', old.environment, 'after', new.environment)));
    end if;
    if (new.rate_limit, new.request_cap) is distinct from (old.rate_limit, old.request_cap) then
        perform private.audit_write(new, new.id, 'project.limits_changed', 'project', new.id,
            private.audit_changes(
                jsonb_build_object('rate_limit', old.rate_limit, 'request_cap', old.request_cap),
                jsonb_build_object('rate_limit', new.rate_limit, 'request_cap', new.request_cap)));
    end if;
    if new.status is distinct from old.status then
        changes := jsonb_build_object('status',
            jsonb_build_object('before', old.status, 'after', new.status));
        if new.status = 'suspended' then
            select s.* into suspension from public.suspensions as s
             where s.project_id = new.id and s.lifted_at is null;
        else
            select s.* into suspension from public.suspensions as s
             where s.project_id = new.id and s.lifted_at is not null
             order by s.lifted_at desc limit 1;
        end if;
        if found then
            changes := changes
                || private.audit_changes(null, private.audit_suspension_columns(suspension));
        end if;
        perform private.audit_write(new, new.id,
            case new.status when 'suspended' then 'project.suspended'
                            else 'project.unsuspended' end,
            'project', new.id, changes);
    end if;
    return null;
end
$$;

-- API keys: issued, revoked, expiry changed, renamed, deleted. Issued and then shortened or
-- revoked in one transaction (a rotation), the entries share their correlation id.
create function private.audit_api_keys() returns trigger
language plpgsql
security definer  -- nobody may insert into audit_log but these triggers
set search_path = ''
as $$
begin
    if tg_op = 'INSERT' then
        perform private.audit_write(null, new.project_id, 'api_key.issued', 'api_key', new.id,
            private.audit_changes(null, private.audit_api_key_columns(new)));
        return null;
    elsif tg_op = 'DELETE' then
        -- Deleted with its project: nothing is written, the project's own entry says so.
        perform private.audit_write(null, old.project_id, 'api_key.deleted', 'api_key', old.id,
            private.audit_changes(private.audit_api_key_columns(old), null));
        return null;
    end if;

    if new.status is distinct from old.status and new.status = 'revoked' then
        perform private.audit_write(null, new.project_id, 'api_key.revoked', 'api_key', new.id,
            private.audit_changes(
                private.audit_api_key_columns(old) - 'name',
                private.audit_api_key_columns(new) - 'name'));
    elsif new.expires_at is distinct from old.expires_at then
        perform private.audit_write(null, new.project_id, 'api_key.expiry_changed', 'api_key',
            new.id, jsonb_build_object('expires_at',
                jsonb_build_object('before', old.expires_at, 'after', new.expires_at)));
    end if;
    if new.name is distinct from old.name then
        perform private.audit_write(null, new.project_id, 'api_key.renamed', 'api_key', new.id,
            jsonb_build_object('name', jsonb_build_object('before', old.name, 'after', new.name)));
    end if;
    return null;
end
$$;

-- Webhook endpoints: created, updated, disabled (with who disabled it), enabled, deleted.
create function private.audit_webhook_endpoints() returns trigger
language plpgsql
security definer  -- nobody may insert into audit_log but these triggers
set search_path = ''
as $$
declare
    all_changes jsonb;
    other_changes jsonb;
begin
    if tg_op = 'INSERT' then
        perform private.audit_write(null, new.project_id, 'webhook_endpoint.created',
            'webhook_endpoint', new.id,
            private.audit_changes(null, private.audit_webhook_endpoint_columns(new)));
        return null;
    elsif tg_op = 'DELETE' then
        perform private.audit_write(null, old.project_id, 'webhook_endpoint.deleted',
            'webhook_endpoint', old.id,
            private.audit_changes(private.audit_webhook_endpoint_columns(old), null));
        return null;
    end if;

    all_changes := private.audit_changes(
        private.audit_webhook_endpoint_columns(old), private.audit_webhook_endpoint_columns(new));
    other_changes := all_changes;
    if new.enabled is distinct from old.enabled then
        other_changes := all_changes - array['enabled', 'disabled_by', 'disabled_reason']::text[];
        perform private.audit_write(null, new.project_id,
            case when new.enabled then 'webhook_endpoint.enabled'
                 else 'webhook_endpoint.disabled' end,
            'webhook_endpoint', new.id,
            all_changes - array(select jsonb_object_keys(other_changes)));
    end if;
    if other_changes <> '{}'::jsonb then
        perform private.audit_write(null, new.project_id, 'webhook_endpoint.updated',
            'webhook_endpoint', new.id, other_changes);
    end if;
    return null;
end
$$;

-- Webhook deliveries: a finished delivery made due again (public.redeliver_webhook is the path).
create function private.audit_webhook_deliveries() returns trigger
language plpgsql
security definer  -- nobody may insert into audit_log but these triggers
set search_path = ''
as $$
begin
    perform private.audit_write(null, new.project_id, 'webhook.redelivered', 'webhook_delivery',
        new.id, jsonb_build_object(
            'status', jsonb_build_object('before', old.status, 'after', new.status),
            'attempts', jsonb_build_object('before', old.attempts, 'after', new.attempts)));
    return null;
end
$$;

revoke all on function private.audit_projects(), private.audit_api_keys(),
    private.audit_webhook_endpoints(), private.audit_webhook_deliveries()
    from public, anon, authenticated;

-- Nobody rewrites it --------------------------------------------------------------------------

-- SQLSTATE PE007: an update, delete or truncate of audit entries. The one exception is the
-- retention job below, and only for entries older than the cut-off it was given.
create function private.refuse_audit_log_change() returns trigger
language plpgsql
set search_path = ''
as $$
declare
    purge_before text := current_setting('parity.audit_purge_before', true);
begin
    if tg_op = 'DELETE' and purge_before is not null and purge_before <> ''
       and old.at < purge_before::timestamptz then
        return old;
    end if;
    raise exception using
        errcode = 'PE007',
        message = 'the audit log is append-only: its entries are never changed or deleted',
        hint = 'Entries older than the retention period are deleted by the retention job only.';
end
$$;
revoke all on function private.refuse_audit_log_change() from public, anon, authenticated;

create trigger audit_log_append_only
    before update or delete on public.audit_log
    for each row execute function private.refuse_audit_log_change();
create trigger audit_log_no_truncate
    before truncate on public.audit_log
    for each statement execute function private.refuse_audit_log_change();
-- Also under session_replication_role = replica.
alter table public.audit_log enable always trigger audit_log_append_only;
alter table public.audit_log enable always trigger audit_log_no_truncate;

-- The retention job: the worker runs it periodically. Deletes at most `batch_size` entries older
-- than `retention` and returns how many; the worker calls again while a call fills its batch.
create function private.purge_audit_log(
    retention interval default '400 days',
    batch_size integer default 10000
) returns integer
language plpgsql
volatile
security definer  -- nobody else may delete entries
set search_path = ''
as $$
declare
    cutoff constant timestamptz := now() - retention;
    purged integer;
begin
    if retention is null or retention < interval '1 day' then
        raise exception using
            errcode = 'invalid_parameter_value',
            message = format('audit retention must be at least a day, not %s', retention);
    end if;
    if batch_size is null or batch_size < 1 then
        raise exception using
            errcode = 'invalid_parameter_value',
            message = format('batch size must be positive, not %s', batch_size);
    end if;
    perform set_config('parity.audit_purge_before', cutoff::text, true);
    delete from public.audit_log
     where id in (
        select id from public.audit_log where at < cutoff limit batch_size
           for update skip locked);
    get diagnostics purged = row_count;
    perform set_config('parity.audit_purge_before', '', true);
    return purged;
end
$$;
revoke all on function private.purge_audit_log(interval, integer) from public, anon, authenticated;
grant execute on function private.purge_audit_log(interval, integer) to service_role;
comment on function private.purge_audit_log(interval, integer) is
    'The audit trail''s retention job (run by the worker): deletes up to batch_size entries older '
    'than retention (at least a day) and returns how many.';

-- The triggers on the tables last -----------------------------------------------------------------

-- Each takes a SHARE ROW EXCLUSIVE lock on its table until the migration commits: only these
-- catalog changes run under them. Column-scoped: the gateway's last_used_at flush and the
-- worker's delivery bookkeeping do not fire them (the deliveries' one checks a WHEN first).
-- They take locks on tables in use: short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a retry
-- releases all of its locks.
select private.with_lock_retries($ddl$
create trigger webhook_deliveries_audit
    after update of status on public.webhook_deliveries
    for each row
    when (old.status <> 'pending' and new.status = 'pending')
    execute function private.audit_webhook_deliveries();

create trigger webhook_endpoints_audit
    after insert or delete on public.webhook_endpoints
    for each row execute function private.audit_webhook_endpoints();
-- Not column-scoped: endpoints gain columns (`name`) after this migration, and are written
-- rarely (owners' edits, a receiver's 410); the function writes nothing unless an audited
-- column changed.
create trigger webhook_endpoints_audit_update
    after update on public.webhook_endpoints
    for each row execute function private.audit_webhook_endpoints();

create trigger api_keys_audit
    after insert or delete on public.api_keys
    for each row execute function private.audit_api_keys();
create trigger api_keys_audit_update
    after update of status, expires_at, name on public.api_keys
    for each row
    when (
        old.status is distinct from new.status
        or old.expires_at is distinct from new.expires_at
        or old.name is distinct from new.name
    )
    execute function private.audit_api_keys();

create trigger projects_audit
    after insert or delete on public.projects
    for each row execute function private.audit_projects();
create trigger projects_audit_update
    after update of name, environment, rate_limit, request_cap, status on public.projects
    for each row execute function private.audit_projects();
$ddl$);
