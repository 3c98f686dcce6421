ALTER TABLE generations DROP COLUMN worker;
ALTER TABLE generations DROP COLUMN cancel_requested_at;
ALTER TABLE generations DROP COLUMN kind;
DROP TABLE render_model_prices;
DROP TABLE render_models;
