//! The audit's output: text for people, JSON for machines.

use super::Report;

/// Human-readable lines: one per finding, each followed by its fix; then a summary line.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in &report.findings {
        let _ = writeln!(
            out,
            "{}: {} (user {}, database {}): {}",
            f.code, f.object, f.user, f.database, f.problem
        );
        let _ = writeln!(out, "    fix: {}", f.fix);
    }
    let logins: Vec<String> = report
        .audited
        .iter()
        .map(|a| format!("{} as {} on {}", a.user, a.server_user, a.database))
        .collect();
    let n = report.findings.len();
    let _ = writeln!(
        out,
        "{} in {}",
        match n {
            0 => "no findings".to_owned(),
            1 => "1 finding".to_owned(),
            n => format!("{n} findings"),
        },
        logins.join(", ")
    );
    out
}

/// The report as JSON: `{"audited": [...], "findings": [...]}`.
pub fn render_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
