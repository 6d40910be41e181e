-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Gateway cache invalidation (US-002 at request time): every change that can turn an accepted key
-- into a refused one, or change a project's limits, notifies channel `gateway_invalidate`.
-- Gateways LISTEN on it and drop the cached entries named by the payload, so revocation,
-- suspension and environment changes reach every replica within about a second. If notifications
-- are lost, the gateway's cache TTL bounds how long a stale entry can live.
--
-- Payloads name rows by id only (`key:<uuid>` or `project:<uuid>`): never a token or its hash.

-- One function for both tables: the trigger's argument names the kind of row (`key`, `project`).
create function private.notify_gateway() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    perform pg_notify('gateway_invalidate', tg_argv[0] || ':' || coalesce(new.id, old.id)::text);
    return null;
end
$$;
revoke all on function private.notify_gateway() from public, anon, authenticated;

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
-- last_used_at, written by the gateway's own batched flush, changes nothing a gateway caches, so it
-- is left out: the gateway does not invalidate its cache with its own writes.
create trigger api_keys_notify_gateway
    after update of status, expires_at, environment, project_id on public.api_keys
    for each row
    when (
        old.status is distinct from new.status
        or old.expires_at is distinct from new.expires_at
        or old.environment is distinct from new.environment
        or old.project_id is distinct from new.project_id
    )
    execute function private.notify_gateway('key');

create trigger api_keys_notify_gateway_delete
    after delete on public.api_keys
    for each row execute function private.notify_gateway('key');

create trigger projects_notify_gateway
    after update of status, environment, rate_limit, request_cap on public.projects
    for each row
    when (
        old.status is distinct from new.status
        or old.environment is distinct from new.environment
        or old.rate_limit is distinct from new.rate_limit
        or old.request_cap is distinct from new.request_cap
    )
    execute function private.notify_gateway('project');

create trigger projects_notify_gateway_delete
    after delete on public.projects
    for each row execute function private.notify_gateway('project');

-- Fire in every session_replication_role: rows changed by a restore or by logical replication
-- (replica mode) must reach the gateways too, not only after their cache TTL.
alter table public.api_keys enable always trigger api_keys_notify_gateway;
alter table public.api_keys enable always trigger api_keys_notify_gateway_delete;
alter table public.projects enable always trigger projects_notify_gateway;
alter table public.projects enable always trigger projects_notify_gateway_delete;

comment on function private.notify_gateway() is
    'Tells gateways (channel gateway_invalidate) to drop a cached API key (`key:<id>`) or every '
    'cached key of a project (`project:<id>`).';
$ddl$);
