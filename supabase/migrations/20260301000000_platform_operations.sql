-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- What the gateway and the worker keep in the database: usage counters and hard caps (auto-suspend,
-- US-005), suspensions, and the webhook machinery (outbox, endpoints, deliveries, attempts; US-007).

-- Usage counters ----------------------------------------------------------------------------------

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
create table public.usage_counters (
    project_id uuid not null references public.projects (id) on delete cascade,
    window_start timestamptz not null,
    requests bigint not null default 0 check (requests >= 0),
    request_cap bigint not null check (request_cap > 0),
    handled_at timestamptz,
    updated_at timestamptz not null default now(),
    primary key (project_id, window_start)
);
comment on table public.usage_counters is
    'Requests per project and cap window, flushed in batches by the gateway.';
comment on column public.usage_counters.window_start is
    'Start of the cap window this row counts (windows are aligned to the epoch).';
comment on column public.usage_counters.request_cap is
    'The project''s effective hard cap, copied at each flush so that finding violators never '
    'needs to join every project.';
comment on column public.usage_counters.handled_at is
    'When the auto-suspend sweep acted on this window (suspended, or warned): at most once each.';

-- The sweep reads only this index, so its cost grows with violators, not with projects.
create index usage_counters_unhandled_violators_idx
    on public.usage_counters (window_start)
    where requests >= request_cap and handled_at is null;

-- Suspensions -------------------------------------------------------------------------------------

create table public.suspensions (
    id uuid primary key default gen_random_uuid(),
    project_id uuid not null references public.projects (id) on delete cascade,
    reason text not null,
    requests bigint,
    request_cap bigint,
    window_start timestamptz,
    suspended_at timestamptz not null default now(),
    lifted_at timestamptz,
    lifted_by text,
    lift_reason text
);
comment on table public.suspensions is
    'Every suspension of a project, lifted or not: a project can be suspended, lifted and '
    'suspended again, and each time leaves a row.';
comment on column public.suspensions.requests is 'Requests counted when the project was suspended.';
comment on column public.suspensions.request_cap is 'The hard cap the project had passed.';

-- At most one open suspension per project: concurrent sweepers cannot both suspend.
create unique index suspensions_one_open_per_project
    on public.suspensions (project_id) where lifted_at is null;

-- Events outbox -----------------------------------------------------------------------------------

create table public.events (
    id uuid primary key default gen_random_uuid(),
    project_id uuid not null references public.projects (id) on delete cascade,
    type text not null check (type ~ '^[a-z_]+(\.[a-z_]+)+$'),
    payload jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now()
);
comment on table public.events is
    'Outbox: an event is written in the same transaction as the change that caused it, and fans '
    'out to one webhook delivery per subscribed endpoint.';
comment on column public.events.type is 'Dotted event type, e.g. project.suspended.';

create index events_project_id_created_at_idx on public.events (project_id, created_at desc);

-- Webhook endpoints -------------------------------------------------------------------------------

create table public.webhook_endpoints (
    id uuid primary key default gen_random_uuid(),
    project_id uuid not null references public.projects (id) on delete cascade,
    url text not null check (url ~ '^https?://' and char_length(url) <= 2048),
    description text not null default '' check (char_length(description) <= 200),
    event_types text[] not null default '{}',
    enabled boolean not null default true,
    disabled_reason text,
    secret text not null check (secret ~ '^whsec_[A-Za-z0-9+/=]+$'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
comment on table public.webhook_endpoints is 'Where a project''s events are delivered.';
comment on column public.webhook_endpoints.event_types is
    'Event types delivered to this endpoint; empty means every type.';
comment on column public.webhook_endpoints.disabled_reason is
    'Why the endpoint was disabled, e.g. the receiver answered 410 Gone.';
comment on column public.webhook_endpoints.secret is
    'Standard Webhooks signing secret (whsec_...). Shown once; never readable by authenticated.';

create index webhook_endpoints_project_id_idx on public.webhook_endpoints (project_id);

create trigger webhook_endpoints_touch_updated_at
    before update on public.webhook_endpoints
    for each row execute function private.touch_updated_at();

-- Webhook deliveries ------------------------------------------------------------------------------

create type public.delivery_status as enum ('pending', 'succeeded', 'exhausted', 'cancelled');
comment on type public.delivery_status is
    'pending: waiting for its next attempt (or in flight under a lease); succeeded: a 2xx came '
    'back; exhausted: out of retries, kept for replay; cancelled: its endpoint was disabled.';

create table public.webhook_deliveries (
    id uuid primary key default gen_random_uuid(),
    event_id uuid not null references public.events (id) on delete cascade,
    endpoint_id uuid not null references public.webhook_endpoints (id) on delete cascade,
    project_id uuid not null references public.projects (id) on delete cascade,
    environment public.environment not null,
    status public.delivery_status not null default 'pending',
    attempts integer not null default 0 check (attempts >= 0),
    retry_base integer not null default 0 check (retry_base between 0 and attempts),
    next_attempt_at timestamptz not null default now(),
    lease_expires_at timestamptz,
    leased_by text,
    last_status_code integer,
    last_error text,
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    unique (event_id, endpoint_id)
);
comment on table public.webhook_deliveries is
    'One event to one endpoint. Its id is the webhook-id the receiver sees on every attempt.';
comment on column public.webhook_deliveries.environment is
    'The project''s environment when the event happened; decides the retry policy.';
comment on column public.webhook_deliveries.attempts is 'Attempts made so far (first try included).';
comment on column public.webhook_deliveries.retry_base is
    'Attempts made before the last redelivery: the retry policy counts the attempts after it.';
comment on column public.webhook_deliveries.next_attempt_at is
    'When the delivery is next due; retries are scheduled here, never slept in memory.';
comment on column public.webhook_deliveries.lease_expires_at is
    'Set while a worker holds the delivery; after it passes, any worker may claim it again.';

create index webhook_deliveries_due_idx
    on public.webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_project_id_idx
    on public.webhook_deliveries (project_id, created_at desc);
create index webhook_deliveries_endpoint_id_idx on public.webhook_deliveries (endpoint_id);

-- Fan-out: in the event's own transaction, one delivery per enabled, subscribed endpoint.
create function private.fan_out_event() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    fanned integer;
begin
    insert into public.webhook_deliveries (event_id, endpoint_id, project_id, environment)
    select new.id, e.id, new.project_id, p.environment
      from public.webhook_endpoints as e
      join public.projects as p on p.id = e.project_id
     where e.project_id = new.project_id
       and e.enabled
       and (cardinality(e.event_types) = 0 or new.type = any (e.event_types));
    get diagnostics fanned = row_count;
    if fanned > 0 then
        perform pg_notify('webhook_deliveries', new.project_id::text);
    end if;
    return null;
end
$$;
revoke all on function private.fan_out_event() from public, anon, authenticated;

create trigger events_fan_out
    after insert on public.events
    for each row execute function private.fan_out_event();

-- Webhook attempts (append-only) ------------------------------------------------------------------

create table public.webhook_attempts (
    id bigint generated always as identity primary key,
    delivery_id uuid not null references public.webhook_deliveries (id) on delete cascade,
    attempt_number integer not null check (attempt_number > 0),
    started_at timestamptz not null,
    duration_ms integer not null check (duration_ms >= 0),
    status_code integer,
    response_body text,
    error text,
    unique (delivery_id, attempt_number)
);
comment on table public.webhook_attempts is
    'Append-only log of every HTTP attempt of a delivery.';
comment on column public.webhook_attempts.response_body is
    'The receiver''s response, truncated.';
comment on column public.webhook_attempts.error is
    'Why the attempt failed when no usable response came back (timeout, refused, SSRF guard...).';

create function private.refuse_attempt_update() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    raise exception using
        errcode = 'PE003',
        message = 'webhook attempts are append-only',
        hint = 'Record a new attempt instead.';
end
$$;

create trigger webhook_attempts_append_only
    before update on public.webhook_attempts
    for each row execute function private.refuse_attempt_update();

-- Worker heartbeats -------------------------------------------------------------------------------

create table public.worker_heartbeats (
    worker_id text primary key,
    hostname text not null,
    pid integer not null,
    started_at timestamptz not null,
    beat_at timestamptz not null default now(),
    tasks jsonb not null default '{}'::jsonb
);
comment on table public.worker_heartbeats is
    'One row per running worker, refreshed by its heartbeat task; stale rows mean a dead worker.';

-- Row level security -------------------------------------------------------------------------------

alter table public.usage_counters enable row level security;
alter table public.suspensions enable row level security;
alter table public.events enable row level security;
alter table public.webhook_endpoints enable row level security;
alter table public.webhook_deliveries enable row level security;
alter table public.webhook_attempts enable row level security;
alter table public.worker_heartbeats enable row level security;

revoke all on public.usage_counters, public.suspensions, public.events, public.webhook_endpoints,
    public.webhook_deliveries, public.webhook_attempts, public.worker_heartbeats
    from anon, authenticated;

-- Owners read what concerns their projects; the platform (service_role) writes it.
grant select on public.usage_counters, public.suspensions, public.events,
    public.webhook_deliveries, public.webhook_attempts to authenticated;

-- Owners manage their endpoints; the secret can be written once but never read back.
grant select (id, project_id, url, description, event_types, enabled, disabled_reason,
              created_at, updated_at) on public.webhook_endpoints to authenticated;
grant insert (project_id, url, description, event_types, secret)
    on public.webhook_endpoints to authenticated;
grant update (url, description, event_types, enabled, disabled_reason)
    on public.webhook_endpoints to authenticated;
grant delete on public.webhook_endpoints to authenticated;

-- Owners may raise an event (a test event) and redeliver (reschedule) their deliveries.
grant insert (project_id, type, payload) on public.events to authenticated;
grant update (status, next_attempt_at, completed_at, retry_base)
    on public.webhook_deliveries to authenticated;

create policy "owners read their usage" on public.usage_counters
    for select to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));

create policy "owners read their suspensions" on public.suspensions
    for select to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));

create policy "owners read their events" on public.events
    for select to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners send test events" on public.events
    for insert to authenticated
    with check (
        type = 'webhook.test'
        and project_id in (select id from public.projects where owner_id = (select auth.uid()))
    );

create policy "owners read their endpoints" on public.webhook_endpoints
    for select to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners create their endpoints" on public.webhook_endpoints
    for insert to authenticated
    with check (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners update their endpoints" on public.webhook_endpoints
    for update to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())))
    with check (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners delete their endpoints" on public.webhook_endpoints
    for delete to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));

create policy "owners read their deliveries" on public.webhook_deliveries
    for select to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())));
create policy "owners redeliver their deliveries" on public.webhook_deliveries
    for update to authenticated
    using (project_id in (select id from public.projects where owner_id = (select auth.uid())))
    with check (project_id in (select id from public.projects where owner_id = (select auth.uid())));

create policy "owners read their attempts" on public.webhook_attempts
    for select to authenticated
    using (delivery_id in (
        select d.id
          from public.webhook_deliveries as d
         where d.project_id in (
             select id from public.projects where owner_id = (select auth.uid()))));

create index suspensions_project_id_idx on public.suspensions (project_id);

-- Hard caps ---------------------------------------------------------------------------------------

-- Last in this migration: the ACCESS EXCLUSIVE lock on projects is taken here and held until the
-- migration commits, so nothing else runs under it. The check is added NOT VALID so that adding it
-- does not scan every project under that lock; a later migration validates it under a lock that
-- lets traffic through.
alter table public.projects add column request_cap bigint;
alter table public.projects
    add constraint projects_request_cap_check check (request_cap > 0) not valid;
comment on column public.projects.request_cap is
    'Hard cap of requests per cap window; null means the platform default. Past it a prod project '
    'is suspended, dev and staging get a warning event.';
$ddl$);
