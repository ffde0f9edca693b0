-- name: High value customers
-- description: Spent at least 500 in the 365 days before as-of.
SELECT profile_id
FROM purchase_stats
WHERE revenue_365d >= 500
