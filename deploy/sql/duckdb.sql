-- DuckDB: the columnar copies of a directory archive (or of an S3 archive synced to disk) as
-- one view. Replace ARCHIVE (the [archive] dir) and PREFIX. For S3 directly, load DuckDB's
-- httpfs extension and use 's3://BUCKET/PREFIX/v1/columnar/*/*/*.parquet'.
CREATE OR REPLACE VIEW auditgate_records AS
SELECT * FROM read_parquet('ARCHIVE/PREFIX/v1/columnar/*/*/*.parquet', hive_partitioning = true);

-- The JSON segments (the evidence itself), zstd JSON Lines:
CREATE OR REPLACE VIEW auditgate_journal AS
SELECT * FROM read_json('ARCHIVE/PREFIX/v1/node=*/dt=*/*.jsonl.zst',
                        format = 'newline_delimited', hive_partitioning = true,
                        union_by_name = true);
