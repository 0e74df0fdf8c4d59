#!/usr/bin/env python3
"""CPU per request by stage, from perf profiles folded by inferno-collapse-perf.

    benches/profile_stages.py LABEL=FOLDED:REQUESTS:CPU_US_PER_REQ [...]

Each sample is given to one stage: the stage of the innermost frame (nearest the leaf) that a
stage's pattern matches, so an allocation or a system call counts for the code that asked for
it. Samples of the journal writer's thread that match no writer stage are "writer: queue and
loop"; any other unmatched sample is pingora's own proxying (what the bare proxy also does).
A stage's figure is the CPU time its samples stand for (perf's cpu-clock weights) divided by
the REQUESTS answered while perf sampled. Sampling has a cost of its own, charged to whatever
was running, so the profiled total is somewhat above CPU_US_PER_REQ, the process's CPU per
request measured without the profiler, which the last rows print for comparison.

Prints one Markdown table, one column per profile. Standard library only.
"""

import re
import sys

# (stage, pattern on one frame), innermost match wins. Frames are Rust symbols as perf prints
# them (hash suffixes removed); kernel frames end in `_[k]` and match no pattern, so they count
# for their caller.
STAGES = [
    ("JWT (cached)", r"auditgate::identity::"),
    ("rules", r"auditgate::rules::"),
    ("network vector", r"auditgate::proxy::origin::|auditgate::network::"),
    (
        "record: build the event",
        r"auditgate::proxy::admission::|auditgate::record::Event::bare|auditgate::proxy::bounds::"
        r"|auditgate::record::format_ts|drop_in_place<auditgate::record::"
        r"|<auditgate::record::\w+ as core::clone::Clone>",
    ),
    ("response inspection (patients)", r"auditgate::attribution::"),
    ("record: serialise", r"auditgate::record::Event::to_json"),
    (
        "hand-off to the writer",
        r"auditgate::journal::handle::Journal::submit|std::sync::mpmc::.*::(try_)?send"
        r"|tokio::sync::oneshot::channel",
    ),
    ("await durability (wake-up)", r"tokio::sync::oneshot::Receiver.*poll"),
    ("writer: hashing and Merkle", r"auditgate::record::leaf_hash|auditgate::tlog::merkle|sha2::"),
    ("writer: format the lines", r"auditgate::journal::writer::Writer::stamp|auditgate::record::splice_parts"),
    ("writer: write + fdatasync", r"sync_data|write_all_at|fdatasync|__libc_pwrite"),
    ("writer: wake the waiters", r"tokio::sync::oneshot::Sender"),
    ("metrics", r"^prometheus::|auditgate::metrics::"),
    ("logging (tracing)", r"^tracing|^<tracing|^log::|tracing_log"),
    ("buffered: exchange with the upstream", r"auditgate::proxy::exchange::"),
    ("buffered: answer the client", r"auditgate::proxy::budget::Pace::client"),
]
# Stages that only count in some stacks: pingora uses the same channels for its own work.
ONLY_WITHIN = {
    "await durability (wake-up)": re.compile(r"auditgate::"),
    "writer: wake the waiters": re.compile(r"^journal-writer;"),
}
COMPILED = [(name, re.compile(p)) for name, p in STAGES]
WRITER_THREAD = "journal-writer"
BACKGROUND_THREADS = {"checkpointer", "columnar-copy", "journal-spare", "archiver"}
HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}$")


def stage_of(stack):
    frames = stack.split(";")
    thread = frames[0]
    if thread in BACKGROUND_THREADS:
        return "background: checkpoints, columnar copy, spare segment"
    for frame in reversed(frames[1:]):
        frame = HASH_SUFFIX.sub("", frame)
        for name, pattern in COMPILED:
            within = ONLY_WITHIN.get(name)
            if pattern.search(frame) and (within is None or within.search(stack)):
                return name
    if thread == WRITER_THREAD:
        return "writer: queue and loop"
    return "proxying (pingora; the bare proxy does this too)"


def profile(path):
    by_stage = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            stage = stage_of(stack)
            by_stage[stage] = by_stage.get(stage, 0) + n
    return by_stage, total


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    columns = []
    for arg in argv[1:]:
        label, _, rest = arg.partition("=")
        path, requests, cpu = rest.rsplit(":", 2)
        by_stage, total = profile(path)
        columns.append((label, by_stage, total, int(requests), float(cpu)))
    order = [name for name, _ in STAGES] + [
        "writer: queue and loop",
        "background: checkpoints, columnar copy, spare segment",
        "proxying (pingora; the bare proxy does this too)",
    ]
    header = "| stage | " + " | ".join(f"{label} µs/req" for label, *_ in columns) + " |"
    print(header)
    print("| --- |" + " ---: |" * len(columns))
    def us_per_request(ns, requests):
        return ns / 1e3 / requests if requests else 0.0

    for stage in order:
        cells = []
        for _, by_stage, _, requests, _ in columns:
            ns = by_stage.get(stage, 0)
            cells.append(f"{us_per_request(ns, requests):.1f}" if ns else "-")
        if any(c != "-" for c in cells):
            print(f"| {stage} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"**{us_per_request(t, r):.1f}**" for _, _, t, r, _ in columns)
    print(f"| **total, profiled run** | {totals} |")
    measured = " | ".join(f"{cpu:.1f}" for *_, cpu in columns)
    print(f"| total measured without perf (median of the rounds) | {measured} |")
    requests = " | ".join(str(r) for _, _, _, r, _ in columns)
    print(f"| requests in the profiled run | {requests} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
