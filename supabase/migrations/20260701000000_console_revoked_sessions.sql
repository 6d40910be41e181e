-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';

-- Console sessions are JWTs: valid until they expire unless the console is told otherwise. Signing
-- out records the token's id here, and the console refuses any token listed. The table lives in
-- the `private` schema, which PostgREST does not expose; only the platform (service_role) reads or
-- writes it, and row level security is on with no policy for anyone else.

-- Everything below takes locks on tables in use: it runs with short lock timeouts and retries
-- (private.with_lock_retries, defined in 20260201000000_environments), as one block, so a
-- retry releases all of its locks.
select private.with_lock_retries($ddl$
create table private.revoked_sessions (
    token_id text primary key check (char_length(token_id) between 1 and 200),
    user_id uuid not null references auth.users (id) on delete cascade,
    expires_at timestamptz not null,
    revoked_at timestamptz not null default now()
);
comment on table private.revoked_sessions is
    'Console session tokens ended before their expiry (sign-out); rows are useless, and purged, '
    'once the token has expired.';
comment on column private.revoked_sessions.token_id is
    'The token''s `jti` claim, or the SHA-256 of the whole token when it has none.';
comment on column private.revoked_sessions.user_id is 'The token''s subject.';
comment on column private.revoked_sessions.expires_at is
    'The token''s own expiry (`exp`): after it the token is refused anyway.';
comment on column private.revoked_sessions.revoked_at is 'When the session was ended.';

create index revoked_sessions_expires_at_idx on private.revoked_sessions (expires_at);
create index revoked_sessions_user_id_idx on private.revoked_sessions (user_id);

alter table private.revoked_sessions enable row level security;
revoke all on private.revoked_sessions from public, anon, authenticated;
grant select, insert, delete on private.revoked_sessions to service_role;
create policy revoked_sessions_service on private.revoked_sessions
    for all to service_role using (true) with check (true);
$ddl$);
