-- name: London prospects
-- description: Prospects whose city is London.
-- class: prospect
SELECT profile_id
FROM profiles
WHERE city = 'London'
