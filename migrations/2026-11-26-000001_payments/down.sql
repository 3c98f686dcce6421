ALTER TABLE stripe_events DROP COLUMN user_id;
DROP TABLE subscriptions;
ALTER TABLE orders DROP COLUMN disputed_credits;
ALTER TABLE orders DROP COLUMN credits_clawed_back;
ALTER TABLE orders DROP COLUMN stripe_customer_id;
ALTER TABLE orders DROP COLUMN mode;
DELETE FROM products WHERE id IN ('basic', 'pro');
DROP INDEX products_stripe_price_idx;
ALTER TABLE products DROP CONSTRAINT products_plan_has_price;
