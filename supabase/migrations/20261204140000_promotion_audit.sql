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
-- It comes after 20261204130000_audit_cheaper_triggers, whose private.audit_context gives the
-- entry its request context and correlation id as the triggers' entries get them.
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
    acting_user constant uuid :=
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid;
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
    -- For a signed-in user's request the user is the actor, and must own the app.
    if acting_user is not null and acting_user <> app.owner_id then
        raise exception using
            errcode = 'insufficient_privilege',
            message = format('app %s is not the acting user''s', app.id);
    end if;

    -- The request context and correlation id as every entry gets them (private.audit_context,
    -- 20261204130000). Its actor follows the role, which is service_role here: a user's claims
    -- name the actor instead.
    insert into public.audit_log (
        project_id, project_name, project_environment, owner_id, actor_type, actor_id, action,
        target_type, target_id, changes, correlation_id, client_address, user_agent)
    select target.id, target.name, target.environment, target.owner_id,
           case when acting_user is null then c.actor_type
                else 'user'::public.audit_actor_type end,
           acting_user, 'promotion.applied', 'app', app.id,
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
           c.correlation_id, c.client_address, c.user_agent
      from private.audit_context as c
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
