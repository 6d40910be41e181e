-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- The platform as it was before environments: projects owned by users, and their API keys.
-- Kept as its own migration so that a database already holding projects is migrated (and
-- backfilled) by the environments migration that follows, exactly as production would be.

create schema if not exists private;
comment on schema private is
    'Trigger functions and helpers; not exposed through the API.';
revoke all on schema private from public;
grant usage on schema private to anon, authenticated, service_role;

create type public.project_status as enum ('active', 'suspended');
comment on type public.project_status is
    'active serves traffic; suspended is refused by the gateway until an operator lifts it.';

create table public.projects (
    id uuid primary key default gen_random_uuid(),
    owner_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
    name text not null check (char_length(btrim(name)) between 1 and 100),
    status public.project_status not null default 'active',
    rate_limit integer check (rate_limit > 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
comment on table public.projects is
    'A customer''s project: the unit that API keys, usage, suspensions and webhooks belong to.';
comment on column public.projects.owner_id is 'The auth.users row that owns the project.';
comment on column public.projects.status is
    'Set by the platform (auto-suspend, operators); not writable by the owner.';
comment on column public.projects.rate_limit is
    'Requests per rate-limit window before the environment multiplier; null means the platform '
    'default.';

create index projects_owner_id_idx on public.projects (owner_id);

create type public.api_key_kind as enum ('pk', 'sk');
comment on type public.api_key_kind is
    'pk: publishable, read-only requests, safe in a browser; sk: secret, full access.';

create type public.api_key_status as enum ('active', 'revoked');

create table public.api_keys (
    id uuid primary key default gen_random_uuid(),
    project_id uuid not null references public.projects (id) on delete cascade,
    name text not null default '' check (char_length(name) <= 100),
    kind public.api_key_kind not null,
    prefix text not null,
    last_four text not null check (char_length(last_four) = 4),
    key_hash bytea not null check (octet_length(key_hash) = 32),
    status public.api_key_status not null default 'active',
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    constraint api_keys_revoked_at_matches_status
        check ((status = 'revoked') = (revoked_at is not null))
);
comment on table public.api_keys is
    'API keys of a project. Only a SHA-256 of the whole token is stored; the token is shown once.';
comment on column public.api_keys.prefix is
    'Public part of the token shown to people, e.g. nm_live_sk_.';
comment on column public.api_keys.last_four is 'Last four characters of the token, for display.';
comment on column public.api_keys.key_hash is
    'SHA-256 of the whole token. Never readable by the authenticated role.';
comment on column public.api_keys.expires_at is
    'After this time the key no longer authenticates; null means it does not expire.';

create unique index api_keys_key_hash_key on public.api_keys (key_hash);
create index api_keys_project_id_idx on public.api_keys (project_id);

-- updated_at, kept by the database so no writer can forget it.
create function private.touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    return new;
end
$$;

create trigger projects_touch_updated_at
    before update on public.projects
    for each row execute function private.touch_updated_at();

-- Row level security: owners see and change their own rows only; anon nothing.
alter table public.projects enable row level security;
alter table public.api_keys enable row level security;

revoke all on public.projects, public.api_keys from anon;
revoke all on public.projects, public.api_keys from authenticated;

grant select on public.projects to authenticated;
grant insert (name, owner_id) on public.projects to authenticated;
grant update (name) on public.projects to authenticated;
grant delete on public.projects to authenticated;

-- key_hash is deliberately absent: authenticated can write a hash but never read one back.
grant select (
    id, project_id, name, kind, prefix, last_four, status,
    created_at, expires_at, revoked_at, last_used_at
) on public.api_keys to authenticated;
grant insert (project_id, name, kind, prefix, last_four, key_hash, expires_at)
    on public.api_keys to authenticated;
grant update (name, status, revoked_at, expires_at) on public.api_keys to authenticated;
grant delete on public.api_keys to authenticated;

create policy "owners read their projects" on public.projects
    for select to authenticated
    using (owner_id = (select auth.uid()));
create policy "owners create their projects" on public.projects
    for insert to authenticated
    with check (owner_id = (select auth.uid()));
create policy "owners update their projects" on public.projects
    for update to authenticated
    using (owner_id = (select auth.uid()))
    with check (owner_id = (select auth.uid()));
create policy "owners delete their projects" on public.projects
    for delete to authenticated
    using (owner_id = (select auth.uid()));

create policy "owners read their keys" on public.api_keys
    for select to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners create their keys" on public.api_keys
    for insert to authenticated
    with check (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners update their keys" on public.api_keys
    for update to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())))
    with check (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners delete their keys" on public.api_keys
    for delete to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));
