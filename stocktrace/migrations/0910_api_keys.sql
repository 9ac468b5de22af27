-- API keys (stocktrace/auth.py). A key is "stk_<id>_<secret>": the id (12 hex digits) is public and names the
-- key in lists and in the audit log; the secret is 32 random bytes that only the holder has. The database keeps
-- the SHA-256 of the whole key: the secret is random, not chosen by a person, so there is nothing for a slow
-- password hash to protect (no dictionary to try), and every request can be checked without spending CPU.
create table api_keys (
    id            text        primary key check (id ~ '^[0-9a-f]{12}$'),
    name          text        not null check (length(name) between 1 and 100),
    role          text        not null check (role in ('viewer', 'operator', 'admin')),
    secret_sha256 bytea       not null check (length(secret_sha256) = 32),
    created_at    timestamptz not null default now(),
    last_used_at  timestamptz,                 -- kept to the minute, to find keys nobody uses any more
    revoked_at    timestamptz
);
-- A name is unique among the keys in force; a revoked key's name can be given to its replacement.
create unique index api_keys_name on api_keys (name) where revoked_at is null;
