-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- The worker counts an attempt when it claims the delivery, so an attempt lost with its worker
-- (killed mid-request) still counts against the retry budget, and is logged as "outcome unknown"
-- by the next claim. Comments only: no data or lock-heavy change.
comment on column public.webhook_deliveries.attempts is
    'Attempts made so far, the first try and one in flight included: counted when the worker '
    'claims the delivery, taken back if it is released unsent.';
comment on column public.webhook_deliveries.leased_by is
    'The worker holding the delivery while its lease lasts; left set after the lease expires '
    'only when that worker stopped mid-attempt (the next claim logs the attempt as outcome unknown).';
