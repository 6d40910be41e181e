-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Gateways remember unknown token hashes for a few seconds (a flood of made-up tokens must not
-- cost a query each). A key created in that time must work at once, so creating a key notifies
-- channel `gateway_invalidate` too (`key:<id>`; a gateway drops its unknown hashes on it).
-- Changing a key's kind notifies as well: a gateway checks the presented token's kind against
-- the row and must not keep a stale kind cached.
--
-- Both triggers are `enable always`: they fire even under `session_replication_role = replica`
-- (a restore, a replication apply, an operator editing by hand around the usual triggers), so no
-- way of writing a key leaves a gateway with a wrong idea of it.

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
create trigger api_keys_notify_gateway_insert
    after insert on public.api_keys
    for each row execute function private.notify_gateway('key');

create trigger api_keys_notify_gateway_kind
    after update of kind on public.api_keys
    for each row
    when (old.kind is distinct from new.kind)
    execute function private.notify_gateway('key');

alter table public.api_keys enable always trigger api_keys_notify_gateway_insert;
alter table public.api_keys enable always trigger api_keys_notify_gateway_kind;

comment on trigger api_keys_notify_gateway_insert on public.api_keys is
    'Tells gateways a key was created, so they forget token hashes they found unknown.';
comment on trigger api_keys_notify_gateway_kind on public.api_keys is
    'Tells gateways to drop a cached key whose kind changed.';
$ddl$);
