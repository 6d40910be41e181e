-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Per-endpoint queues for the worker's claim. The claim walks the endpoints that have claimable
-- deliveries and reads, per endpoint, only its leased deliveries and the few it takes next, so
-- its cost follows the number of endpoints with work and the rows claimed, not the backlog: one
-- tenant's million queued deliveries no longer slow every other tenant's claims.
--
-- Together the two indexes cover the pending deliveries: those no worker holds (by endpoint, in
-- the order they fall due) and those a worker holds (counted against the endpoint's cap of
-- requests in flight). Finished deliveries leave both.
--
-- Built concurrently: webhook_deliveries takes writes from every event's fan-out, which a plain
-- CREATE INDEX would block for the whole build. The Supabase CLI sends a migration's statements
-- in one batch whose implicit transaction each concurrent statement commits before running on
-- its own; if a build fails midway, Postgres keeps an invalid index: each one is dropped first, so
-- pushing again starts clean.
--
-- How long they wait. A concurrent build or drop takes SHARE UPDATE EXCLUSIVE on the table, which
-- no read or write conflicts with, then waits for the transactions in its way to end (waits on
-- those transactions, in no table's queue): nothing queues behind it, so unlike the statements
-- private.with_lock_retries runs, a long wait stalls no traffic, while giving up and trying again
-- would throw a partial build away. So each waits in one go for as long as with_lock_retries keeps
-- trying: the setting parity.lock_retries_total, 5 minutes when unset (the same default as
-- private.lock_retries_total, written out here so that this migration needs no helper). Session
-- level: the transaction this runs in is committed by the first build; the CLI resets the session
-- before the next migration.
select pg_catalog.set_config(
    'lock_timeout',
    (1000 * extract(epoch from
        coalesce(nullif(current_setting('parity.lock_retries_total', true), ''), '5min')::interval
    ))::bigint::text,
    false);

-- squawk-ignore ban-concurrent-index-creation-in-transaction
drop index concurrently if exists public.webhook_deliveries_endpoint_queue_idx;
-- squawk-ignore ban-concurrent-index-creation-in-transaction
create index concurrently if not exists webhook_deliveries_endpoint_queue_idx
    on public.webhook_deliveries (endpoint_id, next_attempt_at, id)
    where status = 'pending' and leased_by is null;

-- squawk-ignore ban-concurrent-index-creation-in-transaction
drop index concurrently if exists public.webhook_deliveries_leased_idx;
-- squawk-ignore ban-concurrent-index-creation-in-transaction
create index concurrently if not exists webhook_deliveries_leased_idx
    on public.webhook_deliveries (endpoint_id)
    where status = 'pending' and leased_by is not null;
