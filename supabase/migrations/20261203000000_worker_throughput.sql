-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Two things that keep the worker's claim cheap for every tenant.
--
-- 1. A cap on webhook endpoints per project, held here so it binds every writer (console,
--    PostgREST, operators). A claim walks the endpoints that have work (one index probe each), so
--    a project with thousands of endpoints would make every other tenant's claims slower. The cap
--    is a row of private.platform_limits (default 50), changed by an operator with one UPDATE;
--    projects that already have more keep them, but cannot add another.
-- 2. Autovacuum settings for webhook_deliveries suited to a queue table: every delivery is
--    updated two or three times (claim, record, lease renewals), none of them HOT (the updates
--    change columns the queue indexes filter on), so dead index entries pile up at the head of
--    each endpoint's queue, where every claim reads. The default (20% of the table, which only
--    grows) let them stay for minutes; throughput fell by a fifth over four unvacuumed rounds.

-- Platform limits ----------------------------------------------------------------------------------

create table private.platform_limits (
    name text primary key check (name ~ '^[a-z_]+$'),
    value integer not null check (value >= 0),
    description text not null
);
comment on table private.platform_limits is
    'Limits the database enforces for every project, changed by an operator (UPDATE ... SET '
    'value); not exposed through PostgREST.';
comment on column private.platform_limits.name is 'What is limited, e.g. webhook_endpoints_per_project.';
comment on column private.platform_limits.value is 'The limit.';
comment on column private.platform_limits.description is 'What the limit bounds and why.';

alter table private.platform_limits enable row level security;
revoke all on private.platform_limits from public, anon, authenticated;
grant select on private.platform_limits to service_role;
create policy platform_limits_service_read on private.platform_limits
    for select to service_role using (true);

insert into private.platform_limits (name, value, description) values (
    'webhook_endpoints_per_project', 50,
    'Most webhook endpoints one project may have (enabled or not). Each endpoint with work costs '
    'every claim of every worker an index probe, so no tenant may have unbounded many.'
);

-- SQLSTATE PE010: a project already has as many webhook endpoints as it may.
-- Security definer: the count covers every endpoint of the project whatever the caller may see,
-- and reads the private limit. The project row is locked (FOR NO KEY UPDATE, which foreign-key
-- checks and readers pass) so that two endpoints created at once for one project are counted one
-- after the other: both cannot take the last place.
create function private.enforce_webhook_endpoint_limit() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    allowed integer;
    existing integer;
begin
    perform 1 from public.projects where id = new.project_id for no key update;
    select l.value into allowed
      from private.platform_limits as l
     where l.name = 'webhook_endpoints_per_project';
    allowed := coalesce(allowed, 50);
    select count(*) into existing
      from public.webhook_endpoints as w
     where w.project_id = new.project_id and w.id <> new.id;
    if existing >= allowed then
        raise exception using
            errcode = 'PE010',
            message = format(
                'project %s already has %s webhook endpoints, the most a project may have (%s)',
                new.project_id, existing, allowed),
            hint = 'Delete an endpoint it no longer needs, or subscribe an existing endpoint to more '
                   'event types; the platform can raise the limit.';
    end if;
    return new;
end
$$;
revoke all on function private.enforce_webhook_endpoint_limit() from public, anon, authenticated;
comment on function private.enforce_webhook_endpoint_limit() is
    'Refuses (PE010) a webhook endpoint beyond private.platform_limits '
    '(webhook_endpoints_per_project, default 50) for its project.';

-- Takes SHARE ROW EXCLUSIVE on webhook_endpoints for a moment (catalog only): writes to endpoints
-- wait for it, at most lock_timeout; reads (the claim's join) do not.
create trigger webhook_endpoints_enforce_limit
    before insert or update of project_id on public.webhook_endpoints
    for each row execute function private.enforce_webhook_endpoint_limit();

-- Autovacuum for the queue -------------------------------------------------------------------------

-- Vacuum once 1,000 rows plus 1% of the table are dead (the default waits for 20%), analyze at
-- 2%, and vacuum appended rows at 1% too (their visibility map lets later vacuums skip them).
-- SET (storage parameters) takes SHARE UPDATE EXCLUSIVE: reads and writes go on; only vacuum and
-- other schema changes wait.
alter table public.webhook_deliveries set (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
