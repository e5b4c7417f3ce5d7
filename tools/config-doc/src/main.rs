//! `cargo run -p sentinel-config-doc`: rewrites docs/configuration.md from the config types'
//! doc comments. With `--check`, writes nothing and exits non-zero, with a summary of the
//! difference, when the committed file is not what the sources give.

// A command-line tool: its output is for the terminal.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use sentinel_config_doc::{COMMAND, OUTPUT, diff_summary, generate, workspace_root};

fn main() -> ExitCode {
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: {COMMAND} [-- --check]");
                println!("Rewrites {OUTPUT} from the doc comments of proxy/src/config/;");
                println!("with --check, only says whether it is up to date.");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let root = workspace_root();
    let generated = match generate(&root) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot generate {OUTPUT}:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let path = root.join(OUTPUT);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if check {
        if committed == generated {
            println!("{OUTPUT} is up to date");
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "{OUTPUT} is out of date: run `{COMMAND}`\n{}",
            diff_summary(&committed, &generated)
        );
        return ExitCode::FAILURE;
    }
    if committed == generated {
        println!("{OUTPUT} is up to date");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = std::fs::write(&path, &generated) {
        eprintln!("cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {OUTPUT}");
    ExitCode::SUCCESS
}
