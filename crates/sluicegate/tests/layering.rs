//! The library's module layering: each top-level module of `src/` (a file `src/x.rs` or a
//! directory `src/x/`) may use (`crate::x`) only modules in its own layer or lower ones, and
//! the modules never use each other in a cycle. Read from the source text: comments and
//! everything after a file's first `#[cfg(test)]` do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may depend on modules of lower layers, and on those of
/// its own layer as long as no cycle forms.
const LAYERS: &[&[&str]] = &[
    &["estimate", "failure", "optimizer", "status"],
    &["error"],
    &["ident"],
    &["key"],
    &["dialect", "job_metrics", "model"],
    &["health"],
    &["fragment"],
    &["kind"],
    &["store"],
    &["client"],
    &["definition"],
    &["engine"],
    &["testing"],
];

/// Edges (`from`, `to`) allowed against the layering while a cycle is being removed. Each
/// must still exist. Empty: there is none.
const KNOWN_CYCLE_TO_REMOVE: &[(&str, &str)] = &[];

/// Where an edge was seen first: `src/...rs:line`.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn modules_use_only_lower_layers_and_never_each_other_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
        .collect();
    let mut problems = Vec::new();
    for m in &modules {
        if !layer_of.contains_key(m.as_str()) {
            problems.push(format!("module {m} is in no layer: add it to LAYERS"));
        }
    }
    for m in layer_of.keys() {
        if !modules.contains(*m) {
            problems.push(format!("LAYERS names {m}, which is not a module of src/"));
        }
    }

    let edges = edges(&src, &modules);
    for (from, to) in KNOWN_CYCLE_TO_REMOVE {
        if !edges.get(*from).is_some_and(|deps| deps.contains_key(*to)) {
            problems.push(format!(
                "{from} -> {to} is gone: remove it from KNOWN_CYCLE_TO_REMOVE"
            ));
        }
    }
    let known = |from: &str, to: &str| KNOWN_CYCLE_TO_REMOVE.contains(&(from, to));
    for (from, deps) in &edges {
        for (to, at) in deps {
            let (Some(&lf), Some(&lt)) = (layer_of.get(from.as_str()), layer_of.get(to.as_str()))
            else {
                continue;
            };
            if lt > lf && !known(from, to) {
                problems.push(format!(
                    "{from} -> {to} ({at}): {from} is in layer {lf}, {to} in layer {lt} above it"
                ));
            }
        }
    }
    let kept: Edges = edges
        .iter()
        .map(|(from, deps)| {
            let deps = deps
                .iter()
                .filter(|(to, _)| !known(from, to))
                .map(|(to, at)| (to.clone(), at.clone()))
                .collect();
            (from.clone(), deps)
        })
        .collect();
    if let Some(cycle) = find_cycle(&kept) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], kept[&w[0]][&w[1]]))
            .collect();
        problems.push(format!("a cycle: {}", steps.join(", ")));
    }
    assert!(
        problems.is_empty(),
        "module layering broken:\n  {}\n(dependencies: {})",
        problems.join("\n  "),
        describe(&edges)
    );
}

/// The names of the top-level modules: `src/x.rs` and `src/x/`, the crate root aside.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .expect("src/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            if p.is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".rs").map(str::to_owned)
            }
        })
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// For each module, the other modules it uses, each with where it was first seen.
fn edges(src: &Path, modules: &BTreeSet<String>) -> Edges {
    let mut edges = Edges::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("under src/");
        let first = rel.components().next().expect("a path").as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if !modules.contains(&module) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        let code = without_comments(&text);
        let code = code.split("#[cfg(test)]").next().unwrap_or_default();
        for (used, line) in crate_references(code) {
            if used != module && modules.contains(&used) {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(used)
                    .or_insert_with(|| format!("src/{}:{line}", rel.display()));
            }
        }
        edges.entry(module).or_default();
    }
    edges
}

/// `text` with its `//` and `/* */` comments and its string and character literals blanked
/// out (newlines kept, so lines still count).
fn without_comments(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == '"' || (c == 'r' && matches!(next, Some('"' | '#')) && is_raw(&chars, i)) {
            let end = literal_end(&chars, i);
            out.extend(chars[i..end].iter().map(|c| blank(*c)));
            i = end;
        } else if c == '\'' {
            // A character literal ('"', '\'', '\u{..}'); otherwise a lifetime.
            let end = match (next, chars.get(i + 2)) {
                (Some('\\'), _) => (i + 2..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .map_or(i + 1, |j| j + 1),
                (Some(_), Some('\'')) => i + 3,
                _ => i + 1,
            };
            out.extend(chars[i..end].iter().map(|c| blank(*c)));
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// A space, or the newline it is.
fn blank(c: char) -> char {
    if c == '\n' {
        '\n'
    } else {
        ' '
    }
}

/// Whether the `r` at `i` starts a raw string (`r"`, `r#"`), not ends an identifier.
fn is_raw(chars: &[char], i: usize) -> bool {
    let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
    !ident_before && chars.get(i + 1 + hashes) == Some(&'"')
}

/// The index just past the string literal starting at `i` (`"..."`, `r"..."`, `r#"..."#`).
fn literal_end(chars: &[char], i: usize) -> usize {
    if chars[i] == 'r' {
        let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
        let mut j = i + 2 + hashes;
        while j < chars.len() {
            if chars[j] == '"' && chars[j + 1..].iter().take(hashes).all(|c| *c == '#') {
                return (j + 1 + hashes).min(chars.len());
            }
            j += 1;
        }
        return chars.len();
    }
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '"' => return j + 1,
            _ => j += 1,
        }
    }
    chars.len()
}

/// The modules named right after `crate::` (`crate::x::...`, `crate::{x, y::z}`), with the
/// line of each.
fn crate_references(code: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = start.checked_sub(1).map(|i| bytes[i] as char);
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group).into_iter().map(|m| (m, line)));
        } else {
            found.push((identifier(rest), line));
        }
    }
    found
}

/// The first path segment of each item of a `use crate::{...}` group (`group` starts after
/// its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                heads.push(identifier(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The identifier at the start of `s`.
fn identifier(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A cycle of `edges` as a path that returns to its start, if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for to in edges.get(m).into_iter().flat_map(|deps| deps.keys()) {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

/// `module -> deps` per line, for the failure message.
fn describe(edges: &Edges) -> String {
    edges
        .iter()
        .map(|(from, deps)| {
            let deps: Vec<&str> = deps.keys().map(String::as_str).collect();
            format!("\n  {from} -> {}", deps.join(" "))
        })
        .collect()
}

#[test]
fn references_are_read_from_code_only() {
    let code = without_comments(
        "use crate::{a, b::{C, d}, e::f};\n\
         // crate::commented\n\
         /* crate::blocked */ let s = \"crate::quoted\"; let c = '\"'; crate::g::h();\n\
         let r = r#\"crate::raw\"#; fn x<'a>(y: &'a str) { crate::i::j(y) }",
    );
    let mut found: Vec<String> = crate_references(&code)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    found.sort();
    assert_eq!(found, ["a", "b", "e", "g", "i"].map(String::from));
}
