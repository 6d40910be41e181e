-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

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
