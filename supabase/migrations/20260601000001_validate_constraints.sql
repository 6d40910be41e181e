-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Validates the constraints earlier migrations added NOT VALID. VALIDATE CONSTRAINT scans the table
-- under SHARE UPDATE EXCLUSIVE, which lets reads and writes through; it is a migration of its own
-- because the ACCESS EXCLUSIVE lock taken when a constraint is added lasts until its transaction
-- ends, and would otherwise cover the scan. New rows were checked from the moment each constraint
-- was added.

alter table public.projects validate constraint projects_request_cap_check;
alter table public.api_keys validate constraint api_keys_prefix_matches_kind_and_environment;
alter table public.webhook_endpoints validate constraint webhook_endpoints_enabled_has_no_disabling;
