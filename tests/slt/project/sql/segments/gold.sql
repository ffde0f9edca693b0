-- name: Gold tier
SELECT profile_id FROM profiles WHERE tier = 'gold'
