-- The auditor's standard questions, for Athena and Trino, over the table of athena-parquet.sql
-- (auditgate_records) or trino.sql (hive.auditgate.records: put that name instead).
--
-- Replace the {placeholders}: {patient}, {user}, {ip}, {device}; {since} and {until}, the
-- window, as RFC 3339 UTC times (2026-11-01T00:00:00Z; until is exclusive); {first_day}, the
-- day BEFORE since, and {last_day}, the day of until (YYYY-MM-DD): dt is the day a segment
-- started, so a window's records can sit in the previous day's partition. The same answers
-- come from `auditgate query` (README, "Questions an auditor asks"), with proofs.

-- name: patient_access
-- Who saw patient {patient} in the window: every record naming the patient (HIPAA 164.528
-- accounting, ONC 170.315(d)(3) report).
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id
FROM auditgate_records
WHERE contains(patient_ids, '{patient}')
  AND ts >= from_iso8601_timestamp('{since}') AND ts < from_iso8601_timestamp('{until}')
  AND dt BETWEEN '{first_day}' AND '{last_day}'
ORDER BY ts, node, seq;

-- name: user_activity
-- What user {user} did in the window.
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id, patient_ids
FROM auditgate_records
WHERE user_id = '{user}'
  AND ts >= from_iso8601_timestamp('{since}') AND ts < from_iso8601_timestamp('{until}')
  AND dt BETWEEN '{first_day}' AND '{last_day}'
ORDER BY ts, node, seq;

-- name: breach_by_ip
-- Everything from client IP {ip} in the window.
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id, patient_ids
FROM auditgate_records
WHERE client_ip = '{ip}'
  AND ts >= from_iso8601_timestamp('{since}') AND ts < from_iso8601_timestamp('{until}')
  AND dt BETWEEN '{first_day}' AND '{last_day}'
ORDER BY ts, node, seq;

-- name: breach_patients_by_ip
-- Every patient whose data went to client IP {ip} in the window (a breach notification list).
SELECT DISTINCT patient_id
FROM auditgate_records
CROSS JOIN UNNEST(patient_ids) AS t (patient_id)
WHERE client_ip = '{ip}'
  AND ts >= from_iso8601_timestamp('{since}') AND ts < from_iso8601_timestamp('{until}')
  AND dt BETWEEN '{first_day}' AND '{last_day}'
ORDER BY patient_id;

-- name: breach_by_device
-- Everything from device {device} in the window.
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id, patient_ids
FROM auditgate_records
WHERE device_id = '{device}'
  AND ts >= from_iso8601_timestamp('{since}') AND ts < from_iso8601_timestamp('{until}')
  AND dt BETWEEN '{first_day}' AND '{last_day}'
ORDER BY ts, node, seq;

-- name: patients_per_user_per_day
-- How many distinct patients each user touched each day (UTC) of the window: the outliers are
-- where snooping shows.
SELECT user_id, date(ts) AS day, count(DISTINCT patient_id) AS patients
FROM auditgate_records
CROSS JOIN UNNEST(patient_ids) AS t (patient_id)
WHERE user_id IS NOT NULL
  AND ts >= from_iso8601_timestamp('{since}') AND ts < from_iso8601_timestamp('{until}')
  AND dt BETWEEN '{first_day}' AND '{last_day}'
GROUP BY user_id, date(ts)
ORDER BY user_id, day;
