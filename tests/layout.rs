//! The house rule of `src/`: no import circles.
//!
//! Reads every library source file under `src/` as text, finds the paths it names
//! (`use crate::…`, `use super::…`, `crate::a::b(…)` in code, `pub use child::…` in a module
//! root), resolves each to the file that defines the module it lands in, and fails if any file
//! reaches itself again through those arrows. A module root (`mod.rs`) that re-exports a child
//! points at that child; a child that names an item through its parent's re-export
//! (`super::Item`) points at the parent, so such a pair is reported: children name their
//! siblings' items by their own file (`super::sibling::Item`).
//!
//! What is not read: comments (doc links included), string literals, unit-test modules
//! (`#[cfg(test)] mod tests` to the end of a file, and files named `tests.rs`), and `main.rs`
//! (the binary sits above the library). Declaring a child (`mod x;`) is not an arrow.
//!
//! The same rule holds one level up, between the rooms of the house: the stage folders
//! (`journal/`, `proxy/`, ...) and the shared files at the top of `src/` (`record.rs`, ...). The
//! one file any stage may name without its folder counting is a declared shared leaf
//! ([`SHARED_LEAVES`]: `config/error.rs`, the error every section's `validate()` returns), and
//! the test checks that it imports nothing of the crate.
//!
//! On failure the test prints each circle with the arrows that tie it, as
//! `src/a.rs -> src/b.rs (via crate::b::Thing)`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking, with the message of the unwrap or expect that found it"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files every stage may name although they sit in a stage's folder: leaves that import
/// nothing of the crate.
const SHARED_LEAVES: &[&str] = &["config::error"];

/// One library file: its module path (`["journal", "writer"]`) and its code.
struct SourceFile {
    module: Vec<String>,
    /// Child modules declared in this file with `mod name;` (or inline `mod name {`).
    children: BTreeSet<String>,
    code: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `src/journal/writer.rs` -> `["journal", "writer"]`; `src/journal/mod.rs` -> `["journal"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code with comments and string/char literals blanked out (newlines kept), so that
/// `crate::` inside a doc link or a message is not read as an arrow.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) && raw_start(b, i) {
            // r"…" or r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a): skip only literals.
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// `r` starts a raw string only when it is not the end of an identifier (`bar"` is not).
fn raw_start(b: &[u8], i: usize) -> bool {
    i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// Cuts a trailing `#[cfg(test)] mod tests { … }` (the convention: unit tests come last).
fn without_unit_tests(code: &str) -> &str {
    let mut search = 0;
    while let Some(at) = code[search..].find("#[cfg(test)]") {
        let start = search + at;
        let rest = code[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests") || rest.starts_with("pub(crate) mod tests") {
            return &code[..start];
        }
        search = start + 1;
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path a `use` tree names, expanded: `crate::{a::B, c::{D, E}}` -> `crate::a::B`,
/// `crate::c::D`, `crate::c::E`.
fn expand_use_tree(tree: &str) -> Vec<String> {
    // `X as Y` keeps X: mark the rename before white space goes.
    let tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let tree = tree.replace(" as ", "@");
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into("", &tree, &mut out);
    out
}

fn expand_into(prefix: &str, tree: &str, out: &mut Vec<String>) {
    // Split the tree at top-level commas.
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        if let Some(open) = part.find('{') {
            let head = part[..open].trim_end_matches("::");
            let inner = &part[open + 1..part.len() - 1];
            expand_into(&join(prefix, head), inner, out);
        } else {
            let path = part.split('@').next().unwrap_or(part);
            out.push(join(prefix, path));
        }
    }
}

fn join(prefix: &str, tail: &str) -> String {
    match (prefix.is_empty(), tail.is_empty()) {
        (true, _) => tail.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}::{tail}"),
    }
}

/// The paths a file names: every `use` tree, and every `crate::…`/`super::…` path in code.
fn named_paths(code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements (possibly `pub use`, `pub(crate) use`), up to their `;`.
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        let tree = after[..end].trim();
        for path in expand_use_tree(tree) {
            let first = path.split("::").next().unwrap_or("");
            if first == "crate" || first == "super" || first == "self" || children.contains(first) {
                paths.push(path);
            }
        }
        rest = &after[end..];
    }
    // Paths in code: `crate::a::b` and `super::a`.
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(anchor) {
            let start = from + at;
            from = start + anchor.len();
            if start > 0 {
                let before = code[..start].chars().next_back().unwrap_or(' ');
                if is_ident(before) {
                    continue; // `foo_crate::` or `$crate::`
                }
            }
            let end = code[start..]
                .find(|c: char| !(is_ident(c) || c == ':'))
                .map_or(code.len(), |e| start + e);
            paths.push(code[start..end].trim_end_matches(':').to_string());
        }
    }
    paths
}

/// Position of `word` as a whole word starting a statement-ish token.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let before_ok = start == 0 || !is_ident(text[..start].chars().next_back().unwrap_or(' '));
        let after_ok = text[start + word.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_whitespace());
        if before_ok && after_ok {
            return Some(start);
        }
        from = start + word.len();
    }
    None
}

/// The file a path lands in: the longest prefix of its module path that is a file module.
fn resolve(
    path: &str,
    from: &[String],
    from_children: &BTreeSet<String>,
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segments.first().copied() {
        Some("crate") => {
            segments.remove(0);
            Vec::new()
        }
        Some("super") => {
            let mut base = from.to_vec();
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop()?;
            }
            base
        }
        Some("self") => {
            segments.remove(0);
            from.to_vec()
        }
        Some(first) if from_children.contains(first) => from.to_vec(),
        _ => return None,
    };
    let mut best = if modules.contains(&base) {
        Some(base.clone())
    } else {
        None
    };
    for seg in segments {
        base.push(seg.to_string());
        if modules.contains(&base) {
            best = Some(base.clone());
        } else {
            break;
        }
    }
    best
}

/// Strongly connected components of more than one file (Tarjan, iterative enough for ~100).
fn circles(edges: &Arrows) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        next: usize,
        found: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(targets) = s.edges.get(v) {
            for w in targets.keys() {
                let (w, _) = s.edges.get_key_value(w).expect("every target is a file");
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("on the stack");
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// A module path (`["journal", "writer"]`).
type Module = Vec<String>;
/// Arrows: module -> (module it names -> one path that ties them).
type Arrows = BTreeMap<Module, BTreeMap<Module, String>>;

/// Reads `src/` into the file graph: where each module's file is, and its arrows.
fn import_graph() -> (BTreeMap<Module, PathBuf>, Arrows) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files: BTreeMap<Vec<String>, (PathBuf, SourceFile)> = BTreeMap::new();
    for path in paths {
        let name = path.file_name().expect("a file name").to_string_lossy();
        if name == "main.rs" && path.parent() == Some(src.as_path()) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let stripped = strip_comments_and_strings(&text);
        let module = module_of(&src, &path);
        let children = stripped
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
                let l = l.strip_prefix("mod ")?;
                let name: String = l.chars().take_while(|c| is_ident(*c)).collect();
                (!name.is_empty()).then_some(name)
            })
            .collect();
        // Unit-test files and modules are not part of the house.
        let code = if name == "tests.rs" {
            String::new()
        } else {
            without_unit_tests(&stripped).to_string()
        };
        files.insert(
            module.clone(),
            (
                path,
                SourceFile {
                    module,
                    children,
                    code,
                },
            ),
        );
    }
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    for (module, (_, file)) in &files {
        let out = edges.entry(module.clone()).or_default();
        for path in named_paths(&file.code, &file.children) {
            if let Some(target) = resolve(&path, &file.module, &file.children, &modules) {
                if &target != module {
                    out.entry(target).or_insert(path);
                }
            }
        }
    }
    let locations = files.into_iter().map(|(m, (p, _))| (m, p)).collect();
    (locations, edges)
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let (locations, edges) = import_graph();
    assert!(
        edges.len() > 10,
        "read only {} files from src/: the reader is broken",
        edges.len()
    );
    let found = circles(&edges);
    let mut report = String::new();
    for (n, circle) in found.iter().enumerate() {
        report.push_str(&format!("circle {}: {} files\n", n + 1, circle.len()));
        let members: BTreeSet<&Vec<String>> = circle.iter().collect();
        for from in circle {
            for (to, via) in &edges[from] {
                if members.contains(to) {
                    let show = |m: &Module| shown(&locations, m);
                    report.push_str(&format!("  {} -> {} (via {via})\n", show(from), show(to)));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "import circles in src/ (every arrow must point down; see README, Layout):\n{report}"
    );
}

/// A module's file, relative to the crate root (`src/journal/writer.rs`).
fn shown(locations: &BTreeMap<Module, PathBuf>, module: &Module) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = &locations[module];
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The room a file belongs to: its top-level module (`journal` for `journal/writer.rs`).
fn stage_of(module: &[String]) -> Vec<String> {
    module.iter().take(1).cloned().collect()
}

#[test]
fn no_stage_folder_imports_one_that_imports_it_back() {
    let (locations, edges) = import_graph();
    let shared: BTreeSet<Vec<String>> = SHARED_LEAVES
        .iter()
        .map(|s| s.split("::").map(String::from).collect())
        .collect();
    for leaf in &shared {
        let out = edges
            .get(leaf)
            .unwrap_or_else(|| panic!("shared leaf {} is not a file in src/", leaf.join("::")));
        assert!(
            out.is_empty(),
            "the shared leaf {} must import nothing of the crate, but names {:?}",
            leaf.join("::"),
            out.values().collect::<Vec<_>>()
        );
    }
    // Stage -> stage, each arrow with one file-level arrow that makes it.
    let mut stages: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    let show = |m: &Module| shown(&locations, m);
    for (from, targets) in &edges {
        if from.is_empty() {
            continue; // lib.rs: the module map
        }
        stages.entry(stage_of(from)).or_default();
        for (to, via) in targets {
            if to.is_empty() || shared.contains(to) || stage_of(to) == stage_of(from) {
                continue;
            }
            stages.entry(stage_of(to)).or_default();
            stages
                .get_mut(&stage_of(from))
                .expect("inserted above")
                .entry(stage_of(to))
                .or_insert_with(|| format!("{} -> {} via {via}", show(from), show(to)));
        }
    }
    let found = circles(&stages);
    let mut report = String::new();
    for circle in &found {
        let members: BTreeSet<&Vec<String>> = circle.iter().collect();
        report.push_str("circle:\n");
        for from in circle {
            for (to, via) in &stages[from] {
                if members.contains(to) {
                    report.push_str(&format!(
                        "  {}/ -> {}/: {via}\n",
                        from.join(""),
                        to.join("")
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "stage folders in src/ that import each other (see README, Layout):\n{report}"
    );
}

/// The reader itself: a circle it is shown must be found, and what it must skip is skipped.
#[test]
fn the_reader_finds_a_circle_and_skips_comments_strings_and_tests() {
    let code = strip_comments_and_strings(
        "use crate::{a::X, b::{Y, c::Z as W}};\n// use crate::hidden;\nlet s = \"crate::nope\";\n\
         let r = r#\"crate::raw\"#;\nfn f() { crate::d::call(); super::e::F }\n\
         #[cfg(test)]\nmod tests { use crate::tested; }\n",
    );
    let code = without_unit_tests(&code);
    let paths = named_paths(code, &BTreeSet::new());
    for want in [
        "crate::a::X",
        "crate::b::Y",
        "crate::b::c::Z",
        "crate::d::call",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    assert!(paths.iter().any(|p| p == "super::e::F"), "{paths:?}");
    for never in ["hidden", "nope", "raw", "tested"] {
        assert!(
            !paths.iter().any(|p| p.contains(never)),
            "{never} in {paths:?}"
        );
    }

    let m = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split("::").map(String::from).collect()
        }
    };
    let modules: BTreeSet<Vec<String>> = ["", "a", "b", "b::c"].iter().map(|s| m(s)).collect();
    let none = BTreeSet::new();
    assert_eq!(
        resolve("crate::b::c::Z", &m("a"), &none, &modules),
        Some(m("b::c"))
    );
    assert_eq!(
        resolve("crate::b::Y", &m("a"), &none, &modules),
        Some(m("b"))
    );
    assert_eq!(
        resolve("super::Y", &m("b::c"), &none, &modules),
        Some(m("b"))
    );
    assert_eq!(resolve("std::fs", &m("a"), &none, &modules), None);
    let kids: BTreeSet<String> = ["c".to_string()].into();
    assert_eq!(resolve("c::Z", &m("b"), &kids, &modules), Some(m("b::c")));

    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    edges
        .entry(m("a"))
        .or_default()
        .insert(m("b"), "crate::b::Y".into());
    edges
        .entry(m("b"))
        .or_default()
        .insert(m("b::c"), "c::Z".into());
    edges
        .entry(m("b::c"))
        .or_default()
        .insert(m("a"), "crate::a::X".into());
    edges.entry(m("")).or_default();
    assert_eq!(circles(&edges), vec![vec![m("a"), m("b"), m("b::c")]]);
    edges.get_mut(&m("b::c")).expect("b::c").clear();
    assert!(circles(&edges).is_empty());
}
