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
-- CREATE INDEX would block for the whole build. The Supabase CLI runs these statements outside
-- the migration's transaction, one at a time. If a build fails midway (the lock timeout above),
-- Postgres keeps an invalid index: each one is dropped first, so pushing again starts clean.

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
