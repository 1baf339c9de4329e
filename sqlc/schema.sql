-- Schema for the sqlc-generated package internal/sqlcdb, used by the
-- integration tests to show sqlc's database/sql output running on pgreplica.

CREATE TABLE authors (
    id   bigserial PRIMARY KEY,
    name text      NOT NULL,
    bio  text
);

CREATE TABLE books (
    id        bigserial   PRIMARY KEY,
    author_id bigint      NOT NULL REFERENCES authors (id),
    title     text        NOT NULL,
    published date,
    created   timestamptz NOT NULL DEFAULT now()
);
