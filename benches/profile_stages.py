#!/usr/bin/env python3
"""CPU per request by stage, from perf profiles folded by inferno-collapse-perf.

    benches/profile_stages.py LABEL=FOLDED:CPU_US_PER_REQ [LABEL=FOLDED:CPU_US_PER_REQ ...]

Each sample is given to one stage: the stage of the innermost frame (nearest the leaf) that a
stage's pattern matches, so an allocation or a system call counts for the code that asked for
it. Samples of the journal writer's thread that match no writer stage are "writer: queue and
loop"; any other unmatched sample is pingora's own proxying (what the bare proxy also does).
A stage's figure is its share of the profile's samples times the process's CPU per request
measured without the profiler (CPU_US_PER_REQ), so perf's own overhead is not counted.

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
    ("await durability (wake-up)", r"tokio::sync::oneshot::Receiver"),
    ("writer: hashing and Merkle", r"auditgate::record::leaf_hash|auditgate::tlog::merkle|sha2::"),
    ("writer: format the lines", r"auditgate::journal::writer::Writer::stamp|auditgate::record::splice_parts"),
    ("writer: write + fdatasync", r"sync_data|write_all_at|fdatasync|__libc_pwrite"),
    ("writer: wake the waiters", r"tokio::sync::oneshot::Sender"),
    ("metrics", r"^prometheus::|auditgate::metrics::"),
    ("logging (tracing)", r"^tracing|^<tracing|^log::|tracing_log"),
    ("buffered: exchange with the upstream", r"auditgate::proxy::exchange::"),
    (
        "buffered: answer the client",
        r"auditgate::proxy::budget::Pace::client|pingora_proxy::Session::write_response_",
    ),
]
COMPILED = [(name, re.compile(p)) for name, p in STAGES]
WRITER_THREAD = "journal-writer"
BACKGROUND_THREADS = {"checkpointer", "columnar-copy", "journal-spare", "archiver"}
HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}$")


def stage_of(frames):
    thread = frames[0]
    if thread in BACKGROUND_THREADS:
        return "background: checkpoints, columnar copy, spare segment"
    for frame in reversed(frames[1:]):
        frame = HASH_SUFFIX.sub("", frame)
        for name, pattern in COMPILED:
            if pattern.search(frame):
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
            stage = stage_of(stack.split(";"))
            by_stage[stage] = by_stage.get(stage, 0) + n
    return by_stage, total


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    columns = []
    for arg in argv[1:]:
        label, _, rest = arg.partition("=")
        path, _, cpu = rest.rpartition(":")
        by_stage, total = profile(path)
        columns.append((label, by_stage, total, float(cpu)))
    order = [name for name, _ in STAGES] + [
        "writer: queue and loop",
        "background: checkpoints, columnar copy, spare segment",
        "proxying (pingora; the bare proxy does this too)",
    ]
    header = "| stage | " + " | ".join(f"{label} µs/req" for label, *_ in columns) + " |"
    print(header)
    print("| --- |" + " ---: |" * len(columns))
    for stage in order:
        cells = []
        for _, by_stage, total, cpu in columns:
            share = by_stage.get(stage, 0) / total if total else 0.0
            cells.append(f"{share * cpu:.1f}" if share else "-")
        if any(c != "-" for c in cells):
            print(f"| {stage} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"**{cpu:.1f}**" for *_, cpu in columns)
    print(f"| **total (measured without perf)** | {totals} |")
    samples = " | ".join(f"{total / 1e9:.2f} s" for _, _, total, _ in columns)
    print(f"| CPU time sampled | {samples} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
