-- name: Lapsed gold members
-- description: Gold loyalty tier with no purchase in the 90 days before as-of.
SELECT p.profile_id
FROM profiles p
LEFT JOIN purchase_stats s ON s.profile_id = p.profile_id
WHERE p.loyalty_tier = 'gold'
  AND (s.last_purchase_at IS NULL OR s.last_purchase_at <= as_of() - INTERVAL '90 days')
