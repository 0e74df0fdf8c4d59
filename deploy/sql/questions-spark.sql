-- The auditor's standard questions, for Spark SQL, after spark.py registered the
-- auditgate_records view (spark.sql.session.timeZone = UTC).
--
-- Replace the {placeholders} as in questions-trino.sql.

-- name: patient_access
-- Who saw patient {patient} in the window: every record naming the patient (HIPAA 164.528
-- accounting, ONC 170.315(d)(3) report).
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id
FROM auditgate_records
WHERE array_contains(patient_ids, '{patient}')
  AND ts >= TIMESTAMP '{since}' AND ts < TIMESTAMP '{until}'
  AND dt BETWEEN DATE '{first_day}' AND DATE '{last_day}'
ORDER BY ts, node, seq;

-- name: user_activity
-- What user {user} did in the window.
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id, patient_ids
FROM auditgate_records
WHERE user_id = '{user}'
  AND ts >= TIMESTAMP '{since}' AND ts < TIMESTAMP '{until}'
  AND dt BETWEEN DATE '{first_day}' AND DATE '{last_day}'
ORDER BY ts, node, seq;

-- name: breach_by_ip
-- Everything from client IP {ip} in the window.
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id, patient_ids
FROM auditgate_records
WHERE client_ip = '{ip}'
  AND ts >= TIMESTAMP '{since}' AND ts < TIMESTAMP '{until}'
  AND dt BETWEEN DATE '{first_day}' AND DATE '{last_day}'
ORDER BY ts, node, seq;

-- name: breach_patients_by_ip
-- Every patient whose data went to client IP {ip} in the window (a breach notification list).
SELECT DISTINCT patient_id
FROM auditgate_records
LATERAL VIEW explode(patient_ids) t AS patient_id
WHERE client_ip = '{ip}'
  AND ts >= TIMESTAMP '{since}' AND ts < TIMESTAMP '{until}'
  AND dt BETWEEN DATE '{first_day}' AND DATE '{last_day}'
ORDER BY patient_id;

-- name: breach_by_device
-- Everything from device {device} in the window.
SELECT ts, node, seq, user_id, user_name, client_id, purpose_of_use, action, interaction,
       resource_type, resource_id, status, client_ip, device_id, patient_ids
FROM auditgate_records
WHERE device_id = '{device}'
  AND ts >= TIMESTAMP '{since}' AND ts < TIMESTAMP '{until}'
  AND dt BETWEEN DATE '{first_day}' AND DATE '{last_day}'
ORDER BY ts, node, seq;

-- name: patients_per_user_per_day
-- How many distinct patients each user touched each day (UTC) of the window: the outliers are
-- where snooping shows.
SELECT user_id, to_date(ts) AS day, count(DISTINCT patient_id) AS patients
FROM auditgate_records
LATERAL VIEW explode(patient_ids) t AS patient_id
WHERE user_id IS NOT NULL
  AND ts >= TIMESTAMP '{since}' AND ts < TIMESTAMP '{until}'
  AND dt BETWEEN DATE '{first_day}' AND DATE '{last_day}'
GROUP BY user_id, to_date(ts)
ORDER BY user_id, day;
