//! The committed configuration reference is what the config types' doc comments give.

use sentinel_config_doc::{COMMAND, OUTPUT, diff_summary, generate, workspace_root};

#[test]
fn configuration_reference_is_up_to_date() {
    let root = workspace_root();
    let generated = match generate(&root) {
        Ok(text) => text,
        Err(e) => panic!("cannot generate {OUTPUT} (fix the config types' doc comments):\n{e}"),
    };
    let committed = std::fs::read_to_string(root.join(OUTPUT)).unwrap_or_default();
    assert!(
        committed == generated,
        "{OUTPUT} is out of date: run `{COMMAND}` and commit the result.\n{}",
        diff_summary(&committed, &generated)
    );
}
