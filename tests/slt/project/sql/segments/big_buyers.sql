-- name: Two purchases in 90 days (reads a feature)
SELECT profile_id FROM purchases_90d WHERE purchases >= 2
