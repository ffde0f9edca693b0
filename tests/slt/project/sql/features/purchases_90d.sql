-- name: Purchases in the 90 days before as-of
SELECT profile_id, count(*) AS purchases
FROM events
WHERE event_type = 'purchase' AND event_time > as_of() - INTERVAL '90 days'
GROUP BY profile_id
