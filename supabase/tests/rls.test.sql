-- Row level security, the core matrix: owners see and change their own rows only; anon sees
-- nothing; authenticated can never read key hashes or webhook secrets; service_role sees all.
begin;
create extension if not exists pgtap with schema extensions;
set search_path = public, extensions;

select plan(32);

-- Two owners, each with a project, a key and a webhook endpoint.
insert into auth.users (id, email) values
    ('00000000-0000-0000-0000-00000000000a', 'a@example.com'),
    ('00000000-0000-0000-0000-00000000000b', 'b@example.com');
insert into public.projects (id, owner_id, name, environment) values
    ('10000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000000a', 'A', 'prod'),
    ('10000000-0000-0000-0000-00000000000b', '00000000-0000-0000-0000-00000000000b', 'B', 'dev');
insert into public.api_keys (id, project_id, kind, environment, prefix, last_four, key_hash) values
    ('20000000-0000-0000-0000-00000000000a', '10000000-0000-0000-0000-00000000000a', 'sk', 'prod',
     'nm_live_sk_', 'aaaa', sha256('a'::bytea)),
    ('20000000-0000-0000-0000-00000000000b', '10000000-0000-0000-0000-00000000000b', 'sk', 'dev',
     'nm_dev_sk_', 'bbbb', sha256('b'::bytea));
insert into public.webhook_endpoints (project_id, url, secret) values
    ('10000000-0000-0000-0000-00000000000a', 'https://a.example.com/hook', 'whsec_YQ=='),
    ('10000000-0000-0000-0000-00000000000b', 'https://b.example.com/hook', 'whsec_Yg==');
insert into public.events (project_id, type) values
    ('10000000-0000-0000-0000-00000000000a', 'project.created'),
    ('10000000-0000-0000-0000-00000000000b', 'project.created');

-- RLS is on for every table in public.
select is(
    (select count(*)::int from pg_tables where schemaname = 'public' and not rowsecurity),
    0, 'every table in public has row level security enabled');

-- Signed in as A.
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-00000000000a", "role": "authenticated"}';

select results_eq('select name from public.projects', array['A'], 'A sees only A''s project');
select is((select count(*)::int from public.api_keys), 1, 'A sees only A''s key');
select is((select count(*)::int from public.api_keys
            where project_id = '10000000-0000-0000-0000-00000000000b'), 0, 'A cannot see B''s key');
select is((select count(*)::int from public.webhook_endpoints), 1, 'A sees only A''s endpoint');
select is((select count(*)::int from public.events), 1, 'A sees only A''s events');
select is((select count(*)::int from public.webhook_deliveries), 1, 'A sees only A''s deliveries');

select is_empty(
    $$ update public.projects set name = 'mine' where id = '10000000-0000-0000-0000-00000000000b'
       returning id $$,
    'A cannot rename B''s project');
select is_empty(
    $$ delete from public.projects where id = '10000000-0000-0000-0000-00000000000b' returning id $$,
    'A cannot delete B''s project');
select is_empty(
    $$ update public.api_keys set status = 'revoked'
       where id = '20000000-0000-0000-0000-00000000000b' returning id $$,
    'A cannot revoke B''s key');
select is_empty(
    $$ delete from public.webhook_endpoints
       where project_id = '10000000-0000-0000-0000-00000000000b' returning id $$,
    'A cannot delete B''s endpoint');
select throws_ok(
    $$ insert into public.projects (owner_id, name)
       values ('00000000-0000-0000-0000-00000000000b', 'planted') $$,
    '42501', null, 'A cannot create a project owned by B');
select throws_ok(
    $$ select public.issue_api_key('10000000-0000-0000-0000-00000000000b', 'sk') $$,
    'P0002', 'project 10000000-0000-0000-0000-00000000000b not found',
    'A cannot issue a key in B''s project, and learns nothing about it');
select throws_ok(
    $$ insert into public.webhook_endpoints (project_id, url, secret)
       values ('10000000-0000-0000-0000-00000000000b', 'https://evil.example.com', 'whsec_eA==') $$,
    '42501', null, 'A cannot add an endpoint to B''s project');
select throws_ok(
    $$ select key_hash from public.api_keys $$,
    '42501', null, 'authenticated cannot read key hashes');
select throws_ok(
    $$ select secret from public.webhook_endpoints $$,
    '42501', null, 'authenticated cannot read webhook secrets');
select throws_ok(
    $$ update public.projects set status = 'active' $$,
    '42501', null, 'owners cannot lift their own suspension');
select throws_ok(
    $$ update public.projects set request_cap = 1000000000 $$,
    '42501', null, 'owners cannot raise their own hard cap');
select throws_ok(
    $$ insert into public.events (project_id, type)
       values ('10000000-0000-0000-0000-00000000000a', 'project.suspended') $$,
    '42501', null, 'owners cannot forge platform events');
select lives_ok(
    $$ insert into public.events (project_id, type)
       values ('10000000-0000-0000-0000-00000000000a', 'webhook.test') $$,
    'owners can send a test event to their own endpoints');
select lives_ok(
    $$ update public.projects set name = 'A2' where id = '10000000-0000-0000-0000-00000000000a' $$,
    'A can rename A''s project');
select throws_ok(
    $$ select * from public.worker_heartbeats $$,
    '42501', null, 'authenticated cannot read worker internals');

-- Signed in as B: the mirror image.
reset role;
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-00000000000b", "role": "authenticated"}';
select results_eq('select name from public.projects', array['B'], 'B sees only B''s project');
select results_eq('select last_four from public.api_keys', array['bbbb'], 'B sees only B''s key');

-- Anonymous: nothing at all.
reset role;
set local role anon;
set local request.jwt.claims = '{"role": "anon"}';
select throws_ok('select * from public.projects', '42501', null, 'anon cannot read projects');
select throws_ok('select * from public.api_keys', '42501', null, 'anon cannot read keys');
select throws_ok('select * from public.webhook_endpoints', '42501', null,
                 'anon cannot read endpoints');
select throws_ok('select * from public.webhook_deliveries', '42501', null,
                 'anon cannot read deliveries');

-- The service (gateway, worker) sees everything, secrets included.
reset role;
set local role service_role;
select is((select count(*)::int from public.projects), 2, 'service_role sees every project');
select is((select count(*)::int from public.api_keys where key_hash is not null), 2,
          'service_role reads key hashes');
select is((select count(*)::int from public.webhook_endpoints where secret like 'whsec_%'), 2,
          'service_role reads webhook secrets');
select is((select name from public.projects where id = '10000000-0000-0000-0000-00000000000a'),
          'A2', 'the owner''s rename went through');

select * from finish();
rollback;
