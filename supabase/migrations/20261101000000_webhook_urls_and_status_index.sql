-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Three changes, in three steps. The concurrent index builds in the middle run outside any
-- transaction (the Supabase CLI commits what precedes them and runs what follows in a
-- transaction of its own), so the check added NOT VALID in the first step is validated in the
-- last one under a lock that lets reads and writes through. Every statement can run again: a
-- push that failed midway (a lock timeout, a build) is simply pushed again.

-- 1. Webhook URLs, the database's side. The console parses every URL (shared/webhook_urls.py,
-- with yarl, the parser the worker connects with) and stores its ASCII form; this check holds
-- what any stored form satisfies, for writers that reach the table directly (PostgREST): an
-- http(s) URL with a host, no user name or password (credentials in URLs end up in logs), no
-- spaces, control characters or #fragment, at most 2048 characters. It is never stricter than
-- the parser. It replaces the column's earlier check (scheme and length only).

-- The column's earlier check is dropped (the new one implies it), and the new one too, should a
-- failed push have left it: pushed again, this statement starts afresh.
alter table public.webhook_endpoints
    -- squawk-ignore ban-drop-constraint
    drop constraint if exists webhook_endpoints_url_check,
    -- squawk-ignore ban-drop-constraint
    drop constraint if exists webhook_endpoints_url_is_a_webhook_url,
    add constraint webhook_endpoints_url_is_a_webhook_url check (
        url ~ '^https?://[^/?#@[:space:][:cntrl:]]+([/?][^#[:space:][:cntrl:]]*)?$'
        and char_length(url) <= 2048
    ) not valid;
comment on constraint webhook_endpoints_url_is_a_webhook_url on public.webhook_endpoints is
    'An http(s) URL with a host and no user name, password, spaces or #fragment, at most 2048 '
    'characters: what the console''s URL parser stores (it stores host names in ASCII form).';

-- 2. One-time flashes, across console replicas. A flash (a new key or signing secret, shown once
-- after a redirect) travels in an encrypted cookie; the first replica to show it records its
-- random id here, and every replica refuses an id already recorded. Rows are kept as long as the
-- flash could still be opened (its cookie's validity), then purged by the console as it records
-- newer ones. Only the platform (service_role) reads or writes it; the `private` schema is not
-- exposed through PostgREST.

create table if not exists private.console_flashes_shown (
    flash_id text primary key check (char_length(flash_id) between 1 and 100),
    shown_at timestamptz not null default now(),
    expires_at timestamptz not null
);
comment on table private.console_flashes_shown is
    'Console flashes (one-time messages, new secrets among them) already shown by some replica.';
comment on column private.console_flashes_shown.flash_id is 'The flash''s random id (its nonce).';
comment on column private.console_flashes_shown.shown_at is 'When a replica showed it.';
comment on column private.console_flashes_shown.expires_at is
    'When the flash''s cookie stops being accepted anyway: the row is useless, and purged, after.';

create index if not exists console_flashes_shown_expires_at_idx
    on private.console_flashes_shown (expires_at);

alter table private.console_flashes_shown enable row level security;
revoke all on private.console_flashes_shown from public, anon, authenticated;
grant select, insert, delete on private.console_flashes_shown to service_role;
drop policy if exists console_flashes_shown_service on private.console_flashes_shown;
create policy console_flashes_shown_service on private.console_flashes_shown
    for all to service_role using (true) with check (true);

-- 3. `parity status` counts the deliveries exhausted in the last day, by environment: an
-- index-only scan of this partial index (exhausted deliveries only, by completion time) instead
-- of a scan of every delivery ever made. Built concurrently: webhook_deliveries takes writes from
-- every event's fan-out; a build that failed midway leaves an invalid index, dropped first.

-- squawk-ignore ban-concurrent-index-creation-in-transaction
drop index concurrently if exists public.webhook_deliveries_exhausted_idx;
-- squawk-ignore ban-concurrent-index-creation-in-transaction
create index concurrently if not exists webhook_deliveries_exhausted_idx
    on public.webhook_deliveries (completed_at) include (environment)
    where status = 'exhausted';

-- 1, continued: existing rows are checked under SHARE UPDATE EXCLUSIVE (reads and writes go on);
-- new and updated rows were checked from the moment the constraint was added. (squawk reads the
-- file as one transaction; the concurrent builds above end the first one.)
-- squawk-ignore constraint-missing-not-valid
alter table public.webhook_endpoints validate constraint webhook_endpoints_url_is_a_webhook_url;
