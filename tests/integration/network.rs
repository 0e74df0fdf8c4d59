//! The network vector end to end: GeoIP and ASN of the client IP in each record (fixture
//! databases built at test time), file replacement and SIGHUP picked up under load.

use std::path::Path;
use std::time::{Duration, Instant};

use auditgate::record::{Geo, Phase, Record};

use crate::operations::Load;
use crate::support::gateway::{Gateway, GatewayOptions};
use crate::support::geoip::{asn_db, city_db, replace};
use crate::support::{http_client, FhirServer};

/// Send a read as if forwarded by a trusted proxy for `client`; the record it left.
fn read_from(gw: &Gateway, token: &str, client: &str) -> Record {
    let resp = http_client()
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(token)
        .header("X-Forwarded-For", client)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    gw.records()
        .into_iter()
        .find(|r| r.event.request_id == id && r.event.phase == Phase::Outcome)
        .expect("outcome record")
}

fn write_databases(dir: &Path, city: &str) {
    std::fs::write(
        dir.join("city.mmdb"),
        city_db(
            &[("81.2.69.142/31", "GB", city), ("2001:218::/32", "JP", "")],
            1_700_000_000,
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("asn.mmdb"),
        asn_db(&[
            ("81.2.69.0/24", 20712, "Andrews & Arnold Ltd"),
            ("2001:218::/32", 2914, "NTT America, Inc."),
        ]),
    )
    .unwrap();
}

fn gateway_with_geoip(fhir: &FhirServer, dir: &Path, check_interval_secs: u64) -> Gateway {
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = format!(
        "[geoip]\ncity_db = \"{}\"\nasn_db = \"{}\"\ncheck_interval_secs = {check_interval_secs}\n",
        dir.join("city.mmdb").display(),
        dir.join("asn.mmdb").display()
    );
    Gateway::start(opts)
}

#[test]
fn records_carry_geo_and_asn_for_ipv4_and_ipv6_and_say_why_when_unknown() {
    let fhir = FhirServer::seeded();
    let dbs = tempfile::tempdir().unwrap();
    write_databases(dbs.path(), "London");
    let gw = gateway_with_geoip(fhir, dbs.path(), 60);
    let token = gw.token("dr.geo");

    let r = read_from(&gw, &token, "81.2.69.142");
    assert_eq!(r.event.net.client_ip, "81.2.69.142");
    assert_eq!(
        r.event.net.geo,
        Some(Some(Geo {
            country: Some("GB".into()),
            city: Some("London".into()),
            asn: Some(20712),
            org: Some("Andrews & Arnold Ltd".into()),
        }))
    );
    assert_eq!(r.event.net.geo_unavailable, None);
    let r = read_from(&gw, &token, "2001:218::7");
    assert_eq!(
        r.event.net.geo,
        Some(Some(Geo {
            country: Some("JP".into()),
            city: None,
            asn: Some(2914),
            org: Some("NTT America, Inc.".into()),
        }))
    );
    // Unknown and special-purpose addresses: an explicit null and the reason.
    for (client, why) in [
        ("8.8.8.8", "not_found"),
        ("10.1.2.3", "private"),
        ("fd12::1", "private"),
        ("100.64.1.1", "shared_cgnat"),
    ] {
        let r = read_from(&gw, &token, client);
        assert_eq!(r.event.net.geo, Some(None), "{client}");
        assert_eq!(
            r.event.net.geo_unavailable.as_deref(),
            Some(why),
            "{client}"
        );
    }
    // The journal line itself says `"geo":null`.
    let line = std::fs::read_to_string(
        auditgate::journal::list_segments(&gw.journal).unwrap()[0]
            .1
            .clone(),
    )
    .unwrap();
    assert!(line.contains(r#""geo":null,"geo_unavailable":"private""#));
    // The loopback peer without a forwarded header.
    let resp = http_client()
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let last = gw.records().pop().unwrap();
    assert_eq!(last.event.net.geo_unavailable.as_deref(), Some("loopback"));
    // The database's build date is exported.
    assert_eq!(
        gw.metric(r#"auditgate_geoip_build_timestamp_seconds{database="city"}"#),
        1_700_000_000.0
    );
}

#[test]
fn a_replaced_database_is_picked_up_under_load_without_a_failed_request() {
    let fhir = FhirServer::seeded();
    let dbs = tempfile::tempdir().unwrap();
    write_databases(dbs.path(), "London");
    let gw = gateway_with_geoip(fhir, dbs.path(), 1);
    let token = gw.token("dr.geo-reload");
    let load = Load::start(gw.url("/fhir/Patient/example"), token.clone(), 3);
    std::thread::sleep(Duration::from_millis(300));

    // geoipupdate-style replacement: picked up within the check interval.
    let city = dbs.path().join("city.mmdb");
    replace(
        &city,
        &city_db(&[("81.2.69.142/31", "GB", "Londinium")], 1_800_000_000),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = read_from(&gw, &token, "81.2.69.142");
        if r.event
            .net
            .geo
            .clone()
            .flatten()
            .and_then(|g| g.city)
            .as_deref()
            == Some("Londinium")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replaced file was never picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        gw.metric(r#"auditgate_geoip_build_timestamp_seconds{database="city"}"#),
        1_800_000_000.0
    );
    assert!(gw.metric(r#"auditgate_geoip_reloads_total{database="city",result="ok"}"#) >= 1.0);

    // A broken download is refused; the previous database keeps answering.
    replace(&city, b"\x00truncated download");
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.metric(r#"auditgate_geoip_reloads_total{database="city",result="failed"}"#) < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = read_from(&gw, &token, "81.2.69.142");
    assert_eq!(
        r.event.net.geo.flatten().and_then(|g| g.city).as_deref(),
        Some("Londinium")
    );

    // SIGHUP re-opens the files too.
    replace(
        &city,
        &city_db(&[("81.2.69.142/31", "GB", "Lundenwic")], 1_900_000_000),
    );
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = read_from(&gw, &token, "81.2.69.142");
        if r.event.net.geo.flatten().and_then(|g| g.city).as_deref() == Some("Lundenwic") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not pick up the file");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (served, failed) = load.finish();
    assert!(served > 20, "the load ran ({served})");
    assert!(failed.is_empty(), "no request failed: {failed:?}");
}

/// A gateway whose clock module reports `state` (debug builds read it from the environment).
fn gateway_with_clock(fhir: &FhirServer, state: &str, clock_toml: &str) -> Gateway {
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    if !state.is_empty() {
        opts.env = vec![("AUDITGATE_TEST_CLOCK_STATE".into(), state.into())];
    }
    opts.extra_toml = clock_toml.into();
    Gateway::start(opts)
}

#[test]
fn the_clock_state_is_in_every_record_and_the_refuse_policy_refuses_an_untrusted_clock() {
    let fhir = FhirServer::seeded();
    // The real kernel state, recorded with the request's arrival and the record's time.
    let gw = gateway_with_clock(fhir, "", "");
    let token = gw.token("dr.time");
    let r = read_from(&gw, &token, "81.2.69.142");
    let kernel = auditgate::clock::read();
    assert_eq!(r.event.clock.synced, kernel.synced);
    assert!(
        r.event.received.ends_with('Z') && r.event.received.len() == 27,
        "{}",
        r.event.received
    );
    assert!(r.event.received <= r.header.ts, "received before written");
    drop(gw);

    // Unsynchronised under the default policy: served, and every record says so.
    let gw = gateway_with_clock(fhir, "synced=false,max_error_ms=16000", "");
    let token = gw.token("dr.time");
    let r = read_from(&gw, &token, "81.2.69.142");
    assert!(!r.event.clock.synced);
    assert_eq!(r.event.clock.max_error_ms, 16_000);
    assert!(gw.log().contains("overridden"));
    assert_eq!(gw.metric("auditgate_clock_synchronized"), 0.0);
    drop(gw);

    // Under `refuse`: 503, nothing forwarded, and the refusal is recorded.
    let gw = gateway_with_clock(
        fhir,
        "synced=false,max_error_ms=16000",
        "[clock]\nunsynchronised = \"refuse\"\n",
    );
    assert_refused_for_the_clock(&gw, fhir, "clock_unsynchronised");
    drop(gw);

    // A synchronised clock whose error bound is above the configured maximum.
    let gw = gateway_with_clock(
        fhir,
        "synced=true,max_error_ms=2500",
        "[clock]\nunsynchronised = \"refuse\"\nmax_error_ms = 1000\n",
    );
    assert_refused_for_the_clock(&gw, fhir, "clock_error_too_large");
}

/// A read through `gw` is answered 503 `reason` with no patient data, recorded, counted, and
/// never reaches the EHR.
fn assert_refused_for_the_clock(gw: &Gateway, fhir: &FhirServer, reason: &str) {
    let token = gw.token("dr.time");
    let resp = http_client()
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.text().unwrap();
    assert!(body.contains(reason), "{body}");
    assert!(!body.contains("resourceType"), "no patient data: {body}");
    let r = gw
        .records()
        .into_iter()
        .find(|r| r.event.request_id == id)
        .expect("the refusal is recorded");
    let outcome = r.event.outcome.unwrap();
    assert_eq!(outcome.status, 503);
    assert_eq!(outcome.error.as_deref(), Some(reason));
    assert!(
        !fhir
            .traffic()
            .iter()
            .any(|t| t.req_headers.get("x-request-id") == Some(&id)),
        "the refused request never reached the EHR"
    );
    assert_eq!(
        gw.metric(&format!(
            r#"auditgate_fail_closed_refusals_total{{reason="{reason}"}}"#
        )),
        1.0
    );
    // Not ready either, so a load balancer sends elsewhere.
    let (status, body) = gw.admin_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"clock\"") && body.contains(reason),
        "{body}"
    );
}

/// GET with extra headers; (status, request ID).
fn get_with(gw: &Gateway, token: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = http_client()
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.headers()["x-request-id"].to_str().unwrap().to_string(),
    )
}

fn record_of(gw: &Gateway, id: &str) -> Record {
    gw.records()
        .into_iter()
        .rev()
        .find(|r| r.event.request_id == id)
        .expect("a record")
}

#[test]
fn forwarded_chains_are_walked_only_through_trusted_proxies() {
    let fhir = FhirServer::seeded();
    // The test client (127.0.0.1) is NOT a trusted proxy here.
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.trusted_proxies = vec!["10.0.0.0/8".into()];
    let gw = Gateway::start(opts);
    let token = gw.token("dr.spoof");
    let (status, id) = get_with(&gw, &token, &[("X-Forwarded-For", "81.2.69.142")]);
    assert_eq!(status, 200);
    let r = record_of(&gw, &id);
    assert_eq!(
        r.event.net.client_ip, "127.0.0.1",
        "a spoofed header is not believed"
    );
    assert_eq!(
        r.event.net.forwarded_chain,
        vec!["81.2.69.142"],
        "but it is recorded"
    );
    drop(gw);

    // Loopback and an IPv6 proxy network are trusted: a mixed chain is walked right to left
    // to the first untrusted hop.
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.trusted_proxies = vec!["127.0.0.0/8".into(), "2001:db8:1::/48".into()];
    let gw = Gateway::start(opts);
    let token = gw.token("dr.chain");
    // (headers sent, client IP recorded, chain recorded)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);
    let cases: [Case; 6] = [
        (
            &[("X-Forwarded-For", "203.0.113.9, 81.2.69.142, 2001:db8:1::5")],
            "81.2.69.142",
            &["203.0.113.9", "81.2.69.142", "2001:db8:1::5"],
        ),
        (
            &[("X-Forwarded-For", "2001:218::1, 2001:db8:1::7")],
            "2001:218::1",
            &["2001:218::1", "2001:db8:1::7"],
        ),
        // Two header lines form one list.
        (
            &[
                ("X-Forwarded-For", "81.2.69.142"),
                ("X-Forwarded-For", "2001:db8:1::5"),
            ],
            "81.2.69.142",
            &["81.2.69.142", "2001:db8:1::5"],
        ),
        // Malformed hops: recorded as sent; the walk stops at the last trusted proxy.
        (
            &[("X-Forwarded-For", "81.2.69.142, <script>, 2001:db8:1::5")],
            "2001:db8:1::5",
            &["81.2.69.142", "<script>", "2001:db8:1::5"],
        ),
        (&[("X-Forwarded-For", ",,, ,")], "127.0.0.1", &[]),
        // Only the configured header (X-Forwarded-For) is walked; Forwarded is not believed.
        (&[("Forwarded", "for=81.2.69.142")], "127.0.0.1", &[]),
    ];
    for (headers, client, chain) in cases {
        let (status, id) = get_with(&gw, &token, headers);
        assert_eq!(status, 200, "{headers:?}");
        let r = record_of(&gw, &id);
        assert_eq!(r.event.net.client_ip, client, "{headers:?}");
        assert_eq!(r.event.net.forwarded_chain, chain, "{headers:?}");
    }
    // A header value that is not even text is dropped, never a crash.
    let resp = http_client()
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(&token)
        .header(
            "X-Forwarded-For",
            reqwest::header::HeaderValue::from_bytes(b"81.2.69.142\xff").unwrap(),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn rules_can_require_a_device_id() {
    let fhir = FhirServer::seeded();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.network_toml = "require_device_id_rules = [\"fhir-patient-read\"]".into();
    let gw = Gateway::start(opts);
    let token = gw.token("dr.device");
    let (status, id) = get_with(&gw, &token, &[]);
    assert_eq!(status, 403);
    let r = record_of(&gw, &id);
    assert_eq!(
        r.event.outcome.as_ref().unwrap().error.as_deref(),
        Some("device_id_required")
    );
    let (status, id) = get_with(&gw, &token, &[("X-Device-Id", "ward-3-cart-17")]);
    assert_eq!(status, 200);
    let r = record_of(&gw, &id);
    assert_eq!(r.event.net.device_id.as_deref(), Some("ward-3-cart-17"));
    assert_eq!(r.event.net.device_id_source.as_deref(), Some("header"));
    // Other rules are not affected.
    let resp = http_client()
        .get(gw.url("/fhir/metadata"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        gw.metric(r#"auditgate_rejected_requests_total{reason="device_id_required"}"#),
        1.0
    );
    drop(gw);
    // The header is believed only from a trusted proxy: a client that sends it itself names
    // no device (it could name any workstation), so the requirement still refuses it.
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.network_toml = "require_device_id_rules = [\"fhir-patient-read\"]".into();
    opts.trusted_proxies = Vec::new();
    let gw = Gateway::start(opts);
    let token = gw.token("dr.device");
    let (status, id) = get_with(&gw, &token, &[("X-Device-Id", "ward3-ws12")]);
    assert_eq!(status, 403);
    let r = record_of(&gw, &id);
    assert_eq!(r.event.net.device_id, None);
    assert_eq!(
        r.event.outcome.as_ref().unwrap().error.as_deref(),
        Some("device_id_required")
    );
    drop(gw);
    // A rule name that does not exist is a start error, not a requirement that never applies.
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.network_toml = "require_device_id_rules = [\"fhir-patient-raed\"]".into();
    let log = Gateway::try_start(opts).err().expect("refused");
    assert!(log.contains("`fhir-patient-raed`"), "{log}");
}
