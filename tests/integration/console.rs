//! The console in a real browser: headless Chromium driven by selenium against a real gateway
//! in front of the FHIR server, after traffic the test made on purpose (known users and
//! patients). Sign-in with a token, a patient search, sorting, paging, the breach timeline of a
//! user, the CSV download against `auditgate report breach`, the charts against the report's
//! counts, a refused non-auditor, and every look recorded in the journal. Screenshots go to
//! `target/console-screenshots/`.

use std::time::{Duration, Instant};

use auditgate::record::{PatientSource, Record};
use serde_json::{json, Value};

use crate::support::gateway::{
    put_patients, read_as, report_json, token_with as token, user_of, Gateway, GatewayOptions,
};
use crate::support::{assert_success, free_port, repo_root, run_python_with_timeout, FhirServer};

const SCRIPT: &str = r##"
import json, os, sys, time
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from selenium.webdriver.chrome.service import Service

base, auditor, outsider, shots, downloads = sys.argv[1:6]
options = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"]:
    options.add_argument(a)
options.add_experimental_option("prefs", {"download.default_directory": downloads, "download.prompt_for_download": False})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20)
out = {}
def shot(name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))
def rows():
    table = driver.find_elements(By.CSS_SELECTOR, "table")[0]
    heads = [th.text.replace(" ▲", "").replace(" ▼", "") for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    body = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    return [dict(zip(heads, r)) for r in body]
def gone(element):
    # Chromium reports a replaced page's node as stale, or as "not in the document".
    try:
        element.is_enabled()
        return False
    except Exception:
        return True
def submit(element):
    # Click, and wait until the page it replaces is gone.
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait.until(lambda d: gone(old))
def sign_in(token):
    driver.get(base + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    submit(driver.find_element(By.ID, "sign-in"))
def search(by, value, frm="", to=""):
    Select(driver.find_element(By.ID, "by")).select_by_value(by)
    field = driver.find_element(By.ID, "value")
    field.clear(); field.send_keys(value)
    for name, v in (("from", frm), ("to", to)):
        if v:
            driver.execute_script("arguments[0].value = arguments[1]", driver.find_element(By.ID, name), v)
    submit(driver.find_element(By.ID, "search"))
    wait.until(lambda d: d.find_elements(By.ID, "verification"))
def text(how, what):
    # The page may be replaced while it is read (a form was just sent): then, not yet.
    try:
        return driver.find_element(how, what).text
    except Exception:
        return ""
def chart(cid):
    return {g.get_attribute("data-label"): int(g.get_attribute("data-value"))
            for g in driver.find_elements(By.CSS_SELECTOR, "#" + cid + " g.bar")}

try:
    # A user who is not an auditor is refused with a page that says so.
    sign_in(outsider)
    out["outsider"] = driver.find_element(By.ID, "problem").text
    shot("refused")
    # The auditor signs in and searches a patient.
    sign_in(auditor)
    wait.until(lambda d: d.find_elements(By.ID, "who"))
    out["who"] = driver.find_element(By.ID, "who").text
    shot("search")
    search("patient", "con-1")
    out["badge"] = driver.find_element(By.ID, "verification").get_attribute("data-state")
    out["patient_rows"] = rows()
    out["patient_days"] = chart("chart-days")
    shot("patient")
    # Sort by user (twice: descending), then page through with 2 rows a page.
    driver.find_element(By.CSS_SELECTOR, "button[data-sort='user']").click()
    wait.until(lambda d: "▲" in text(By.CSS_SELECTOR, "button[data-sort='user']"))
    out["by_user"] = [r["user"] for r in rows()]
    driver.find_element(By.CSS_SELECTOR, "button[data-sort='user']").click()
    wait.until(lambda d: "▼" in text(By.CSS_SELECTOR, "button[data-sort='user']"))
    out["by_user_desc"] = [r["user"] for r in rows()]
    out["page_of"] = driver.find_element(By.ID, "page-of").text
    # Sort by time (oldest first): the UTC times behind the local ones, in order.
    driver.find_element(By.CSS_SELECTOR, "button[data-sort='time']").click()
    wait.until(lambda d: "▲" in text(By.CSS_SELECTOR, "button[data-sort='time']"))
    out["by_time"] = [t.get_attribute("datetime") for t in driver.find_elements(By.CSS_SELECTOR, "table")[0].find_elements(By.CSS_SELECTOR, "td time")]
    # Back to the user order for paging.
    driver.find_element(By.CSS_SELECTOR, "button[data-sort='user']").click()
    wait.until(lambda d: "▲" in text(By.CSS_SELECTOR, "button[data-sort='user']"))
    driver.find_element(By.CSS_SELECTOR, "button[data-sort='user']").click()
    wait.until(lambda d: "▼" in text(By.CSS_SELECTOR, "button[data-sort='user']"))
    pages = [[r["user"] for r in rows()]]
    while True:
        nxt = [b for b in driver.find_elements(By.CSS_SELECTOR, "nav.pager button") if b.text == "Next page"][0]
        if not nxt.is_enabled():
            break
        before = text(By.ID, "page-of")
        nxt.click()
        wait.until(lambda d: text(By.ID, "page-of") not in ("", before))
        pages.append([r["user"] for r in rows()])
    out["pages"] = pages
    # The breach timeline of a user over a window, its chart and its CSV.
    search("user", "alice", "2020-01-01", "2100-12-31")
    out["breach_badge"] = driver.find_element(By.ID, "verification").get_attribute("data-state")
    out["breach_rows"] = rows()
    out["breach_days"] = chart("chart-days")
    out["facts"] = {dd.get_attribute("data-fact"): dd.text for dd in driver.find_elements(By.CSS_SELECTOR, "dd[data-fact]")}
    shot("breach")
    driver.find_element(By.CSS_SELECTOR, "button[data-download='patients']").click()
    deadline = time.time() + 20
    while time.time() < deadline and not [f for f in os.listdir(downloads) if f.endswith(".csv")]:
        time.sleep(0.2)
    out["downloads"] = sorted(os.listdir(downloads))
    # The snooping flags over a window.
    search("flags", "", "2020-01-01", "2100-12-31")
    out["flags_badge"] = driver.find_element(By.ID, "verification").get_attribute("data-state")
    out["flags"] = [r["flag"] for r in rows()]
    shot("flags")
    # The reads of the trail: the auditor's own searches are there.
    submit(driver.find_element(By.XPATH, "//button[text()='Who read the trail']"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table"))
    out["reads"] = rows()
    shot("reads")
finally:
    driver.quit()
print(json.dumps(out))
"##;

#[test]
fn an_auditor_uses_the_console_in_a_real_browser_and_every_look_is_recorded() {
    let fhir = FhirServer::seeded();
    put_patients(fhir, &["con-1", "con-2", "con-3"]);
    let console_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = format!(
        "[console]\nenabled = true\nlisten = \"127.0.0.1:{console_port}\"\npage_rows = 2\n\n[auditors]\nroles = [\"privacy-officer\"]\nscopes = []\n"
    );
    let gw = Gateway::start(opts);
    let get = |path: &str, sub: &str| read_as(&gw, path, sub);
    // con-1: alice twice, bob, carol, dave (5 accesses, 4 users); alice also searches.
    get("/fhir/Patient/con-1", "alice");
    get("/fhir/Patient/con-1", "bob");
    get("/fhir/Patient/con-1", "dave");
    get("/fhir/Patient?_id=con-1,con-2,con-3", "alice");
    get("/fhir/Patient/con-1", "carol");
    get("/fhir/Patient/con-2", "alice");
    // Wait until a signed checkpoint covers the traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, report, _) = report_json(&["breach", "--user", "alice"], &gw.journal);
        if code == 0 && report["sections"][0]["rows"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the traffic never came under a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let shots = repo_root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let auditor = token(&gw, "privacy-1", &["privacy-officer"], None);
    let outsider = token(&gw, "mallory", &["physician"], Some("openid"));
    let base = format!("http://127.0.0.1:{console_port}");
    let out = run_python_with_timeout(
        SCRIPT,
        &[
            &base,
            &auditor,
            &outsider,
            shots.to_str().unwrap(),
            downloads.path().to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(180),
    );
    let out: Value = serde_json::from_str(assert_success(&out, "selenium").trim()).unwrap();

    assert!(
        out["outsider"]
            .as_str()
            .unwrap()
            .contains("does not have an auditor's role"),
        "{out:#}"
    );
    assert!(out["who"].as_str().unwrap().contains("privacy-1"));
    assert_eq!(out["badge"], "verified");
    // con-1's accesses: 6 requests (alice read and search, bob, dave, carol) and 4 users.
    let users: Vec<&str> = out["patient_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2, "two rows a page: {out:#}");
    assert_eq!(out["by_user"], json!(["alice", "alice"]));
    assert!(
        out["page_of"].as_str().unwrap().starts_with("Page 1 of "),
        "{out:#}"
    );
    // Paged through, sorted by user descending: the same pages although the auditor's own
    // searches of con-1 join the trail meanwhile (the result holds the trail as of its search).
    let by_time: Vec<String> = serde_json::from_value(out["by_time"].clone()).unwrap();
    assert_eq!(by_time.len(), 2, "{out:#}");
    assert!(by_time[0] <= by_time[1], "oldest first: {by_time:?}");
    let pages: Vec<Vec<String>> = serde_json::from_value(out["pages"].clone()).unwrap();
    assert_eq!(
        pages,
        [vec!["dave", "carol"], vec!["bob", "alice"], vec!["alice"]]
    );
    assert_eq!(out["by_user_desc"], json!(["dave", "carol"]));
    assert_eq!(out["page_of"], "Page 1 of 3");
    let day_total: u64 = out["patient_days"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(day_total, 5);

    // The breach timeline equals `auditgate report breach` on the same data: its per-day
    // counts, its figures, and the downloaded patients CSV byte for byte.
    assert_eq!(out["breach_badge"], "verified");
    let csv_path = downloads.path().join("patients.csv");
    let window = [
        "breach",
        "--user",
        "alice",
        "--from",
        "2020-01-01",
        "--to",
        "2100-12-31",
    ];
    let mut args = window.to_vec();
    args.extend(["--patients-csv", csv_path.to_str().unwrap()]);
    let (code, report, err) = report_json(&args, &gw.journal);
    assert_eq!(code, 0, "{err}");
    let per_day = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Per day")
        .unwrap();
    for row in per_day["rows"].as_array().unwrap() {
        let day = row["day"].as_str().unwrap();
        assert_eq!(
            out["breach_days"][day].to_string(),
            row["requests"].as_str().unwrap(),
            "{day}"
        );
    }
    assert_eq!(out["facts"]["patients exposed"], "3");
    let downloaded: Vec<String> = serde_json::from_value(out["downloads"].clone()).unwrap();
    assert_eq!(downloaded, ["auditgate-breach-affected-patients.csv"]);
    assert_eq!(
        std::fs::read_to_string(downloads.path().join(&downloaded[0])).unwrap(),
        std::fs::read_to_string(&csv_path).unwrap()
    );
    assert_eq!(out["flags_badge"], "verified");
    let flags: Vec<String> = serde_json::from_value(out["flags"].clone()).unwrap();
    assert!(flags.iter().any(|f| f == "first_access"), "{flags:?}");
    // The reads page lists the auditor's searches.
    let reads = out["reads"].as_array().unwrap();
    assert!(
        reads
            .iter()
            .any(|r| r["user"] == "privacy-1" && r["what"] == "console.search"),
        "{out:#}"
    );

    // Every look is in the journal: the refusal, the sign-in, each search and page, the
    // download with the patients it named.
    let records: Vec<Record> = gw
        .records()
        .into_iter()
        .filter(|r| r.event.rule.starts_with("console."))
        .collect();
    let refused = records
        .iter()
        .find(|r| user_of(r) == "mallory")
        .expect("the refusal is recorded");
    assert_eq!(refused.event.outcome.as_ref().unwrap().status, 403);
    assert_eq!(refused.event.rule, "console.login");
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| user_of(r) == "privacy-1")
        .collect();
    let searches = mine
        .iter()
        .filter(|r| r.event.rule == "console.search")
        .count();
    assert_eq!(
        searches,
        1 + 5 + (pages.len() - 1) + 1 + 1,
        "the patient search, five sorts, each next page, the breach search, the flags"
    );
    let first = mine
        .iter()
        .find(|r| r.event.rule == "console.search")
        .unwrap();
    assert!(first
        .event
        .query
        .as_deref()
        .unwrap()
        .contains("value=con-1"));
    assert!(first
        .event
        .patients
        .iter()
        .any(|p| p.id == "con-1" && p.source == PatientSource::Response));
    let download = mine
        .iter()
        .find(|r| r.event.rule == "console.download")
        .expect("the download is recorded");
    let mut named: Vec<&str> = download
        .event
        .patients
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    named.sort();
    assert_eq!(named, ["con-1", "con-2", "con-3"]);
    assert!(mine.iter().any(|r| r.event.rule == "console.view"));
    // No patient or user in a URL: every console record's path is a fixed page.
    for r in &records {
        assert!(
            ["/", "/login", "/search", "/download", "/reads"].contains(&r.event.path.as_str()),
            "{}",
            r.event.path
        );
    }
    // No patient, user, path or token of the trail in the gateway's own log.
    crate::support::gateway::check_log_has_no_phi(&gw.log(), &gw.journal)
        .unwrap_or_else(|e| panic!("the gateway's log holds {e}"));
    for name in ["refused", "search", "patient", "breach", "flags", "reads"] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
}

const BADGE_SCRIPT: &str = r##"
import json, sys
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.webdriver.chrome.service import Service

base, auditor, patient = sys.argv[1:4]
options = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1024,768"]:
    options.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(base + "/")
    driver.find_element(By.ID, "token").send_keys(auditor)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "value"))
    driver.find_element(By.ID, "value").send_keys(patient)
    driver.find_element(By.ID, "search").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "verification"))
    badge = driver.find_element(By.ID, "verification")
    print(json.dumps({"state": badge.get_attribute("data-state"), "text": badge.text,
                      "tables": len(driver.find_elements(By.CSS_SELECTOR, "table"))}))
finally:
    driver.quit()
"##;

#[test]
fn the_verification_badge_fails_and_names_the_segment_when_the_trail_was_tampered_with() {
    let fhir = FhirServer::seeded();
    put_patients(fhir, &["con-9"]);
    let console_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = format!(
        "[console]\nenabled = true\nlisten = \"127.0.0.1:{console_port}\"\n\n[columnar]\nenabled = false\n"
    );
    let gw = Gateway::start(opts);
    for _ in 0..12 {
        read_as(&gw, "/fhir/Patient/con-9", "erin");
    }
    let auditor = token(&gw, "auditor-9", &[], Some("audit.read"));
    let base = format!("http://127.0.0.1:{console_port}");
    let badge = || {
        let out = run_python_with_timeout(
            BADGE_SCRIPT,
            &[&base, &auditor, "con-9"],
            &[],
            Duration::from_secs(120),
        );
        serde_json::from_str::<Value>(assert_success(&out, "selenium").trim()).unwrap()
    };
    // Untouched: verified (once a checkpoint covers the reads).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = badge();
        if seen["state"] == "verified" {
            assert!(seen["tables"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "{seen:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // One byte of one sealed segment changed (a read's status): the badge fails, says which
    // segment, and no table is shown.
    let (first, last) = crate::support::fixtures::sealed_segments(&gw.journal)[0];
    let name = format!("seg-{first:020}-{last:020}.jsonl");
    let path = gw.journal.join(&name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"status\":200"), "{text}");
    std::fs::write(&path, text.replacen("\"status\":200", "\"status\":204", 1)).unwrap();
    let seen = badge();
    assert_eq!(seen["state"], "failed", "{seen:#}");
    let said = seen["text"].as_str().unwrap();
    assert!(said.contains("Verification FAILED"), "{said}");
    assert!(
        said.contains(&format!("{first:020}")),
        "the page names the segment: {said}"
    );
    assert_eq!(seen["tables"], 0, "nothing unproven is shown");
}

const KEYBOARD_SCRIPT: &str = r##"
import json, os, sys
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait
from selenium.webdriver.chrome.service import Service

base, auditor, patient, shots = sys.argv[1:5]
options = webdriver.ChromeOptions()
# A tablet held upright.
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=768,1024"]:
    options.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20)
keys = lambda *k: ActionChains(driver).send_keys(*k).perform()
active = lambda: driver.switch_to.active_element
out = {}
try:
    driver.get(base + "/")
    # Keyboard only: the token field has the focus; Tab reaches the button; Enter signs in.
    out["first_focus"] = active().get_attribute("id")
    keys(auditor)
    keys(Keys.TAB)
    out["second_focus"] = active().get_attribute("id")
    keys(Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.ID, "value"))
    # Tab from the top of the page to the search field, type, Enter.
    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    out["tabbed"] = []
    for _ in range(12):
        keys(Keys.TAB)
        el = active()
        out["tabbed"].append(el.tag_name + "#" + (el.get_attribute("id") or el.get_attribute("name") or el.text))
        if el.get_attribute("id") == "value":
            break
    out["reached"] = active().get_attribute("id")
    keys(patient, Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.ID, "verification"))
    out["badge"] = driver.find_element(By.ID, "verification").get_attribute("data-state")
    out["badge_text"] = driver.find_element(By.ID, "verification").text
    facts = driver.find_elements(By.CSS_SELECTOR, "dd[data-fact='accesses']")
    out["accesses"] = facts[0].text if facts else ""
    out["overflow"] = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    times = driver.find_elements(By.CSS_SELECTOR, "td time")
    out["time_title"] = times[0].get_attribute("title") if times else ""
    driver.save_screenshot(os.path.join(shots, "tablet.png"))
finally:
    driver.quit()
print(json.dumps(out))
"##;

#[test]
fn the_console_works_from_the_s3_archive_by_keyboard_on_a_tablet_sized_screen() {
    let fhir = FhirServer::seeded();
    put_patients(fhir, &["con-s3"]);
    let s3 = crate::support::s3::S3Server::start();
    s3.create_locked_bucket("console");
    let console_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = format!(
        "[archive]\nkind = \"s3\"\nbucket = \"console\"\nprefix = \"console\"\nregion = \"{}\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\nretention_days = 1\nallow_short_retention = true\n\
         poll_interval_secs = 1\nretry_max_secs = 2\ndelete_local_after_ship = true\n\n\
         [console]\nenabled = true\nlisten = \"127.0.0.1:{console_port}\"\ntime_zone = \"America/New_York\"\n",
        crate::support::s3::REGION,
        s3.endpoint()
    );
    opts.env = crate::support::s3::aws_env();
    let gw = Gateway::start(opts);
    for _ in 0..20 {
        read_as(&gw, "/fhir/Patient/con-s3", "gina");
    }
    // The first segments leave the journal directory once shipped: they are in S3 only.
    let deadline = Instant::now() + Duration::from_secs(30);
    while auditgate::journal::list_segments(&gw.journal)
        .unwrap()
        .first()
        .is_some_and(|(name, _)| name.first() == 1)
    {
        assert!(Instant::now() < deadline, "nothing was pruned");
        std::thread::sleep(Duration::from_millis(300));
    }
    let auditor = token(&gw, "auditor-s3", &[], Some("audit.read"));
    let shots = repo_root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("http://127.0.0.1:{console_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = run_python_with_timeout(
            KEYBOARD_SCRIPT,
            &[&base, &auditor, "con-s3", shots.to_str().unwrap()],
            &[],
            Duration::from_secs(120),
        );
        let out: Value = serde_json::from_str(assert_success(&out, "selenium").trim()).unwrap();
        // Never a false alarm while segments move from the journal directory to S3.
        assert_ne!(out["badge"], "failed", "{out:#}");
        if out["badge"] == "verified" && out["accesses"] == "20" {
            break out;
        }
        assert!(Instant::now() < deadline, "{out:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(out["first_focus"], "token", "the token field has the focus");
    assert_eq!(
        out["second_focus"], "sign-in",
        "Tab reaches the sign-in button"
    );
    assert_eq!(out["reached"], "value", "Tab reaches the search field");
    assert!(
        out["overflow"].as_i64().unwrap() <= 0,
        "no sideways scrolling at 768 px: {out:#}"
    );
    assert!(
        out["time_title"].as_str().unwrap().ends_with("(UTC)"),
        "UTC on hover: {out:#}"
    );
    assert!(shots.join("tablet.png").exists());
}

const OIDC_SCRIPT: &str = r##"
import json, sys
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.webdriver.chrome.service import Service

base = sys.argv[1]
options = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"]:
    options.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
out = {}
try:
    driver.get(base + "/")
    driver.find_element(By.ID, "oidc-sign-in").click()
    # Through the identity provider (it approves at once) and back to the console.
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "who") or d.find_elements(By.CSS_SELECTOR, ".error"))
    out["who"] = " ".join(e.text for e in driver.find_elements(By.ID, "who"))
    out["error"] = " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".error"))
    out["url"] = driver.current_url
finally:
    driver.quit()
print(json.dumps(out))
"##;

#[test]
fn an_auditor_signs_in_with_openid_connect_code_and_pkce() {
    let fhir = FhirServer::seeded();
    let issuer = crate::support::oidc::OidcIssuer::start(
        "oidc-auditor",
        &["privacy-officer"],
        crate::support::gateway::AUDIENCE,
    );
    let console_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = format!(
        "[console]\nenabled = true\nlisten = \"127.0.0.1:{console_port}\"\n\n\
         [console.oidc]\nissuer = \"{iss}\"\nclient_id = \"auditgate-console\"\n\
         redirect_url = \"http://127.0.0.1:{console_port}/callback\"\n\n\
         [auditors]\nroles = [\"privacy-officer\"]\n\n\
         [[identity.issuers]]\nissuer = \"{iss}\"\naudiences = [\"{aud}\"]\nalgorithms = [\"RS256\"]\n\
         jwks_urls = [\"{jwks}\"]\n",
        iss = issuer.issuer(),
        aud = crate::support::gateway::AUDIENCE,
        jwks = issuer.jwks_url(),
    );
    let gw = Gateway::start(opts);
    let base = format!("http://127.0.0.1:{console_port}");
    let out = run_python_with_timeout(OIDC_SCRIPT, &[&base], &[], Duration::from_secs(120));
    let out: Value = serde_json::from_str(assert_success(&out, "selenium").trim()).unwrap();
    assert!(
        out["who"].as_str().unwrap().contains("oidc-auditor"),
        "{out:#}\n{}",
        gw.log()
    );
    assert_eq!(
        issuer.refused(),
        0,
        "the code was exchanged with its verifier"
    );
    let login = gw
        .records()
        .into_iter()
        .find(|r| r.event.rule == "console.login")
        .expect("the sign-in is recorded");
    assert_eq!(user_of(&login), "oidc-auditor");
    assert_eq!(login.event.outcome.as_ref().unwrap().status, 303);
    // The callback's code and state are not kept in the record.
    assert_eq!(login.event.query, None);
}
