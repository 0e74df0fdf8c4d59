-- Athena: the JSON segments of an auditgate archive (the evidence itself, zstd or gzip
-- compressed JSON Lines), as one table. Slower than the Parquet table (every byte is read and
-- parsed); use it to read the records exactly as the journal holds them.
--
-- Replace BUCKET and PREFIX, list your nodes, set the first day. The record's own `node`
-- field is the partition value. Times are strings (RFC 3339, UTC, microseconds): compare
-- them as strings or with from_iso8601_timestamp(ts).

CREATE EXTERNAL TABLE IF NOT EXISTS auditgate_journal (
  `v` int,
  `seq` bigint,
  `prev` string,
  `ts` string,
  `phase` string,
  `request_id` string,
  `intent_seq` bigint,
  `who` struct<
    kind:string, `user`:string, issuer:string, name:string, roles:array<string>,
    client_id:string, purpose_of_use:array<string>, jti:string, fhir_user:string,
    smart_patient:string, break_glass:boolean, reason:string>,
  `action` string,
  `interaction` string,
  `rule` string,
  `resource_type` string,
  `resource_id` string,
  `method` string,
  `path` string,
  `query` string,
  `forwarded_query` string,
  `patients` array<struct<id:string,source:string>>,
  `attribution` string,
  `attribution_gaps` array<string>,
  `external_refs` array<string>,
  `external_refs_omitted` bigint,
  `bulk_files` array<struct<url:string,through_gateway:boolean>>,
  `net` struct<
    client_ip:string, peer_ip:string, forwarded_chain:array<string>, device_id:string,
    device_id_source:string, user_agent:string,
    geo:struct<country:string,city:string,asn:bigint,org:string>, geo_unavailable:string,
    client_cert:struct<sha256:string,subject:string>,
    gateway:struct<node:string,listener:string>>,
  `outcome` struct<
    status:int, code:int, error:string, bytes_out:bigint, upstream_ms:bigint,
    content_type:string>,
  `truncated` map<string,bigint>,
  `part` int,
  `summary` struct<`count`:bigint, `first`:string, `last`:string, reasons:map<string,bigint>>,
  `clock` struct<synced:boolean, max_error_ms:bigint, est_error_ms:bigint>,
  `received` string
)
PARTITIONED BY (`node` string, `dt` string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
LOCATION 's3://BUCKET/PREFIX/v1/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.node.type' = 'enum',
  'projection.node.values' = 'gw-1,gw-2',
  'projection.dt.type' = 'date',
  'projection.dt.format' = 'yyyy-MM-dd',
  'projection.dt.range' = '2026-01-01,NOW',
  'projection.dt.interval' = '1',
  'projection.dt.interval.unit' = 'DAYS',
  'storage.location.template' = 's3://BUCKET/PREFIX/v1/node=${node}/dt=${dt}/'
);
