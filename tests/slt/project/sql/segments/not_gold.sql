-- name: Not gold (NULL tiers are neither)
SELECT profile_id FROM profiles WHERE tier <> 'gold'
