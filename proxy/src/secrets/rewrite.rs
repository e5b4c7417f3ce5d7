//! Re-sealing a config file in place: a text edit of the `sealed:v1:…` strings only, so comments,
//! ordering and formatting stay exactly as the operator wrote them.

/// One sealed value to replace: the old text, the new text, and the field (for messages).
pub struct Replacement<'a> {
    pub old: &'a str,
    pub new: &'a str,
    pub field: &'a str,
}

/// `text` with every quoted occurrence of each `old` value replaced by its `new` value. Each old
/// value must occur at least once, and only as a whole TOML string (`"…"` or `'…'`): anything
/// else (an escaped or multi-line string) is refused rather than guessed at.
pub fn replace_sealed(text: &str, replacements: &[Replacement<'_>]) -> Result<String, String> {
    let mut out = text.to_owned();
    for r in replacements {
        if r.old.is_empty() || r.old.contains(['"', '\'', '\\', '\n']) {
            return Err(format!("{}: not a plain sealed value", r.field));
        }
        let mut edited = String::with_capacity(out.len() + r.new.len());
        let mut rest = out.as_str();
        let mut found = 0usize;
        while let Some(at) = rest.find(r.old) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + r.old.len()..].chars().next();
            let quoted = matches!(
                (before, after),
                (Some('"'), Some('"')) | (Some('\''), Some('\''))
            );
            edited.push_str(&rest[..at]);
            if quoted {
                edited.push_str(r.new);
                found += 1;
            } else {
                edited.push_str(r.old);
            }
            rest = &rest[at + r.old.len()..];
        }
        edited.push_str(rest);
        if found == 0 {
            return Err(format!(
                "{}: its value is not written as a plain quoted string in the file, so it cannot \
                 be re-sealed in place; write it as `\"sealed:v1:…\"` on one line",
                r.field
            ));
        }
        out = edited;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replaces_quoted_values_and_keeps_everything_else() {
        let text = "# top comment\n[[postgres.users]]\nname = \"app\"   # trailing\n\
                    server_password_sealed = \"sealed:v1:k1:AAA\"  # sealed\n\
                    [[postgres.users]]\nname = 'b'\nserver_password_sealed='sealed:v1:k1:BBB'\n";
        let out = replace_sealed(
            text,
            &[
                Replacement {
                    old: "sealed:v1:k1:AAA",
                    new: "sealed:v1:k2:CCC",
                    field: "a",
                },
                Replacement {
                    old: "sealed:v1:k1:BBB",
                    new: "sealed:v1:k2:DDD",
                    field: "b",
                },
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "# top comment\n[[postgres.users]]\nname = \"app\"   # trailing\n\
             server_password_sealed = \"sealed:v1:k2:CCC\"  # sealed\n\
             [[postgres.users]]\nname = 'b'\nserver_password_sealed='sealed:v1:k2:DDD'\n"
        );
    }

    #[test]
    fn unquoted_or_prefix_occurrences_are_left_alone() {
        // A longer value that starts with the old one is not the old one.
        let text = "a = \"sealed:v1:k1:AAAB\"\nb = \"sealed:v1:k1:AAA\"\n# sealed:v1:k1:AAA\n";
        let out = replace_sealed(
            text,
            &[Replacement {
                old: "sealed:v1:k1:AAA",
                new: "sealed:v1:k2:X",
                field: "b",
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            "a = \"sealed:v1:k1:AAAB\"\nb = \"sealed:v1:k2:X\"\n# sealed:v1:k1:AAA\n"
        );
    }

    #[test]
    fn a_value_that_is_not_found_is_an_error_naming_the_field() {
        let err = replace_sealed(
            "a = \"\"\"sealed:v1:k1:\\\nAAA\"\"\"\n",
            &[Replacement {
                old: "sealed:v1:k1:AAA",
                new: "x",
                field: "postgres.users[0].server_password_sealed",
            }],
        )
        .unwrap_err();
        assert!(
            err.starts_with("postgres.users[0].server_password_sealed:"),
            "{err}"
        );
    }
}
