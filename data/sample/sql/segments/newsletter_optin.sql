-- name: Newsletter opt-ins
-- description: Opted in to e-mail and have an e-mail address.
SELECT profile_id
FROM profiles
WHERE email_opt_in
  AND email IS NOT NULL
