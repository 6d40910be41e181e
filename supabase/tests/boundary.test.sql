-- The database is the boundary: keys are issued by the platform, their lifecycle only moves forward,
-- deliveries are rescheduled only through redeliver_webhook, and endpoints remember who disabled
-- them. Each rule is tried the way a signed-in user would, through the API roles.
begin;
create extension if not exists pgtap with schema extensions;
set search_path = public, extensions;

select plan(34);

insert into auth.users (id, email) values
    ('00000000-0000-0000-0000-00000000000a', 'a@example.com'),
    ('00000000-0000-0000-0000-00000000000b', 'b@example.com');
insert into public.projects (id, owner_id, name, environment) values
    ('10000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000000a', 'A', 'dev');
insert into public.webhook_endpoints (id, project_id, url, secret) values
    ('30000000-0000-0000-0000-000000000001', '10000000-0000-0000-0000-00000000000a',
     'https://a.example.com/owner', 'whsec_YQ=='),
    ('30000000-0000-0000-0000-000000000002', '10000000-0000-0000-0000-00000000000a',
     'https://a.example.com/operator', 'whsec_YQ=='),
    ('30000000-0000-0000-0000-000000000003', '10000000-0000-0000-0000-00000000000a',
     'https://a.example.com/receiver', 'whsec_YQ==');
insert into public.events (id, project_id, type) values
    ('40000000-0000-0000-0000-000000000001', '10000000-0000-0000-0000-00000000000a',
     'project.created');
update public.webhook_deliveries set status = 'exhausted', attempts = 4, completed_at = now();
do $$ begin
    perform set_config('test.delivery_of_a', (select min(id::text) from public.webhook_deliveries), true);
end $$;

-- Catalog facts.
select ok(not has_table_privilege('authenticated', 'public.api_keys', 'insert'),
          'authenticated cannot insert key rows');
select ok(not has_column_privilege('authenticated', 'public.api_keys', 'key_hash', 'update')
          and not has_column_privilege('authenticated', 'public.api_keys', 'prefix', 'update')
          and not has_column_privilege('authenticated', 'public.api_keys', 'environment', 'update'),
          'authenticated cannot write what a key is');
select ok(not has_function_privilege('anon', 'public.issue_api_key(uuid, public.api_key_kind, text, timestamptz)', 'execute'),
          'anon cannot issue keys');
select ok(not has_table_privilege('authenticated', 'public.webhook_deliveries', 'update'),
          'owners cannot write delivery status or attempt fields');
select ok(
    (select count(*) from pg_trigger where tgname like '%notify_gateway%') >= 4,
    'gateway notify triggers exist on keys and projects');
select is(
    array(select tgname::text from pg_trigger
           where tgname like '%notify_gateway%' and tgenabled <> 'A' order by tgname),
    array[]::text[],
    'every gateway notify trigger fires in replica mode too (ENABLE ALWAYS)');
select is(
    array(select rolname || '=' || rolinherit::text from pg_roles
           where rolname in ('anon', 'authenticated', 'service_role') order by rolname),
    array['anon=true', 'authenticated=true', 'service_role=true'],
    'API roles are INHERIT, as on Supabase');

select throws_ok(
    $$ insert into public.api_keys (project_id, kind, environment, prefix, last_four, key_hash)
       values ('10000000-0000-0000-0000-00000000000a', 'sk', 'dev', 'nm_live_sk_', 'aaaa',
               sha256('x'::bytea)) $$,
    '23514', null, 'not even the platform stores a prefix that disagrees with the environment');
select throws_ok(
    $$ insert into public.api_keys (project_id, kind, environment, prefix, last_four, key_hash)
       values ('10000000-0000-0000-0000-00000000000a', 'sk', 'dev', 'nm_dev_pk_', 'aaaa',
               sha256('x'::bytea)) $$,
    '23514', null, 'nor one that disagrees with the kind');
select is(private.crc32('hello'::bytea), 907060870::bigint, 'crc32 is zlib''s');

-- Signed in as A.
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-00000000000a", "role": "authenticated"}';

select lives_ok(
    $$ create temporary table issued on commit drop as
       select * from public.issue_api_key('10000000-0000-0000-0000-00000000000a', 'sk', ' mine ') $$,
    'an owner issues a key through issue_api_key');
select results_eq(
    $$ select k.kind::text, k.environment::text, k.prefix, k.last_four, k.name
         from public.api_keys as k join issued as i on i.key_id = k.id $$,
    $$ select 'sk', 'dev', 'nm_dev_sk_', right(token, 4), 'mine' from issued $$,
    'the stored prefix, kind, environment and last four agree with the token');
select matches((select token from issued), '^nm_dev_sk_[0-9A-Za-z]{38}$', 'the token is well formed');
select throws_ok(
    $$ insert into public.api_keys (project_id, kind, environment, prefix, last_four, key_hash)
       values ('10000000-0000-0000-0000-00000000000a', 'sk', 'dev', 'nm_dev_sk_', 'cccc',
               sha256('chosen'::bytea)) $$,
    '42501', null, 'an owner cannot insert a key row with a hash of their choosing');
select throws_ok(
    $$ select public.issue_api_key('10000000-0000-0000-0000-00000000000a', 'pk', '', now()) $$,
    '22023', 'expiry must be in the future: a key that never works is a mistake',
    'a key that would never work is refused');

select lives_ok(
    $$ update public.api_keys set expires_at = now() + interval '1 day' $$,
    'an owner sets an expiry');
select lives_ok(
    $$ update public.api_keys set expires_at = now() + interval '1 hour' $$,
    'an owner moves an expiry earlier');
select throws_like(
    $$ update public.api_keys set expires_at = now() + interval '2 days' $$,
    '%its expiry can only be set or moved earlier, not extended', 'an expiry cannot be extended');
select throws_like(
    $$ update public.api_keys set expires_at = null $$,
    '%its expiry can only be set or moved earlier, not removed', 'an expiry cannot be removed');
select lives_ok($$ update public.api_keys set status = 'revoked' $$, 'an owner revokes a key');
select isnt((select revoked_at from public.api_keys), null, 'the database records when');
select throws_like(
    $$ update public.api_keys set status = 'active' $$,
    '%is revoked, and revocation is final', 'a revoked key cannot be made active again');

select throws_ok(
    $$ update public.webhook_deliveries set status = 'pending' $$,
    '42501', null, 'an owner cannot set a delivery back to pending');
select lives_ok(
    $$ update public.webhook_endpoints set enabled = false
        where id = '30000000-0000-0000-0000-000000000001' $$,
    'an owner disables an endpoint');
select is((select disabled_by::text from public.webhook_endpoints
            where id = '30000000-0000-0000-0000-000000000001'), 'owner',
          'it is recorded as disabled by its owner');
select throws_like(
    $$ select public.redeliver_webhook(id) from public.webhook_deliveries
        where endpoint_id = '30000000-0000-0000-0000-000000000001' $$,
    '%is disabled: enable it, then redeliver', 'no redelivery to a disabled endpoint');
select lives_ok(
    $$ update public.webhook_endpoints set enabled = true
        where id = '30000000-0000-0000-0000-000000000001' $$,
    'an owner enables again what they disabled');
select lives_ok(
    $$ select public.redeliver_webhook(id) from public.webhook_deliveries
        where endpoint_id = '30000000-0000-0000-0000-000000000001' $$,
    'an owner redelivers to an enabled endpoint');
select is((select status::text from public.webhook_deliveries
            where endpoint_id = '30000000-0000-0000-0000-000000000001'), 'pending',
          'the redelivered delivery is due again');

-- The platform disables two endpoints: as an operator, and as the worker after a 410.
reset role;
set local role service_role;
update public.webhook_endpoints set enabled = false, disabled_reason = 'abuse'
 where id = '30000000-0000-0000-0000-000000000002';
update public.webhook_endpoints
   set enabled = false, disabled_by = 'receiver', disabled_reason = '410 Gone'
 where id = '30000000-0000-0000-0000-000000000003';
select results_eq(
    $$ select disabled_by::text from public.webhook_endpoints
        where id in ('30000000-0000-0000-0000-000000000002',
                     '30000000-0000-0000-0000-000000000003') order by url $$,
    array['operator', 'receiver'], 'the platform''s disabling is recorded as operator or receiver');

reset role;
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-00000000000a", "role": "authenticated"}';
select throws_ok(
    $$ update public.webhook_endpoints set enabled = true
        where id = '30000000-0000-0000-0000-000000000002' $$,
    'PE006', null, 'an owner cannot enable again what an operator disabled');
select lives_ok(
    $$ update public.webhook_endpoints set enabled = true
        where id = '30000000-0000-0000-0000-000000000003' $$,
    'an owner enables again what a receiver''s 410 disabled');

-- Signed in as B: A's rows are not there.
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-00000000000b", "role": "authenticated"}';
select throws_ok(
    $$ select public.redeliver_webhook(current_setting('test.delivery_of_a')::uuid) $$,
    'P0002', format('delivery %s not found', current_setting('test.delivery_of_a')),
    'a stranger cannot redeliver, and learns nothing about the delivery');
reset role;
select throws_like(
    $$ select public.redeliver_webhook(id) from public.webhook_deliveries
        where endpoint_id = '30000000-0000-0000-0000-000000000002' $$,
    '%is disabled: enable it, then redeliver', 'not even the platform redelivers to a disabled endpoint');

select * from finish();
rollback;
