#!/usr/bin/env python3
"""Generate the `[compartment.*]` tables of rules/fhir-r4.toml from the official FHIR R4 package.

Source of truth: the npm package `hl7.fhir.r4.examples@4.0.1` (HL7, CC0-1.0), which carries the
R4 definitional resources next to the examples:

* `CompartmentDefinition-patient.json`: which search parameters put a resource type in the Patient
  compartment (`compartment` below, in the definition's order);
* `SearchParameter-*.json`: every search parameter's code, base types, reference targets and
  FHIRPath expression;
* `StructureDefinition-<Type>.json`: the element each expression points at (reference targets and
  cardinality), needed because a parameter shared by many types (`clinical-patient`) lists the
  union of targets.

For each resource type the script writes one table (types sorted, parameters sorted):

    [compartment.Observation]
    compartment = ["subject", "performer"]   # CompartmentDefinition-patient, verbatim
    refs = ["patient", "performer", ...]     # every reference parameter that can hold a Patient
    bare = ["patient"]                       # a bare id means Patient (targets are Patient only)
    pin = ["patient", "subject"]             # a match confines every result to that patient
    elements = ["performer", "subject"]      # top-level elements holding those references
    summary = true                           # every one of them is a summary element

`refs` is the compartment parameters plus every reference parameter whose targets include
Patient, except parameters that may point at any resource type (`Observation.focus`) when they
are not compartment parameters. `bare`: the parameter's targets, for this base type, are exactly
`Patient` (from `.where(resolve() is Patient)` or the element's target profiles). `pin`: the
expression for this type is one direct child element of the resource with cardinality at most 1
(for example `Observation.subject`), so every resource a search on it returns has that one
patient as its subject; multi-valued or nested paths (`Patient.link.other`,
`Appointment.participant.actor`, `Person.link.target`) never pin, and the element must be the
record's subject (the W5 mapping `FiveWs.subject` in the StructureDefinition), so participants
such as `AllergyIntolerance.asserter` (an allergy of another patient, asserted by this one) never
pin. Two documented overrides (NEVER_PIN, ALWAYS_PIN_ELEMENTS) cover what the data gets wrong.
`elements`: the top-level elements (`[x]` dropped) the `refs` parameters' expressions for this
type start with: what `_elements` must keep for a returned resource to still name its patients
(the gateway adds them upstream). `summary`: each of those elements is `isSummary` in the
type's StructureDefinition, so `_summary=true` keeps every patient reference of the type.

The output replaces everything between the two marker lines in the rule file:

    # BEGIN GENERATED compartment
    # END GENERATED compartment

Usage (from the crate root):

    # the package unpacked by npm (the directory holding package.json), or its .tgz from `npm pack`
    python3 scripts/gen-compartment.py --package /tmp/npmex/node_modules/hl7.fhir.r4.examples
    npm pack hl7.fhir.r4.examples@4.0.1 && python3 scripts/gen-compartment.py \\
        --package hl7.fhir.r4.examples-4.0.1.tgz
    # CI: exit 1 if the committed file differs from what the package gives
    python3 scripts/gen-compartment.py --package ... --check

Standard library only (Python >= 3.8).
"""

import argparse
import io
import json
import os
import re
import sys
import tarfile

PACKAGE_NAME = "hl7.fhir.r4.examples"
PACKAGE_VERSION = "4.0.1"
BEGIN = "# BEGIN GENERATED compartment"
END = "# END GENERATED compartment"
DEFAULT_RULES = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "rules", "fhir-r4.toml")
)

RESOLVE_IS = re.compile(r"\.where\(resolve\(\) is ([A-Za-z]+)\)")
FUNCTION_CALL = re.compile(r"\.[a-zA-Z]+\(")

# Judgement calls the data cannot make, kept small and explicit. A parameter pins a search when
# every result has the referenced patient as the record's subject.
# * Coverage.policyHolder / Coverage.subscriber carry the W5 "subject" mapping, but the
#   beneficiary (whose coverage it is) can be another patient (a dependant): never pin.
# * ResearchSubject.individual and EnrollmentRequest.candidate are the person the record is
#   about but carry no W5 subject mapping: pin.
NEVER_PIN = {("Coverage", "policy-holder"), ("Coverage", "subscriber")}
ALWAYS_PIN_ELEMENTS = {"ResearchSubject.individual", "EnrollmentRequest.candidate"}


class Package:
    """Read JSON files by name from an unpacked package directory or a .tgz."""

    def __init__(self, location):
        self.files = {}
        if os.path.isdir(location):
            root = location
            if not os.path.exists(os.path.join(root, "package.json")) and os.path.isdir(
                os.path.join(root, "package")
            ):
                root = os.path.join(root, "package")
            self.root = root
            self.names = set(os.listdir(root))
            self.tar = None
        else:
            self.root = None
            self.tar = tarfile.open(location, "r:gz")
            self.members = {}
            for m in self.tar.getmembers():
                if m.isfile() and m.name.startswith("package/") and m.name.count("/") == 1:
                    self.members[m.name[len("package/"):]] = m
            self.names = set(self.members)

    def has(self, name):
        return name in self.names

    def load(self, name):
        if name not in self.files:
            if self.tar is None:
                with open(os.path.join(self.root, name), "rb") as f:
                    data = f.read()
            else:
                data = self.tar.extractfile(self.members[name]).read()
            self.files[name] = json.loads(data.decode("utf-8"))
        return self.files[name]

    def search_parameters(self):
        for name in sorted(self.names):
            if name.startswith("SearchParameter-") and name.endswith(".json"):
                yield self.load(name)


def die(message):
    print("gen-compartment: " + message, file=sys.stderr)
    sys.exit(2)


def profile_type(url):
    return url.rsplit("/", 1)[-1]


def element_info(pkg, path):
    """(targets or None, max, is W5 subject) of an element path like `Observation.subject`."""
    rtype = path.split(".", 1)[0]
    name = "StructureDefinition-%s.json" % rtype
    if not pkg.has(name):
        return None, None, False
    for el in pkg.load(name)["snapshot"]["element"]:
        if el["path"] == path:
            targets = set()
            for t in el.get("type", []):
                if t.get("code") == "Reference":
                    for p in t.get("targetProfile", []):
                        targets.add(profile_type(p))
            w5 = [m.get("map") for m in el.get("mapping", []) if m.get("identity") == "w5"]
            subject = "FiveWs.subject" in w5 or path in ALWAYS_PIN_ELEMENTS
            return (targets or None), el.get("max"), subject
    return None, None, False


def element_path(piece):
    """The element path a FHIRPath piece starts with: `Observation.subject.where(..)` gives
    `Observation.subject`; None when the piece is not a plain path followed by functions."""
    piece = piece.lstrip("(")
    m = FUNCTION_CALL.search(piece)
    path = piece[: m.start()] if m else piece
    path = path.rstrip(")").strip()
    if not re.match(r"^[A-Z][A-Za-z]*(\.[a-z][A-Za-z]*(\[x\])?)+$", path):
        return None
    return path


def pieces_for(expression, rtype):
    """The `|`-separated parts of a FHIRPath expression that apply to `rtype`."""
    out = []
    for piece in expression.split("|"):
        piece = piece.strip()
        bare = piece.lstrip("(")
        if bare.startswith(rtype + "."):
            out.append(piece)
    return out


def top_elements(sp, rtype):
    """The top-level elements (`[x]` dropped) a parameter's expression reads on `rtype`."""
    out = set()
    for piece in pieces_for(sp.get("expression", ""), rtype):
        path = element_path(piece)
        if path is None:
            die("%s.%s: expression %r has no element path" % (rtype, sp["code"], piece))
        out.add(path.split(".")[1].replace("[x]", ""))
    if not out:
        die("%s.%s: no expression for the type" % (rtype, sp["code"]))
    return out


def is_summary(pkg, rtype, element):
    """Whether `rtype.element` (or `rtype.element[x]`) is a summary element."""
    sd = pkg.load("StructureDefinition-%s.json" % rtype)
    for el in sd["snapshot"]["element"]:
        if el["path"] in ("%s.%s" % (rtype, element), "%s.%s[x]" % (rtype, element)):
            return bool(el.get("isSummary"))
    die("%s.%s: no such element in the StructureDefinition" % (rtype, element))


def analyse(pkg, sp, rtype):
    """Targets (for rtype), and whether the parameter pins results to one patient."""
    declared = set(sp.get("target", []))
    pieces = pieces_for(sp.get("expression", ""), rtype)
    if not pieces:
        return declared, False
    targets = set()
    pin = len(pieces) == 1
    for piece in pieces:
        path = element_path(piece)
        resolved = RESOLVE_IS.findall(piece)
        el_targets, el_max, el_subject = element_info(pkg, path) if path else (None, None, False)
        if resolved:
            piece_targets = set(resolved)
        elif el_targets is not None and "Resource" not in el_targets:
            piece_targets = el_targets & declared if declared else el_targets
        else:
            piece_targets = set(declared)
        targets |= piece_targets
        other_filter = "where(" in RESOLVE_IS.sub("", piece)
        if path is None or path.count(".") != 1 or el_max != "1" or other_filter:
            pin = False
        if not el_subject:
            pin = False
    if "Patient" not in targets or (rtype, sp["code"]) in NEVER_PIN:
        pin = False
    return targets, pin


def build(pkg):
    meta = pkg.load("package.json")
    if meta.get("name") != PACKAGE_NAME or meta.get("version") != PACKAGE_VERSION:
        die(
            "expected %s@%s, found %s@%s"
            % (PACKAGE_NAME, PACKAGE_VERSION, meta.get("name"), meta.get("version"))
        )
    cd = pkg.load("CompartmentDefinition-patient.json")
    if cd.get("code") != "Patient" or cd.get("version") != PACKAGE_VERSION:
        die("CompartmentDefinition-patient.json is not the R4 Patient compartment")
    all_types = [r["code"] for r in cd["resource"]]
    compartment = {r["code"]: list(r.get("param", [])) for r in cd["resource"]}
    any_types = set(all_types)

    table = {}  # type -> {param: (bare, pin)}
    elements = {}  # type -> top-level elements of its reference params
    for sp in pkg.search_parameters():
        if sp.get("type") != "reference" or "Patient" not in sp.get("target", []):
            continue
        for rtype in sp.get("base", []):
            if rtype not in compartment:
                continue
            targets, pin = analyse(pkg, sp, rtype)
            in_compartment = sp["code"] in compartment[rtype]
            if "Patient" not in targets and not in_compartment:
                continue
            if targets >= any_types and not in_compartment:
                continue  # "any resource" parameters (focus, entity) only when in the compartment
            table.setdefault(rtype, {})[sp["code"]] = (targets == {"Patient"}, pin)
            elements.setdefault(rtype, set()).update(top_elements(sp, rtype))

    # Every compartment parameter must have been found as a search parameter.
    for rtype, params in compartment.items():
        for p in params:
            if p not in table.get(rtype, {}):
                die("compartment parameter %s.%s has no reference SearchParameter" % (rtype, p))
    summary = {
        rtype: all(is_summary(pkg, rtype, e) for e in els) for rtype, els in elements.items()
    }
    return cd, compartment, table, elements, summary


def render(cd, compartment, table, elements, summary):
    lines = [
        BEGIN,
        "# Do not edit by hand. Regenerate with:",
        "#   python3 scripts/gen-compartment.py --package <hl7.fhir.r4.examples dir or .tgz>",
        "# Source: npm %s@%s (CC0-1.0), %s"
        % (PACKAGE_NAME, PACKAGE_VERSION, "CompartmentDefinition-patient.json"),
        "#   %s version %s, date %s; SearchParameter-*.json; StructureDefinition-*.json"
        % (cd["url"], cd["version"], cd.get("date", "?")),
        "# Keys: compartment = the CompartmentDefinition's params for the type (verbatim);",
        "#   refs = every reference search param that can hold a Patient;",
        "#   bare = params whose bare ids are Patient ids (targets are Patient only);",
        "#   pin = params that confine each result to the referenced patient (a 0..1 direct",
        "#   child element), so a search pinned by one lists every patient it can return;",
        "#   elements = the top-level elements those params read (what _elements must keep);",
        "#   summary = every one of those elements is a summary element (_summary=true keeps them).",
        "",
    ]
    for rtype in sorted(table):
        params = table[rtype]
        refs = sorted(params)
        bare = sorted(p for p, (b, _) in params.items() if b)
        pin = sorted(p for p, (_, pn) in params.items() if pn)
        lines.append("[compartment.%s]" % rtype)
        lines.append("compartment = %s" % toml_list(compartment.get(rtype, [])))
        lines.append("refs = %s" % toml_list(refs))
        lines.append("bare = %s" % toml_list(bare))
        lines.append("pin = %s" % toml_list(pin))
        lines.append("elements = %s" % toml_list(sorted(elements.get(rtype, set()))))
        lines.append("summary = %s" % ("true" if summary.get(rtype) else "false"))
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def toml_list(items):
    return "[" + ", ".join('"%s"' % i for i in items) + "]"


def splice(text, generated):
    begin = text.find(BEGIN)
    end = text.find(END)
    if begin < 0 or end < 0 or end < begin:
        die("the rule file has no '%s' ... '%s' markers" % (BEGIN, END))
    end_line = text.find("\n", end)
    end_line = len(text) if end_line < 0 else end_line + 1
    return text[:begin] + generated + text[end_line:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--package",
        required=True,
        help="hl7.fhir.r4.examples@4.0.1: unpacked directory (with package.json) or .tgz",
    )
    ap.add_argument("--rules", default=DEFAULT_RULES, help="rule file to update (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is stale")
    args = ap.parse_args()

    pkg = Package(args.package)
    cd, compartment, table, elements, summary = build(pkg)
    generated = render(cd, compartment, table, elements, summary)
    with io.open(args.rules, "r", encoding="utf-8") as f:
        old = f.read()
    new = splice(old, generated)
    if args.check:
        if new != old:
            print("gen-compartment: %s is stale; regenerate it" % args.rules, file=sys.stderr)
            sys.exit(1)
        print("gen-compartment: %s is up to date (%d types)" % (args.rules, len(table)))
        return
    if new != old:
        with io.open(args.rules, "w", encoding="utf-8", newline="\n") as f:
            f.write(new)
    print("gen-compartment: wrote %d types into %s" % (len(table), args.rules))


if __name__ == "__main__":
    main()
