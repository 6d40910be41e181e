-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- An endpoint older than names gets its name from its URL when it is next written or compared
-- (20261202000000_apps: the parity report and promotion name a project's endpoints before reading
-- them). That naming is the platform's, not a change anybody made, yet the trail recorded it as
-- `webhook_endpoint.updated` by whoever opened the report: a look at the parity report wrote one
-- entry per unnamed endpoint, in the viewer's name. The derived name (the URL's host and path,
-- with the start of the id appended where the project already had it, exactly as
-- private.name_endpoint gives it) is now left out of an update's changes; an update that changed
-- nothing else writes no entry. A name somebody chose is recorded as before.
--
-- Only the function changes (CREATE OR REPLACE FUNCTION locks no table).
create or replace function private.audit_webhook_endpoints() returns trigger
language plpgsql
security definer  -- nobody may insert into audit_log but these triggers
set search_path = ''
as $$
declare
    all_changes jsonb;
    other_changes jsonb;
    derived text;
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
    if old.name is null and new.name is not null then
        derived := private.endpoint_name_from_url(new.url);
        if new.name in (derived, derived || '-' || left(replace(new.id::text, '-', ''), 8)) then
            all_changes := all_changes - 'name';
        end if;
    end if;
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
revoke all on function private.audit_webhook_endpoints() from public, anon, authenticated;
