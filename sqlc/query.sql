-- name: GetAuthor :one
SELECT id, name, bio FROM authors
WHERE id = $1 LIMIT 1;

-- name: ListAuthors :many
SELECT id, name, bio FROM authors
ORDER BY name;

-- name: CreateAuthor :one
INSERT INTO authors (name, bio)
VALUES ($1, $2)
RETURNING id, name, bio;

-- name: UpdateAuthor :exec
UPDATE authors SET name = $2, bio = $3
WHERE id = $1;

-- GetAuthorFromPrimary reads an author that was just written: the hint
-- sends it to the primary whatever the replicas' lag. The hint must stand
-- inside the statement: sqlc (v1.31.1) moves comment lines that precede it,
-- "-- pgreplica:primary" and "/* pgreplica:primary */" alike, into the Go
-- doc comment and drops them from the SQL it sends.
-- name: GetAuthorFromPrimary :one
SELECT /* pgreplica:primary */ id, name, bio FROM authors
WHERE id = $1 LIMIT 1;

-- name: CreateBook :one
INSERT INTO books (author_id, title, published)
VALUES ($1, $2, $3)
RETURNING id, author_id, title, published, created;

-- name: ListBooksByAuthor :many
SELECT b.id, b.title, b.published, a.name AS author
FROM books b JOIN authors a ON a.id = b.author_id
WHERE a.id = $1
ORDER BY b.title;
