-- A batch is written in two transactions, rollup_minute's first, so that the
-- minute table is visible without waiting for the hour table's upsert. Each
-- transaction has its own ledger row, told apart by `rollup` ('minute' or
-- 'hour'; 'both' for batches written before this migration, in one
-- transaction).
ALTER TABLE bid_logger_flush_ledger ADD COLUMN IF NOT EXISTS rollup text NOT NULL DEFAULT 'both';
ALTER TABLE bid_logger_flush_ledger DROP CONSTRAINT IF EXISTS bid_logger_flush_ledger_pkey;
ALTER TABLE bid_logger_flush_ledger ADD PRIMARY KEY (instance, run_id, batch_id, rollup);
