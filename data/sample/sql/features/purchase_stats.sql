-- name: Purchase stats
-- description: Per profile: orders and revenue in the 365 days before as-of, and the last purchase time.
SELECT
    profile_id,
    count(*) FILTER (WHERE event_time > as_of() - INTERVAL '365 days') AS orders_365d,
    coalesce(sum(revenue) FILTER (WHERE event_time > as_of() - INTERVAL '365 days'), 0) AS revenue_365d,
    max(event_time) AS last_purchase_at
FROM events
WHERE event_type = 'purchase'
  AND event_time <= as_of()
GROUP BY profile_id
