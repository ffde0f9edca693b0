-- name: Gold and viewed (a segment of segments)
SELECT profile_id FROM gold WHERE profile_id IN (SELECT profile_id FROM viewed_7d)
