-- Athena: the columnar copies (Parquet) of an auditgate archive, as one table.
--
-- Replace BUCKET and PREFIX (the [archive] bucket and prefix), list your gateway nodes in
-- projection.node.values, and set the first day of projection.dt.range. Partition projection
-- needs no crawler and no MSCK REPAIR: new days and nodes are queryable as soon as they ship.
-- dt is the UTC day a segment STARTED: its records may run into the next day, so filter on ts
-- for the window and on dt from one day before it (see questions-trino.sql).
--
-- Schema: auditgate columnar schema version 1 (README, "The columnar copy").

CREATE EXTERNAL TABLE IF NOT EXISTS auditgate_records (
  `seq` bigint,
  `v` int,
  `prev` string,
  `leaf` string,
  `ts` timestamp,
  `received` timestamp,
  `phase` string,
  `request_id` string,
  `intent_seq` bigint,
  `authenticated` boolean,
  `unauthenticated_reason` string,
  `user_id` string,
  `issuer` string,
  `user_name` string,
  `roles` array<string>,
  `client_id` string,
  `purpose_of_use` array<string>,
  `jti` string,
  `fhir_user` string,
  `smart_patient` string,
  `break_glass` boolean,
  `action` string,
  `interaction` string,
  `rule` string,
  `resource_type` string,
  `resource_id` string,
  `method` string,
  `path` string,
  `query` string,
  `forwarded_query` string,
  `patient_ids` array<string>,
  `patients` array<struct<id:string,source:string>>,
  `attribution` string,
  `attribution_gaps` array<string>,
  `external_refs` array<string>,
  `external_refs_omitted` bigint,
  `bulk_files` array<struct<url:string,through_gateway:boolean>>,
  `client_ip` string,
  `peer_ip` string,
  `forwarded_chain` array<string>,
  `device_id` string,
  `device_id_source` string,
  `user_agent` string,
  `geo_country` string,
  `geo_city` string,
  `geo_asn` bigint,
  `geo_org` string,
  `geo_unavailable` string,
  `client_cert_sha256` string,
  `client_cert_subject` string,
  `gateway_node` string,
  `gateway_listener` string,
  `status` int,
  `outcome_code` int,
  `error` string,
  `bytes_out` bigint,
  `upstream_ms` bigint,
  `content_type` string,
  `truncated` map<string,bigint>,
  `part` int,
  `summary_count` bigint,
  `summary_first` timestamp,
  `summary_last` timestamp,
  `summary_reasons` map<string,bigint>,
  `clock_synced` boolean,
  `clock_max_error_ms` bigint,
  `clock_est_error_ms` bigint,
  `line` string
)
PARTITIONED BY (`node` string, `dt` string)
STORED AS PARQUET
LOCATION 's3://BUCKET/PREFIX/v1/columnar/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.node.type' = 'enum',
  'projection.node.values' = 'gw-1,gw-2',
  'projection.dt.type' = 'date',
  'projection.dt.format' = 'yyyy-MM-dd',
  'projection.dt.range' = '2026-01-01,NOW',
  'projection.dt.interval' = '1',
  'projection.dt.interval.unit' = 'DAYS',
  'storage.location.template' = 's3://BUCKET/PREFIX/v1/columnar/node=${node}/dt=${dt}/'
);
