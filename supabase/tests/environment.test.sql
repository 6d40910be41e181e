-- The environment schema (US-001, US-002): the enum, defaults, and the triggers' refusals.
begin;
create extension if not exists pgtap with schema extensions;
set search_path = public, extensions;

select plan(12);

select enum_has_labels('public', 'environment', array['prod', 'dev', 'staging'],
                       'environment enum is prod, dev, staging');
select col_not_null('public', 'projects', 'environment', 'projects.environment is not null');
select col_default_is('public', 'projects', 'environment', 'prod'::public.environment,
                      'projects default to prod');
select col_not_null('public', 'api_keys', 'environment', 'api_keys.environment is not null');
select col_hasnt_default('public', 'api_keys', 'environment',
                         'a key states its environment explicitly');
select has_trigger('public', 'api_keys', 'api_keys_enforce_environment',
                   'keys are checked against their project');
select has_trigger('public', 'projects', 'projects_enforce_environment_change',
                   'projects cannot change environment under active keys');

insert into auth.users (id) values ('00000000-0000-0000-0000-00000000000a');
insert into public.projects (id, owner_id, name) values
    ('10000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000000a', 'shop');

select throws_ok(
    $$ insert into public.api_keys (project_id, kind, environment, prefix, last_four, key_hash)
       values ('10000000-0000-0000-0000-00000000000a', 'sk', 'dev', 'nm_dev_sk_', 'aaaa',
               sha256('a'::bytea)) $$,
    'PE001', 'API key environment dev does not match project environment prod',
    'a dev key on a prod project is refused, naming both');
select lives_ok(
    $$ insert into public.api_keys (project_id, kind, environment, prefix, last_four, key_hash)
       values ('10000000-0000-0000-0000-00000000000a', 'sk', 'prod', 'nm_live_sk_', 'bbbb',
               sha256('b'::bytea)) $$,
    'a prod key on a prod project is accepted');
select throws_ok(
    $$ update public.api_keys set environment = 'staging' $$,
    'PE001', 'API key environment staging does not match project environment prod',
    'a key cannot be moved into a mismatch');
select throws_ok(
    $$ update public.projects set environment = 'dev' $$,
    'PE002', 'cannot change project environment from prod to dev while it has 1 active API key',
    'a project with an active key keeps its environment');
select lives_ok(
    $$ update public.api_keys set status = 'revoked', revoked_at = now();
       update public.projects set environment = 'dev' $$,
    'once its keys are revoked, the project can move');

select * from finish();
rollback;
