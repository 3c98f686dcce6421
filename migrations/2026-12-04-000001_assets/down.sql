DELETE FROM render_models WHERE id IN ('synth-edit', 'synth-i2v');
ALTER TABLE render_models DROP COLUMN inputs;
DROP TABLE generation_inputs;
ALTER TABLE users DROP COLUMN storage_used_bytes;
DROP TABLE assets;
