-- What a Supabase project provides and our migrations rely on, recreated on vanilla Postgres.
--
-- For local and test databases ONLY: never apply this to a real Supabase project, which already has
-- all of it (and much more). Idempotent: running it twice changes nothing.

-- Roles are cluster-wide; two databases being bootstrapped at once may race to create them.
-- INHERIT, as on Supabase: a role gets the privileges of the roles granted to it.
do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated', 'service_role'] loop
        begin
            execute format('create role %I nologin inherit', role_name);
        exception when duplicate_object or unique_violation then
            null;
        end;
    end loop;
end
$$;

-- Roles live in shared catalogs: change them only when needed, so that bootstraps of several
-- databases at once (parallel test runs) do not update the same catalog rows.
do $$
declare
    role_name text;
begin
    -- Created NOINHERIT by an earlier version of this file: made INHERIT as Supabase has them.
    foreach role_name in array array['anon', 'authenticated', 'service_role'] loop
        if not (select rolinherit from pg_roles where rolname = role_name) then
            execute format('alter role %I inherit', role_name);
        end if;
    end loop;
    if not (select rolbypassrls from pg_roles where rolname = 'service_role') then
        alter role service_role bypassrls;
    end if;
    -- The migration user switches into these roles per transaction, exactly as PostgREST does.
    foreach role_name in array array['anon', 'authenticated', 'service_role'] loop
        if not pg_has_role(current_user, role_name, 'member') then
            execute format('grant %I to %I', role_name, current_user);
        end if;
    end loop;
exception when others then
    -- Changed concurrently by another database's bootstrap: the result is the same.
    null;
end
$$;

create schema if not exists extensions;
create schema if not exists auth;

-- A subset of GoTrue's table: the columns our local sign-in and foreign keys use.
create table if not exists auth.users (
    id uuid primary key default gen_random_uuid(),
    email text unique,
    encrypted_password text,
    role text not null default 'authenticated',
    raw_app_meta_data jsonb not null default '{}'::jsonb,
    raw_user_meta_data jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Same definitions as Supabase's: claims come from the request.jwt.claims setting.
create or replace function auth.uid() returns uuid
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
    )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
    )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;

grant usage on schema auth, extensions, public to anon, authenticated, service_role;
grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;
grant all on auth.users to service_role;

-- Supabase's default privileges: every new object in public is granted to the API roles, and RLS
-- (plus explicit revokes in the migrations) decides what they may actually touch.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
