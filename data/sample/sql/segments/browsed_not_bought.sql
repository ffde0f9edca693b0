-- name: Browsed, did not buy
-- description: Viewed a page in the 7 days before as-of and bought nothing in the 30 days before as-of.
WITH recent_views AS (
    SELECT DISTINCT profile_id
    FROM events
    WHERE event_type = 'page_view'
      AND event_time > as_of() - INTERVAL '7 days'
      AND event_time <= as_of()
),
recent_buyers AS (
    SELECT DISTINCT profile_id
    FROM events
    WHERE event_type = 'purchase'
      AND event_time > as_of() - INTERVAL '30 days'
      AND event_time <= as_of()
)
SELECT profile_id
FROM recent_views
WHERE profile_id NOT IN (SELECT profile_id FROM recent_buyers)
