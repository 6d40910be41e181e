-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Disabling a webhook endpoint cancels its pending deliveries in the same transaction, whoever
-- disables it: its owner (console), an operator, or the worker after a 410 Gone. One rule in the
-- database instead of one per writer. A delivery in flight at that moment is cancelled too; its
-- worker's lease-guarded record then finds it no longer pending and leaves it alone.

create function private.cancel_deliveries_of_disabled_endpoint() returns trigger
language plpgsql
security definer  -- owners may disable endpoints but not write delivery bookkeeping columns
set search_path = ''
as $$
begin
    update public.webhook_deliveries
       set status = 'cancelled',
           completed_at = now(),
           lease_expires_at = null,
           leased_by = null,
           last_error = 'endpoint disabled' || coalesce(': ' || new.disabled_reason, '')
     where endpoint_id = new.id
       and status = 'pending';
    return null;
end
$$;
revoke all on function private.cancel_deliveries_of_disabled_endpoint()
    from public, anon, authenticated;
comment on function private.cancel_deliveries_of_disabled_endpoint() is
    'Cancels the pending deliveries of an endpoint that was just disabled.';

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
create trigger webhook_endpoints_cancel_deliveries_when_disabled
    after update of enabled on public.webhook_endpoints
    for each row
    when (old.enabled and not new.enabled)
    execute function private.cancel_deliveries_of_disabled_endpoint();
$ddl$);
