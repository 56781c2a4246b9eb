//! Committed expected outcomes: a tab-separated file whose rows are `key columns → value
//! columns`, compared row by row with what a run produced, every difference printed. A new
//! refusal, error, reroute or row is a failure until the file is changed on purpose:
//!
//! ```text
//! TCH_JACOBIAN_BLESS=1 cargo test --test second_order     # rewrites the rows the run covers
//! ```
//!
//! Shared by the CI subsets (tests/second_order.rs, tests/third_order.rs, tests/taylor_opinfo.rs)
//! and the full sweeps (bench's `second_order_sweep`, `third_order_sweep`, `--expect FILE`,
//! `--bless`). Lines starting with `#` are comments (kept at the top when blessing); the first
//! other line is the header.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// The environment variable that turns a comparison into a rewrite.
pub const BLESS_VAR: &str = "TCH_JACOBIAN_BLESS";

/// Whether `TCH_JACOBIAN_BLESS` is set to anything but `0` or empty.
pub fn blessing() -> bool {
    std::env::var(BLESS_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// One table: the header, how many leading columns are the key, the rows by key. Columns after
/// `compared` (if any) are notes: written, never compared.
#[derive(Debug, Clone)]
pub struct Table {
    pub header: Vec<String>,
    pub key_len: usize,
    pub compared: usize,
    pub rows: BTreeMap<Vec<String>, Vec<String>>,
}

impl Table {
    /// An empty table with `header`; its first `key_len` columns are the key, the columns up to
    /// `compared` are compared, the rest are notes.
    pub fn new(header: &[&str], key_len: usize, compared: usize) -> Table {
        assert!(key_len <= compared && compared <= header.len());
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            key_len,
            compared,
            rows: BTreeMap::new(),
        }
    }

    /// Adds a row (`header.len()` fields; tabs and newlines in them become spaces). A key seen
    /// twice is a bug of the caller.
    pub fn push(&mut self, fields: Vec<String>) {
        assert_eq!(fields.len(), self.header.len(), "{fields:?}");
        let fields: Vec<String> = fields
            .into_iter()
            .map(|f| f.replace(['\t', '\n', '\r'], " "))
            .collect();
        let key = fields[..self.key_len].to_vec();
        let value = fields[self.key_len..].to_vec();
        if let Some(old) = self.rows.insert(key.clone(), value) {
            panic!("row {key:?} twice (first {old:?})");
        }
    }

    fn compared_value<'a>(&self, v: &'a [String]) -> &'a [String] {
        &v[..self.compared - self.key_len]
    }
}

fn read(path: &Path, like: &Table) -> (Vec<String>, Table) {
    let mut table = Table {
        rows: BTreeMap::new(),
        ..like.clone()
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return (Vec::new(), table);
    };
    let mut comments = Vec::new();
    let mut header_seen = false;
    for line in text.lines() {
        if line.starts_with('#') {
            if !header_seen {
                comments.push(line.to_string());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<String> = line.split('\t').map(str::to_string).collect();
        if !header_seen {
            header_seen = true;
            assert_eq!(
                f,
                like.header,
                "{}: the header is not {:?}; bless the file again",
                path.display(),
                like.header
            );
            continue;
        }
        assert_eq!(
            f.len(),
            like.header.len(),
            "{}: a row of {} fields: {line:?}",
            path.display(),
            f.len()
        );
        table
            .rows
            .insert(f[..like.key_len].to_vec(), f[like.key_len..].to_vec());
    }
    (comments, table)
}

static WRITE: Mutex<()> = Mutex::new(());

/// Compares the rows of `actual` with those of the committed file at `path` whose key
/// satisfies `in_scope` (the rows this run covers); `Err` lists every difference (row changed,
/// row new, row missing). With `TCH_JACOBIAN_BLESS` set, rewrites those rows of the file instead
/// (keeping the others and the leading comment lines, or `comment` for a new file) and returns
/// `Ok`. The `what` names the run in messages.
pub fn check(
    path: &Path,
    comment: &str,
    actual: &Table,
    in_scope: impl Fn(&[String]) -> bool,
    what: &str,
) -> Result<(), String> {
    check_or_bless(path, comment, actual, in_scope, what, blessing())
}

/// [`check`], blessing when `bless` (the full sweeps' `--bless`).
pub fn check_or_bless(
    path: &Path,
    comment: &str,
    actual: &Table,
    in_scope: impl Fn(&[String]) -> bool,
    what: &str,
    bless: bool,
) -> Result<(), String> {
    let _guard = WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let (comments, committed) = read(path, actual);
    if bless {
        let mut table = committed;
        table.rows.retain(|k, _| !in_scope(k));
        for (k, v) in &actual.rows {
            table.rows.insert(k.clone(), v.clone());
        }
        let mut out = String::new();
        if comments.is_empty() {
            for l in comment.lines() {
                out += &format!("# {l}\n");
            }
        } else {
            for l in &comments {
                out += l;
                out.push('\n');
            }
        }
        out += &table.header.join("\t");
        out.push('\n');
        for (k, v) in &table.rows {
            out += &k.iter().chain(v).cloned().collect::<Vec<_>>().join("\t");
            out.push('\n');
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "{what}: blessing: wrote {} rows of {}",
            actual.rows.len(),
            path.display()
        );
        return Ok(());
    }
    if !path.exists() {
        return Err(format!(
            "{what}: no expected outcomes at {}; bless ({BLESS_VAR}=1, or the sweeps' --bless) to \
             write them, then review and commit the file",
            path.display()
        ));
    }
    let expected: BTreeMap<&Vec<String>, &Vec<String>> =
        committed.rows.iter().filter(|(k, _)| in_scope(k)).collect();
    let cols = &actual.header[actual.key_len..actual.compared];
    let show = |v: &[String]| -> String {
        cols.iter()
            .zip(v)
            .map(|(c, x)| format!("{c}={x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut diffs = Vec::new();
    for (k, v) in &actual.rows {
        match expected.get(k) {
            None => diffs.push(format!("  new      {}: {}", k.join(" "), show(v))),
            Some(e) if actual.compared_value(e) != actual.compared_value(v) => diffs.push(format!(
                "  changed  {}: expected {}, got {}{}",
                k.join(" "),
                show(actual.compared_value(e)),
                show(actual.compared_value(v)),
                match v.get(actual.compared - actual.key_len..) {
                    Some(notes) if notes.iter().any(|n| !n.is_empty() && n != "-") =>
                        format!(" ({})", notes.join(" ")),
                    _ => String::new(),
                }
            )),
            Some(_) => {}
        }
    }
    for (k, v) in &expected {
        if !actual.rows.contains_key(*k) {
            diffs.push(format!("  missing  {}: expected {}", k.join(" "), show(v)));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: {} of {} rows differ from {} (a change on purpose: bless with {BLESS_VAR}=1, or \
         the sweeps' --bless, and commit the file):\n{}",
        diffs.len(),
        actual.rows.len().max(expected.len()),
        path.display(),
        diffs.join("\n")
    ))
}
