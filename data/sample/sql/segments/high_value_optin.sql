-- name: High value opt-ins
-- description: High value customers who opted in to e-mail (a segment of segments).
SELECT profile_id
FROM high_value
JOIN newsletter_optin USING (profile_id)
