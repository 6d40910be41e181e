-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Every applied promotion is recorded: one `promotion.applied` entry in the target project's audit
-- trail, with the plan that was applied (the list of changes, never a secret), written in the
-- promotion's own transaction, so the entry and the changes commit or roll back together. The
-- changes themselves leave their own entries through the tables' triggers (20261201000000).
--
-- Nobody forges it: the function below is in `private` (not served by PostgREST or pg_graphql)
-- and only service_role may execute it, so a signed-in user acting as `authenticated` cannot
-- write a `promotion.applied` entry, nor any other (audit_log grants them select only). The
-- console, having applied the promotion as the user, switches to service_role for this one call;
-- the user's claims stay set, so the entry names the user who promoted, and only an owner of the
-- app is accepted.
--
-- Only a function is created: no lock on a table in use.

create function private.record_promotion(
    app_id uuid,
    source_project_id uuid,
    target_project_id uuid,
    plan jsonb,
    fingerprint text
) returns bigint
language plpgsql
volatile
security definer  -- nobody may insert into audit_log but the triggers and this
set search_path = ''
as $$
declare
    app public.apps;
    source public.projects;
    target public.projects;
    claims constant jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    acting_user constant uuid := (claims ->> 'sub')::uuid;
    actor public.audit_actor_type;
    headers jsonb;
    address text;
    entry_id bigint;
begin
    select a.* into app from public.apps as a where a.id = record_promotion.app_id;
    if not found then
        raise exception using
            errcode = 'no_data_found',
            message = format('app %s not found', record_promotion.app_id);
    end if;
    select p.* into source
      from public.projects as p
      join public.app_environments as l on l.project_id = p.id and l.app_id = app.id
     where p.id = record_promotion.source_project_id;
    if found then
        select p.* into target
          from public.projects as p
          join public.app_environments as l on l.project_id = p.id and l.app_id = app.id
         where p.id = record_promotion.target_project_id;
    end if;
    if not found then
        raise exception using
            errcode = 'PE009',
            message = format('projects %s and %s are not environments of app %s',
                             record_promotion.source_project_id,
                             record_promotion.target_project_id, app.id);
    end if;
    if private.environment_rank(source.environment)
       >= private.environment_rank(target.environment) then
        raise exception using
            errcode = 'PE009',
            message = format('promotion goes forward only (dev, staging, prod), not %s to %s',
                             source.environment, target.environment);
    end if;
    if plan is null or jsonb_typeof(plan) <> 'array' then
        raise exception using
            errcode = 'invalid_parameter_value',
            message = 'the plan is a list of changes';
    end if;

    if acting_user is not null then
        -- For a signed-in user's request: the user is the actor, and must own the app.
        if acting_user is distinct from app.owner_id then
            raise exception using
                errcode = 'insufficient_privilege',
                message = format('app %s is not the acting user''s', app.id);
        end if;
        actor := 'user'::public.audit_actor_type;
    else
        actor := case current_setting('parity.actor', true)
                     when 'worker' then 'worker'::public.audit_actor_type
                     when 'operator' then 'operator'::public.audit_actor_type
                     else 'platform'::public.audit_actor_type
                 end;
    end if;

    -- The request context, as private.audit_write reads it.
    headers := nullif(current_setting('request.headers', true), '')::jsonb;
    address := btrim(split_part(coalesce(headers ->> 'x-forwarded-for', headers ->> 'x-real-ip'),
                                ',', 1));

    insert into public.audit_log (
        project_id, project_name, project_environment, owner_id, actor_type, actor_id, action,
        target_type, target_id, changes, correlation_id, client_address, user_agent)
    values (
        target.id, target.name, target.environment, target.owner_id, actor, acting_user,
        'promotion.applied', 'app', app.id,
        jsonb_build_object(
            'app', jsonb_build_object('id', app.id, 'name', app.name),
            'from', jsonb_build_object(
                'environment', source.environment, 'project_id', source.id,
                'project_name', source.name),
            'to', jsonb_build_object(
                'environment', target.environment, 'project_id', target.id,
                'project_name', target.name),
            'plan', plan,
            'fingerprint', record_promotion.fingerprint),
        private.audit_correlation_id(),
        left(nullif(address, ''), 100), left(nullif(headers ->> 'user-agent', ''), 500))
    returning id into entry_id;
    return entry_id;
end
$$;
revoke all on function private.record_promotion(uuid, uuid, uuid, jsonb, text)
    from public, anon, authenticated;
grant execute on function private.record_promotion(uuid, uuid, uuid, jsonb, text) to service_role;
comment on function private.record_promotion(uuid, uuid, uuid, jsonb, text) is
    'Writes the promotion.applied audit entry (app, from, to, plan, fingerprint) into the target '
    'project''s trail, in the promotion''s transaction. service_role only: the console calls it '
    'after applying a promotion as the user, whose claims name the actor.';
