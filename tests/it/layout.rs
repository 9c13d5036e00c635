//! The tree's own rules, checked on the sources: the modules of `src/` import
//! each other without a cycle, no file grows past 1,000 lines, and nothing
//! holds mutable runtime settings in a process-wide static.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The Rust files under `dirs` of the repository.
fn rust_files(dirs: &[&str]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in dirs {
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join(d), &mut v);
    }
    v.sort();
    v
}

fn sources() -> Vec<PathBuf> {
    rust_files(&["src"])
}

/// `src/replay/driver.rs` → `replay::driver`; `src/hub/mod.rs` → `hub`.
fn module_of(path: &Path) -> Option<String> {
    let rel = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .ok()?;
    let s = rel.to_str()?.strip_suffix(".rs")?;
    if s == "lib" || s == "main" || s.starts_with("bin/") {
        return None;
    }
    Some(s.trim_end_matches("/mod").replace('/', "::"))
}

/// The `crate::…` paths a file names outside its tests, resolved to the
/// longest module prefix.
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        for k in (1..=parts.len()).rev() {
            let cand = parts[..k].join("::");
            if modules.contains(&cand) {
                out.insert(cand);
                break;
            }
        }
    }
    out
}

#[test]
fn modules_import_each_other_without_a_cycle() {
    let files: Vec<(String, String)> = sources()
        .iter()
        .filter_map(|p| Some((module_of(p)?, std::fs::read_to_string(p).ok()?)))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    assert!(modules.len() > 20, "found the modules: {modules:?}");
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .map(|(m, text)| {
            let mut deps = imports(text, &modules);
            deps.remove(m);
            (m.clone(), deps)
        })
        .collect();
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The stages flow one way: nothing below the HTTP surface imports it.
    for low in ["record", "hub", "replay", "ingest", "dlq", "session"] {
        for (m, deps) in &graph {
            if m == low || m.starts_with(&format!("{low}::")) {
                assert!(
                    !deps.iter().any(|d| d == "http" || d.starts_with("http::")),
                    "{m} imports the HTTP surface: {deps:?}"
                );
            }
        }
    }
}

#[test]
fn no_rust_file_reaches_a_thousand_lines() {
    let files = rust_files(&["src", "tests", "testkit", "bench"]);
    assert!(files.len() > 40, "found {} files", files.len());
    for p in files {
        let n = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(n < 1000, "{} has {n} lines", p.display());
    }
}

#[test]
fn no_process_wide_mutable_state() {
    for p in sources() {
        let text = std::fs::read_to_string(&p).unwrap();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_start();
            let is_static = ["static ", "pub static ", "pub(crate) static "]
                .iter()
                .any(|p| l.starts_with(p));
            let bad = l.contains("static mut")
                || is_static
                    && ["OnceLock", "Atomic", "Mutex", "RwLock", "Cell"]
                        .iter()
                        .any(|t| l.contains(t));
            assert!(!bad, "{}:{}: {line}", p.display(), i + 1);
        }
    }
}
