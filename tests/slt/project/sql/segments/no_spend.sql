-- name: No spend recorded
SELECT profile_id FROM profiles WHERE spend IS NULL
