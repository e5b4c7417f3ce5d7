//! A short line diff, to say how a committed file differs from the generated one.

/// Lines shown at most.
const MAX_LINES: usize = 40;

/// `-`/`+` lines (with their line numbers in the committed and the generated text) of a longest
/// common subsequence diff, the first `MAX_LINES` of them, after a count.
pub fn diff_summary(committed: &str, generated: &str) -> String {
    let old: Vec<&str> = committed.lines().collect();
    let new: Vec<&str> = generated.lines().collect();
    // lcs[i][j]: common lines of old[i..] and new[j..].
    let mut lcs = vec![vec![0u32; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            i += 1;
            j += 1;
        } else if i < old.len() && (j == new.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(format!("-{:>5} | {}", i + 1, old[i]));
            i += 1;
        } else {
            lines.push(format!("+{:>5} | {}", j + 1, new[j]));
            j += 1;
        }
    }
    if lines.is_empty() {
        return if committed == generated {
            "no difference".to_owned()
        } else {
            "the files differ in line endings or the final newline only".to_owned()
        };
    }
    let removed = lines.iter().filter(|l| l.starts_with('-')).count();
    let added = lines.len() - removed;
    let mut out = format!(
        "{removed} line(s) of the committed file are not generated (-), {added} generated line(s) \
         are missing from it (+):\n"
    );
    for line in lines.iter().take(MAX_LINES) {
        out.push_str(line);
        out.push('\n');
    }
    if lines.len() > MAX_LINES {
        out.push_str(&format!("… and {} more\n", lines.len() - MAX_LINES));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_changed_lines_with_numbers() {
        let summary = diff_summary("a\nb\nc\n", "a\nB\nc\nd\n");
        assert!(summary.contains("-    2 | b"), "{summary}");
        assert!(summary.contains("+    2 | B"), "{summary}");
        assert!(summary.contains("+    4 | d"), "{summary}");
        assert!(!summary.contains("| a"), "{summary}");
        assert_eq!(diff_summary("a\n", "a\n"), "no difference");
    }
}
