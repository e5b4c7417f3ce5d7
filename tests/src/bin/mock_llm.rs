//! The mock LLM provider as a process, for tests in other languages (the Python SDK suites).
//!
//! `mock_llm [--port N] [--openai-key K] [--anthropic-key K]` prints exactly one line,
//! `PORT <n>`, once it is listening, then serves until killed. Tests inspect it over HTTP at
//! `/_mock/requests`, `/_mock/usage`, `/_mock/clear` and `/_mock/defaults`.

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
use sentinel_tests::mock_llm::{Keys, MockLlm};

const USAGE: &str = "usage: mock_llm [--port N] [--openai-key K] [--anthropic-key K]";

#[tokio::main]
async fn main() -> Result<()> {
    let (port, keys) = parse_args(std::env::args().skip(1))?;
    let mock = MockLlm::start_on(port, keys)
        .await
        .with_context(|| format!("mock_llm: bind 127.0.0.1:{port}"))?;
    {
        // The one line the parent process waits for.
        #[allow(clippy::print_stdout)]
        {
            println!("PORT {}", mock.port());
        }
        std::io::stdout()
            .flush()
            .context("mock_llm: flush stdout")?;
    }
    std::future::pending::<()>().await;
    drop(mock);
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(u16, Keys)> {
    let mut port = 0;
    let mut keys = Keys::default();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            eprintln!("{USAGE}");
            std::process::exit(0);
        }
        let Some(value) = args.next() else {
            bail!("{flag} needs a value\n{USAGE}");
        };
        match flag.as_str() {
            "--port" => port = value.parse().with_context(|| format!("--port {value}"))?,
            "--openai-key" => keys.openai = value,
            "--anthropic-key" => keys.anthropic = value,
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    Ok((port, keys))
}
