-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- The database is the boundary. `public` is served by PostgREST and pg_graphql to anyone holding the
-- anon key and their own access token, so every rule the product relies on holds here, for a
-- signed-in user talking to those APIs directly, not only in the console:
--
-- * API keys are issued by the platform only: `public.issue_api_key` generates the token in the
--   database and stores a prefix, kind and environment that agree with it. `authenticated` cannot
--   insert key rows, nor write their hash, prefix, kind, environment or project.
-- * A key's lifecycle only moves forward, for everyone: revocation is final, and an expiry can be
--   set or moved earlier but never removed or extended.
-- * Owners cannot write delivery status or attempt fields; `public.redeliver_webhook` is the one
--   redelivery path and refuses disabled endpoints.
-- * Endpoints record who disabled them; an owner may enable again only what they or a receiver's
--   410 disabled, never what an operator disabled.
--
-- Constraints on existing tables are added NOT VALID here (no scan under ACCESS EXCLUSIVE) and
-- validated by the next migration, under a lock that lets reads and writes through.

-- Who is calling ----------------------------------------------------------------------------------

-- The `role` setting is what PostgREST (and shared.db) switch to per request: anon, authenticated
-- or service_role. SECURITY DEFINER changes the current user, not this setting, so functions
-- running as their owner still see who called them. `none` means no SET ROLE at all: a login role
-- with direct privileges (the migration user, a superuser), which is the platform too.
create function private.caller_is_platform() returns boolean
language sql
stable
set search_path = ''
as $$
    select current_setting('role') not in ('anon', 'authenticated')
$$;
comment on function private.caller_is_platform() is
    'True unless the caller acts as anon or authenticated (an API request): the platform '
    '(service_role, migrations) may do what owners may not.';

-- API keys: issued by the platform only -----------------------------------------------------------

-- SQLSTATE PE004: a write that would move a key's lifecycle backwards or change what its token is.
create function private.enforce_api_key_lifecycle() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if (new.id, new.project_id, new.kind, new.environment, new.prefix, new.last_four,
        new.key_hash, new.created_at)
       is distinct from
       (old.id, old.project_id, old.kind, old.environment, old.prefix, old.last_four,
        old.key_hash, old.created_at) then
        raise exception using
            errcode = 'PE004',
            message = format(
                'API key %s: its token, project, kind, environment and creation time never change',
                old.id),
            hint = 'Issue a new key instead.';
    end if;

    if old.status = 'revoked' then
        if new.status is distinct from old.status then
            raise exception using
                errcode = 'PE004',
                message = format('API key %s is revoked, and revocation is final', old.id),
                hint = 'Issue a new key instead.';
        end if;
        if new.revoked_at is distinct from old.revoked_at then
            raise exception using
                errcode = 'PE004',
                message = format('API key %s: when it was revoked never changes', old.id);
        end if;
    elsif new.status = 'revoked' then
        -- Owners cannot write revoked_at: the database records the moment.
        new.revoked_at := coalesce(new.revoked_at, now());
    end if;

    if old.expires_at is not null
       and (new.expires_at is null or new.expires_at > old.expires_at) then
        raise exception using
            errcode = 'PE004',
            message = format(
                'API key %s: its expiry can only be set or moved earlier, not %s',
                old.id,
                case when new.expires_at is null then 'removed' else 'extended' end),
            detail = format('it expires at %s', old.expires_at),
            hint = 'Issue a new key for longer access.';
    end if;
    return new;
end
$$;
revoke all on function private.enforce_api_key_lifecycle() from public, anon, authenticated;
comment on function private.enforce_api_key_lifecycle() is
    'Refuses (PE004) reactivating a revoked key, removing or extending an expiry, and changing '
    'what a key is; fills revoked_at when a key is revoked.';

-- CRC32 (IEEE), as zlib.crc32: the checksum that ends every token (shared/keys.py).
create function private.crc32(data bytea) returns bigint
language plpgsql
immutable
strict
set search_path = ''
as $$
declare
    crc bigint := 4294967295;
begin
    for i in 0 .. length(data) - 1 loop
        crc := crc # get_byte(data, i);
        for bit in 1 .. 8 loop
            if (crc & 1) = 1 then
                crc := (crc >> 1) # 3988292384;  -- 0xEDB88320
            else
                crc := crc >> 1;
            end if;
        end loop;
    end loop;
    return crc # 4294967295;
end
$$;
revoke all on function private.crc32(bytea) from public, anon, authenticated;
comment on function private.crc32(bytea) is 'CRC32 of the bytes, the same value as zlib.crc32.';

-- Issues a key: the only way a key row is written. Callers get the token once, here.
create function public.issue_api_key(
    project_id uuid,
    kind public.api_key_kind,
    name text default '',
    expires_at timestamptz default null
) returns table (key_id uuid, token text)
language plpgsql
volatile
security definer  -- authenticated cannot insert key rows; this function is how they get one
set search_path = ''
as $$
#variable_conflict use_column
declare
    base62 constant text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    -- The bytes of a version 4 UUID that are wholly random (the others carry version, variant).
    random_bytes constant integer[] := array[0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14, 15];
    key_environment public.environment;
    body text;
    random_part text := '';
    checksum text := '';
    crc bigint;
    bytes bytea;
    b integer;
    i integer;
begin
    if issue_api_key.kind is null then
        raise exception using
            errcode = 'invalid_parameter_value',
            message = 'invalid key kind null: expected ''pk'' or ''sk''';
    end if;
    if issue_api_key.expires_at is not null and issue_api_key.expires_at <= now() then
        raise exception using
            errcode = 'invalid_parameter_value',
            message = 'expiry must be in the future: a key that never works is a mistake';
    end if;

    -- The caller's own project (or any, for the platform). FOR SHARE: the project's environment
    -- cannot change before this transaction ends.
    select p.environment into key_environment
      from public.projects as p
     where p.id = issue_api_key.project_id
       and (private.caller_is_platform() or p.owner_id = (select auth.uid()))
       for share;
    if not found then
        raise exception using
            errcode = 'no_data_found',
            message = format('project %s not found', issue_api_key.project_id),
            hint = 'Issue keys in one of your own projects.';
    end if;

    body := 'nm_' || case key_environment when 'prod' then 'live' else key_environment::text end
        || '_' || issue_api_key.kind::text || '_';
    -- 32 base62 characters from a CSPRNG (gen_random_uuid uses pg_strong_random), without modulo
    -- bias: bytes from 248 up are dropped.
    while char_length(random_part) < 32 loop
        bytes := uuid_send(gen_random_uuid());
        foreach i in array random_bytes loop
            b := get_byte(bytes, i);
            if b < 248 and char_length(random_part) < 32 then
                random_part := random_part || substr(base62, b % 62 + 1, 1);
            end if;
        end loop;
    end loop;
    crc := private.crc32(convert_to(body || random_part, 'UTF8'));
    for digit in 1 .. 6 loop
        checksum := substr(base62, (crc % 62)::integer + 1, 1) || checksum;
        crc := crc / 62;
    end loop;
    token := body || random_part || checksum;

    insert into public.api_keys
        (project_id, name, kind, environment, prefix, last_four, key_hash, expires_at)
    values (
        issue_api_key.project_id,
        btrim(coalesce(issue_api_key.name, '')),
        issue_api_key.kind,
        key_environment,
        body,
        right(token, 4),
        sha256(convert_to(token, 'UTF8')),
        issue_api_key.expires_at
    )
    returning id into key_id;
    return next;
end
$$;
revoke all on function public.issue_api_key(uuid, public.api_key_kind, text, timestamptz)
    from public, anon;
grant execute on function public.issue_api_key(uuid, public.api_key_kind, text, timestamptz)
    to authenticated, service_role;
comment on function public.issue_api_key(uuid, public.api_key_kind, text, timestamptz) is
    'Issues an API key in one of the caller''s projects and returns its id and token (the only '
    'time the token exists outside its owner). The prefix, kind and environment stored agree with '
    'the token; the project''s environment decides the environment.';

-- Webhook endpoints: who disabled them -------------------------------------------------------------

create type public.endpoint_disabled_by as enum ('owner', 'receiver', 'operator');
comment on type public.endpoint_disabled_by is
    'owner: from the console or API; receiver: it answered 410 Gone; operator: the platform.';

-- SQLSTATE PE006: an owner undoing what an operator did to an endpoint.
create function private.enforce_endpoint_disabling() returns trigger
language plpgsql
set search_path = ''
as $$
declare
    platform constant boolean := private.caller_is_platform();
begin
    if new.enabled and not old.enabled then
        if old.disabled_by = 'operator' and not platform then
            raise exception using
                errcode = 'PE006',
                message = format(
                    'webhook endpoint %s was disabled by an operator; only an operator can enable '
                    'it again', old.id),
                detail = old.disabled_reason,
                hint = 'Contact support, or create an endpoint for a receiver you control.';
        end if;
        new.disabled_by := null;
        new.disabled_reason := null;
    elsif old.enabled and not new.enabled then
        -- Owners cannot write disabled_by: their disabling is theirs. The platform says who it is
        -- (the worker: receiver); if it does not, it is an operator.
        new.disabled_by := case when platform then coalesce(new.disabled_by, 'operator')
                                else 'owner' end;
    elsif not new.enabled and not platform and old.disabled_by = 'operator'
          and new.disabled_reason is distinct from old.disabled_reason then
        raise exception using
            errcode = 'PE006',
            message = format(
                'webhook endpoint %s was disabled by an operator; its reason is the operator''s',
                old.id);
    end if;
    return new;
end
$$;
revoke all on function private.enforce_endpoint_disabling() from public, anon, authenticated;
comment on function private.enforce_endpoint_disabling() is
    'Records who disabled an endpoint and refuses (PE006) an owner enabling again an endpoint an '
    'operator disabled.';

-- Webhook deliveries: owners read them; redelivery is one function ---------------------------------

-- SQLSTATE PE005: the delivery cannot be redelivered now.
create function public.redeliver_webhook(delivery_id uuid) returns void
language plpgsql
volatile
security definer  -- owners cannot write delivery status; this is their one way to reschedule
set search_path = ''
as $$
#variable_conflict use_column
declare
    found_delivery record;
begin
    -- FOR SHARE of the endpoint: it cannot be disabled before this transaction ends (disabling
    -- cancels pending deliveries, which would otherwise miss this one).
    select d.id, d.status, d.project_id, e.enabled
      into found_delivery
      from public.webhook_deliveries as d
      join public.webhook_endpoints as e on e.id = d.endpoint_id
     where d.id = redeliver_webhook.delivery_id
       and (private.caller_is_platform()
            or d.project_id in (
                select p.id from public.projects as p where p.owner_id = (select auth.uid())))
       for update of d
       for share of e;
    if not found then
        raise exception using
            errcode = 'no_data_found',
            message = format('delivery %s not found', redeliver_webhook.delivery_id);
    end if;
    if found_delivery.status = 'pending' then
        raise exception using
            errcode = 'PE005',
            message = format('delivery %s is already pending', found_delivery.id),
            hint = 'It is attempted when due.';
    end if;
    if not found_delivery.enabled then
        raise exception using
            errcode = 'PE005',
            message = format(
                'the endpoint of delivery %s is disabled: enable it, then redeliver',
                found_delivery.id);
    end if;

    -- The id (the receiver's webhook-id) and the attempt count are kept; retry_base records the
    -- attempts made so far, and the retry policy counts only the attempts after it.
    update public.webhook_deliveries
       set status = 'pending',
           next_attempt_at = now(),
           completed_at = null,
           lease_expires_at = null,
           leased_by = null,
           retry_base = attempts
     where id = found_delivery.id;
    perform pg_notify('webhook_deliveries', found_delivery.project_id::text);
end
$$;
revoke all on function public.redeliver_webhook(uuid) from public, anon;
grant execute on function public.redeliver_webhook(uuid) to authenticated, service_role;
comment on function public.redeliver_webhook(uuid) is
    'Makes a finished delivery of the caller''s due again now, same webhook-id. Refuses (PE005) a '
    'pending delivery and a delivery whose endpoint is disabled.';

-- The tables last ----------------------------------------------------------------------------------

-- The ACCESS EXCLUSIVE locks these statements take are held until the migration commits, so they
-- come after everything else: only catalog changes run under them.

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
revoke insert, update on public.api_keys from authenticated;
-- Owners name and revoke their keys, and set or shorten an expiry (the trigger below says how).
grant update (name, status, expires_at) on public.api_keys to authenticated;
drop policy "owners create their keys" on public.api_keys;

alter table public.api_keys
    add constraint api_keys_prefix_matches_kind_and_environment check (
        prefix = 'nm_'
            || case environment when 'prod' then 'live' else environment::text end
            || '_' || kind::text || '_'
    ) not valid;

-- Not on updates of name or last_used_at alone: the gateway's batched last-used flush skips it.
create trigger api_keys_enforce_lifecycle
    before update of id, project_id, kind, environment, prefix, last_four, key_hash, created_at,
        status, expires_at, revoked_at
    on public.api_keys
    for each row execute function private.enforce_api_key_lifecycle();

alter table public.webhook_endpoints add column disabled_by public.endpoint_disabled_by;
comment on column public.webhook_endpoints.disabled_by is
    'Who disabled the endpoint (null while enabled). Owners may enable again what they or a '
    'receiver disabled, not what an operator disabled. Endpoints disabled before this was '
    'recorded have null and count as their owner''s.';
alter table public.webhook_endpoints
    add constraint webhook_endpoints_enabled_has_no_disabling check (
        not enabled or (disabled_by is null and disabled_reason is null)
    ) not valid;

grant select (disabled_by) on public.webhook_endpoints to authenticated;

create trigger webhook_endpoints_enforce_disabling
    before update of enabled, disabled_by, disabled_reason on public.webhook_endpoints
    for each row execute function private.enforce_endpoint_disabling();

revoke update on public.webhook_deliveries from authenticated;
drop policy "owners redeliver their deliveries" on public.webhook_deliveries;
$ddl$);
