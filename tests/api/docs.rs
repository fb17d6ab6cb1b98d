//! The repository's documentation stands on its own (plain file reading, no
//! server, no network):
//!
//! - every relative link in `README.md` and `docs/*.md` resolves to a file of
//!   the repository, and its `#anchor` to a heading of that file;
//! - repository paths quoted in backticks there (`src/…`, `docs/…`, …) exist;
//! - nothing in the README, `docs/`, `config/`, `scripts/` or `src/` points
//!   at documents a clone does not have;
//! - `docs/reference.md` lists every key of `config/default.toml` and, for
//!   every operation of the OpenAPI document, exactly the statuses it
//!   documents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use utoipa::OpenApi;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `README.md` and every Markdown file under `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// A line with its inline code spans removed (links inside them are text).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

/// The inline code spans of a line.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// The anchors GitHub gives the headings of a Markdown text: lowercase,
/// punctuation other than `-` and `_` dropped, spaces to `-`; a repeated
/// heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(heading) = line
            .strip_prefix('#')
            .map(|h| h.trim_start_matches('#'))
            .filter(|h| h.starts_with(' '))
        else {
            continue;
        };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links (`[text](target)`) of a Markdown text.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].trim();
            // `[text](target "title")`
            let target = target.split_whitespace().next().unwrap_or("");
            targets.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

#[test]
fn every_relative_link_in_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let name = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("parent").join(path)
            };
            if !resolved.exists() {
                broken.push(format!(
                    "{name}: ({target}): no file {}",
                    resolved.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = resolved.extension().is_some_and(|e| e == "md");
                if is_markdown && !anchors(&read(&resolved)).contains(anchor) {
                    broken.push(format!("{name}: ({target}): no heading #{anchor}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 20, "only {checked} relative links found");
}

/// Repository paths quoted as code (`src/outbox/mod.rs`, `docs/alerts.yml`) in the
/// README and `docs/` exist (placeholders such as `{id}` or `NAME` and
/// globs are skipped).
#[test]
fn repository_paths_named_in_readme_and_docs_exist() {
    const TOP: [&str; 8] = [
        "src/",
        "docs/",
        "config/",
        "scripts/",
        "tests/",
        "migrations/",
        "benches/",
        ".ci/",
    ];
    let mut missing = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        let name = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for line in prose_lines(&text) {
            for span in code_spans(line) {
                let path = span.split("::").next().unwrap_or(span).trim();
                let is_path = TOP.iter().any(|t| path.starts_with(t))
                    && !path.contains(|c: char| c.is_whitespace() || "{}*…<>".contains(c))
                    && !path.contains("NAME");
                if is_path && !root().join(path).exists() {
                    missing.push(format!("{name}: `{span}`"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}

/// Nothing in the repository's prose points at the design documents a clone
/// does not have.
#[test]
fn nothing_points_at_documents_outside_the_repository() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "config", "scripts", "src"] {
        walk(&root().join(dir), &mut files);
    }
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let words = line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            if words.into_iter().any(|w| w == "SPEC" || w == "DESIGN") {
                let name = file
                    .strip_prefix(root())
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                found.push(format!("{name}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to SPEC / DESIGN documents, which are not in the repository \
         (point at docs/reference.md or another docs/ page instead):\n{}",
        found.join("\n")
    );
}

/// Every key of `config/default.toml`, dotted (`server.bind`).
fn default_keys() -> Vec<String> {
    fn flatten(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let text = read(&root().join("config/default.toml"));
    let value: Value = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .expect("config/default.toml parses")
        .try_deserialize()
        .expect("as JSON");
    let mut keys = Vec::new();
    flatten("", &value, &mut keys);
    keys
}

#[test]
fn the_reference_lists_every_configuration_key() {
    let reference = read(&root().join("docs/reference.md"));
    let keys = default_keys();
    assert!(keys.len() > 50, "{} keys", keys.len());
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md lacks these keys of config/default.toml (run \
         `python3 scripts/config_reference.py`): {missing:?}"
    );
}

/// `docs/reference.md`'s status tables: `### \`VERB /path\`` → the first
/// column of the table that follows.
fn reference_statuses() -> BTreeMap<(String, String), BTreeSet<String>> {
    let reference = read(&root().join("docs/reference.md"));
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in prose_lines(&reference) {
        if line.starts_with('#') {
            current = line
                .strip_prefix("### `")
                .and_then(|h| h.strip_suffix('`'))
                .and_then(|h| h.split_once(' '))
                .filter(|(verb, path)| {
                    verb.chars().all(|c| c.is_ascii_uppercase()) && path.starts_with('/')
                })
                .map(|(verb, path)| (verb.to_owned(), path.to_owned()));
            if let Some(key) = &current {
                out.entry(key.clone()).or_default();
            }
            continue;
        }
        let Some(key) = &current else { continue };
        let Some(first) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
            continue;
        };
        let first = first.trim();
        if first.len() == 3
            && first.starts_with(|c: char| c.is_ascii_digit())
            && first[1..].chars().all(|c| c.is_ascii_digit() || c == 'X')
        {
            out.get_mut(key).expect("section").insert(first.to_owned());
        }
    }
    out
}

#[test]
fn the_reference_documents_every_status_of_every_route() {
    let doc =
        serde_json::to_value(hookrelay::startup::openapi::ApiDoc::openapi()).expect("openapi");
    let mut documented: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (verb, op) in item.as_object().expect("path item") {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            documented.insert(
                (verb.to_uppercase(), path.clone()),
                responses.keys().cloned().collect(),
            );
        }
    }
    let reference = reference_statuses();
    let mut problems = Vec::new();
    for (route, statuses) in &documented {
        match reference.get(route) {
            None => problems.push(format!("{} {}: no section", route.0, route.1)),
            Some(listed) if listed != statuses => problems.push(format!(
                "{} {}: OpenAPI documents {statuses:?}, the reference lists {listed:?}",
                route.0, route.1
            )),
            Some(_) => {}
        }
    }
    for route in reference.keys().filter(|r| !documented.contains_key(*r)) {
        problems.push(format!(
            "{} {}: not an operation of the API",
            route.0, route.1
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/reference.md \"HTTP API\" vs /openapi.json:\n{}",
        problems.join("\n")
    );
}
