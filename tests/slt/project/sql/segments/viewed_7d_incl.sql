-- name: Viewed in the 7 days before as-of (inclusive start)
SELECT profile_id FROM events
WHERE event_type = 'view' AND event_time >= as_of() - INTERVAL '7 days'
