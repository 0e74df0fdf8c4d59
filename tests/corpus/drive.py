"""Drives the attribution corpus (tests/corpus/attribution.toml) through the gateway with a real
FHIR client, and computes each case's expected patients from the data the test loaded.

Run by tests/integration/corpus.rs with the repo's .venv Python (fhirclient, fhirpathpy):

    drive.py --corpus FILE --loaded LIST.json --synthea DIR --fhir DIRECT_BASE \
             --gateway GATEWAY_BASE --token JWT --out RESULTS.json

What it does, in order:
1. The dataset: every HL7 example file the test PUT into the server (LIST.json names them), and
   the Synthea patients. All Synthea bundles but the last are POSTed here straight to the server
   (not through the gateway) as transactions; the server's `response.location`s map each
   `urn:uuid:` fullUrl to the id it assigned, and the dataset keeps each resource with its
   references rewritten to those ids, as the server stores them. The last bundle is the
   corpus's own `{synthea_bundle}` transaction, sent through the gateway.
2. For each case: the expected patients, computed before the request is sent, from the dataset
   (the resources the case's `[[case.returns]]` selections pick, by FHIRPath), the request
   body, and the patients the request names (`names`); then the request, sent with fhirclient's
   own server object and session; then, for a case that creates a patient, its id, looked up
   straight on the server by identifier.
3. RESULTS.json: per case, what was sent, what came back (status, X-Request-Id, the body as
   text) and what the journal must say.

The walker below is the third reading of "which patients does this JSON reference" in the
project (after src/extract.rs and tests/support/oracle.rs), written from the README's rules.
"""

import argparse
import copy
import glob
import json
import os
import re
import sys
import tomllib
import urllib.parse

import requests
from fhirclient import client as fhir_client
from fhirclient.server import FHIRNotFoundException, FHIRPermissionDeniedException
from fhirpathpy import evaluate as fhirpath
from fhirpathpy.models import models as fhirpath_models
from sekmet.fhir.indexer import extract as sekmet_index

R4 = fhirpath_models["r4"]
ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


# ---- the walker ------------------------------------------------------------------------------


# This server's FHIR bases, `host[:port]/path` (set in main() from --fhir): an absolute
# reference on any other base names a patient of another server, never a local one.
LOCAL_BASES = set()


def normalise_base(url):
    """`host[:port]/path` of an http(s) base: no scheme, lower-case host, no default port, no
    trailing slash; None for anything else."""
    m = re.match(r"^(https?)://([^/?#@]+)(/[^?#]*)?$", url, re.IGNORECASE)
    if not m:
        return None
    scheme, authority, path = m.group(1).lower(), m.group(2).lower(), m.group(3) or ""
    default = ":443" if scheme == "https" else ":80"
    if authority.endswith(default):
        authority = authority[: -len(default)]
    return authority + path.rstrip("/")


def patient_ref(ref):
    """(id, base) of `Patient/{id}` in a reference or URL: relative (base None), or absolute
    on any http(s) base, with or without `/_history/{v}`; None otherwise."""
    path = ref.split("?", 1)[0]
    parts = path.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or parts[-2] != "Patient" or not ID.match(parts[-1]):
        return None
    rest = parts[:-2]
    if not rest:
        return parts[-1], None
    if rest[0] in ("http:", "https:") and len(rest) >= 3 and rest[1] == "" and rest[2]:
        return parts[-1], "/".join(rest)
    return None


def note_patient(ref, found):
    """Record the Patient a reference names: a local one as a patient, one on another server's
    base as an external reference. True when it named a Patient."""
    p = patient_ref(ref)
    if p is None:
        return False
    pid, base = p
    if base is None or normalise_base(base) in LOCAL_BASES:
        found.patients.add(pid)
    else:
        found.external.add(ref)
    return True


class Found:
    def __init__(self):
        self.patients = set()
        self.gaps = set()
        self.external = set()


def walk_resource(res, found, urns, contained=False):
    """Patients in one resource: its own id if a Patient, and every reference in it."""
    if res.get("resourceType") == "Patient":
        if contained:
            found.gaps.add("contained_patient")
        elif ID.match(str(res.get("id", ""))):
            found.patients.add(res["id"])
        else:
            found.gaps.add("patient_without_id")
    for key, value in res.items():
        if key == "contained":
            for c in value:
                walk_resource(c, found, urns, contained=True)
        elif key == "entry" and res.get("resourceType") == "Bundle":
            for e in value:
                walk_entry(e, found, urns)
        else:
            walk_value(value, found, urns)


def walk_entry(entry, found, urns):
    for key, value in entry.items():
        if key == "resource":
            walk_resource(value, found, urns)
        elif key in ("request", "response"):
            for k in ("url", "location"):
                if isinstance(value.get(k), str):
                    note_patient(value[k].split("?", 1)[0], found)
            if isinstance(value.get("outcome"), dict):
                walk_resource(value["outcome"], found, urns)
        else:
            walk_value(value, found, urns)


def walk_value(v, found, urns):
    if isinstance(v, list):
        for x in v:
            walk_value(x, found, urns)
    elif isinstance(v, dict):
        if "resourceType" in v and isinstance(v["resourceType"], str):
            # A resource nested in an element (Parameters.parameter.resource).
            walk_resource(v, found, urns)
            return
        ref = v.get("reference")
        if isinstance(ref, str):
            if ref.startswith("urn:uuid:"):
                target = urns.get(ref)
                if target is not None and target.get("resourceType") == "Patient" and ID.match(str(target.get("id", ""))):
                    found.patients.add(target["id"])
            elif not ref.startswith("#"):
                note_patient(ref, found)
        elif v.get("type") == "Patient" and "identifier" in v:
            found.gaps.add("logical_reference")
        for key, x in v.items():
            if key != "reference":
                walk_value(x, found, urns)


def urns_of(doc):
    out = {}
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        for e in doc.get("entry", []):
            if isinstance(e.get("fullUrl"), str) and isinstance(e.get("resource"), dict):
                out[e["fullUrl"]] = e["resource"]
    return out


def referenced(doc):
    found = Found()
    walk_resource(doc, found, urns_of(doc))
    return found


def without_posted_ids(body, method):
    """A request body as the server reads it: a resource it creates (a POST, or a POST entry
    of a transaction or batch) gets an id of the server's choosing, so the id the client sent
    names no patient."""
    body = copy.deepcopy(body)
    if not isinstance(body, dict):
        return body
    if method == "POST" and body.get("resourceType") != "Bundle":
        body.pop("id", None)
    for e in body.get("entry", []) if body.get("resourceType") == "Bundle" else []:
        if e.get("request", {}).get("method") == "POST" and isinstance(e.get("resource"), dict):
            e["resource"].pop("id", None)
    return body


# ---- the dataset -----------------------------------------------------------------------------


def rewrite_urns(v, ids):
    if isinstance(v, list):
        return [rewrite_urns(x, ids) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k == "reference" and isinstance(x, str) and x in ids:
                out[k] = ids[x]
            else:
                out[k] = rewrite_urns(x, ids)
        return out
    return v


def load_synthea(path, fhir_base):
    """POSTs one Synthea transaction straight to the server; returns its resources as stored
    (server ids, references rewritten) and its Patient's id."""
    with open(path, "rb") as f:
        raw = f.read()
    bundle = json.loads(raw)
    resp = requests.post(fhir_base, data=raw, headers={"Content-Type": "application/fhir+json"}, timeout=120)
    if resp.status_code != 200:
        sys.exit(f"loading {path} straight into the server: {resp.status_code} {resp.text[:500]}")
    answer = resp.json()
    ids = {}
    for sent, got in zip(bundle["entry"], answer["entry"]):
        loc = got["response"]["location"].split("/_history/")[0]
        rtype, rid = loc.rsplit("/", 2)[-2:]
        ids[sent["fullUrl"]] = f"{rtype}/{rid}"
    resources = []
    patient = None
    for e in bundle["entry"]:
        res = rewrite_urns(e["resource"], ids)
        rtype, rid = ids[e["fullUrl"]].split("/")
        res["id"] = rid
        resources.append(res)
        if rtype == "Patient":
            patient = res
    return resources, patient


# ---- the cases -------------------------------------------------------------------------------


def substitute(text, variables):
    if not isinstance(text, str):
        return text
    for k, v in variables.items():
        text = text.replace("{" + k + "}", v)
    return text


def select(dataset, spec, variables, env):
    """The resources a `[[case.returns]]` or `[case.let.X]` selection picks: all of `type` (or
    every type, `*`) where the FHIRPath `where` holds, sorted and sliced when asked."""
    rtype = spec.get("type", "*")
    where = substitute(spec.get("where"), variables)
    picked = []
    for (t, _), res in dataset.items():
        if rtype != "*" and t != rtype:
            continue
        if where is not None:
            try:
                result = fhirpath(res, where, env, R4)
            except Exception as e:  # noqa: BLE001 - name the expression that failed
                sys.exit(f"FHIRPath {where!r} on {t}/{res.get('id')}: {e}")
            if result != [True]:
                continue
        picked.append(res)
    if "sort" in spec:
        key = spec["sort"]
        picked.sort(key=lambda r: str(r.get(key, "")), reverse=spec.get("descending", False))
    offset = spec.get("offset", 0)
    if "count" in spec:
        picked = picked[offset : offset + spec["count"]]
    return picked


def indexed_references(res):
    """`(type, id)` of every reference the server indexes in `res` (its reference search
    parameters, from sekmet's own parameter table)."""
    return {(row.rtype, row.rid) for row in sekmet_index(res) if row.rtype and row.rid}


def everything(dataset, patient_id):
    """`Patient/{id}/$everything` as the server defines it: the patient, every resource that
    references it through a reference search parameter, and the resources those reference
    through one."""
    target = ("Patient", patient_id)
    out = {target: dataset[target]}
    direct = [r for r in dataset.values() if target in indexed_references(r)]
    for r in direct:
        out[(r["resourceType"], r["id"])] = r
    for r in direct:
        for key in indexed_references(r):
            if key in dataset:
                out.setdefault(key, dataset[key])
    return list(out.values())


def expected_for(case, dataset, variables):
    env = {}
    for name, spec in case.get("let", {}).items():
        picked = select(dataset, spec, variables, env)
        values = []
        for res in picked:
            if "select" in spec:
                values.extend(str(x) for x in fhirpath(res, spec["select"], {}, R4))
            else:
                values.append(f"{res['resourceType']}/{res['id']}")
        env[name] = values
    found = Found()
    for p in case.get("names", []):
        found.patients.add(substitute(p, variables))
    returned = []
    if "read" in case:
        rtype, rid = substitute(case["read"], variables).split("/")
        returned.append(dataset[(rtype, rid)])
    for spec in case.get("returns", []):
        returned.extend(select(dataset, spec, variables, env))
    if "everything" in case:
        returned.extend(everything(dataset, substitute(case["everything"], variables)))
    for res in returned:
        f = referenced(res)
        found.patients |= f.patients
        found.gaps |= f.gaps
        found.external |= f.external
    if "pre_image" in case:
        # A change whose patient only the EHR knows: the gateway reads the resource first.
        rtype, rid = substitute(case["pre_image"], variables).split("/")
        f = referenced(dataset[(rtype, rid)])
        found.patients |= f.patients
        found.gaps |= f.gaps
        found.external |= f.external
    return found, len(returned)


class Driver:
    def __init__(self, gateway, token):
        self.smart = fhir_client.FHIRClient(settings={"app_id": "auditgate-corpus", "api_base": gateway})
        self.server = self.smart.server
        self.server.session.headers.update(
            {"Authorization": "Bearer " + token, "X-Device-Id": "corpus-ws-1", "User-Agent": "auditgate-corpus/1"}
        )

    def send(self, case, body):
        """One request, through fhirclient's server object where it has a method for it, else
        through its session (PATCH, form posts, other media types)."""
        method = case.get("method", "GET")
        path = case["url"]
        url = urllib.parse.urljoin(self.server.base_uri, path)
        accept = case.get("accept")
        ctype = case.get("content_type", "application/fhir+json")
        extra = case.get("headers", {})
        try:
            if not extra and method == "GET":
                return self.server._get(path, headers={"Accept": accept} if accept else None)
            if not extra and method == "DELETE":
                return self.server.delete_json(path)
            if not extra and method in ("POST", "PUT") and ctype == "application/fhir+json" and isinstance(body, dict):
                send = self.server.post_json if method == "POST" else self.server.put_json
                return send(path, body)
            headers = {"Accept": accept or "application/fhir+json", **extra}
            data = None
            if body is not None:
                headers["Content-Type"] = ctype
                data = body if isinstance(body, (str, bytes)) else json.dumps(body)
            return self.server.session.request(method, url, data=data, headers=headers)
        except (FHIRNotFoundException, FHIRPermissionDeniedException) as e:
            return e.response
        except requests.HTTPError as e:
            return e.response


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--loaded", required=True, help="JSON list of the example files the server holds")
    ap.add_argument("--synthea", required=True, help="folder of Synthea transaction bundles")
    ap.add_argument("--fhir", required=True, help="the server's own base URL (for loading and lookups)")
    ap.add_argument("--gateway", required=True, help="the gateway's FHIR base URL")
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    LOCAL_BASES.add(normalise_base(args.fhir))

    with open(args.corpus, "rb") as f:
        corpus = tomllib.load(f)
    dataset = {}
    with open(args.loaded) as f:
        for path in json.load(f):
            with open(path) as g:
                res = json.load(g)
            dataset[(res["resourceType"], res["id"])] = res

    variables = {}
    bundles = sorted(glob.glob(os.path.join(args.synthea, "*.json")))
    if len(bundles) < 3:
        sys.exit(f"expected at least 3 Synthea bundles in {args.synthea}, found {len(bundles)}")
    for i, path in enumerate(bundles[:-1]):
        resources, patient = load_synthea(path, args.fhir)
        for res in resources:
            dataset[(res["resourceType"], res["id"])] = res
        variables[f"syn{i}"] = patient["id"]
        variables[f"syn{i}.family"] = patient["name"][0]["family"]
        mrn = [x for x in patient["identifier"] if x.get("system") == "http://hospital.smarthealthit.org"][0]
        variables[f"syn{i}.mrn"] = mrn["system"] + "|" + mrn["value"]
        variables[f"syn{i}.mrn_value"] = mrn["value"]
    with open(bundles[-1]) as f:
        synthea_bundle = json.load(f)
    synthea_key = [x for x in synthea_bundle["entry"][0]["resource"]["identifier"] if x.get("system", "").startswith("https://github.com/")][0]
    variables["synthea_bundle.identifier"] = synthea_key["system"] + "|" + synthea_key["value"]

    driver = Driver(args.gateway, args.token)
    results = []
    for case in corpus["case"]:
        case = copy.deepcopy(case)
        case["url"] = substitute(case["url"], variables)
        body = case.get("body")
        if body == "{synthea_bundle}":
            body = synthea_bundle
        elif isinstance(body, str) and case.get("content_type", "application/fhir+json").endswith("json"):
            body = json.loads(substitute(body, variables))
        elif isinstance(body, str):
            body = substitute(body, variables)
        found, returned = expected_for(case, dataset, variables)
        if isinstance(body, (dict, list)):
            f = referenced(without_posted_ids(body, case.get("method", "GET"))) if isinstance(body, dict) else Found()
            if isinstance(body, list):  # JSON Patch: the references it writes
                walk_value(body, f, {})
            found.patients |= f.patients
            found.external |= f.external
        resp = driver.send(case, body)
        if (
            case.get("method") == "PUT"
            and resp.status_code < 300
            and isinstance(body, dict)
            and body.get("resourceType") != "Bundle"
        ):
            # The corpus's own writes join the data the later cases read.
            dataset[(body["resourceType"], body["id"])] = body
        created = None
        if "created" in case:
            ident = substitute(case["created"]["identifier"], variables)
            rtype = case["created"].get("type", "Patient")
            look = requests.get(f"{args.fhir}/{rtype}", params={"identifier": ident}, timeout=30).json()
            ids = [e["resource"]["id"] for e in look.get("entry", [])]
            if len(ids) != 1:
                sys.exit(f"{case['name']}: {len(ids)} {rtype}s with identifier {ident} on the server")
            created = ids[0]
            found.patients.add(created)
        gaps = set(case.get("gaps", [])) | found.gaps
        results.append(
            {
                "name": case["name"],
                "method": case.get("method", "GET"),
                "url": case["url"],
                "status": resp.status_code,
                "request_id": resp.headers.get("X-Request-Id"),
                "content_type": resp.headers.get("Content-Type"),
                "body": resp.content.decode("utf-8", errors="replace"),
                "expect": {
                    "status": case.get("status", 200),
                    "action": case["action"],
                    "interaction": case["interaction"],
                    "patients": sorted(found.patients),
                    "gaps": sorted(gaps),
                    "external_refs": sorted(found.external),
                    "attribution": case.get("attribution", "complete" if not gaps else "partial"),
                    "returned": returned,
                },
            }
        )
    with open(args.out, "w") as f:
        json.dump({"variables": variables, "cases": results}, f, indent=1)


if __name__ == "__main__":
    main()
