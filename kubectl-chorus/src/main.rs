//! `kubectl-chorus`: see the library docs. Install with
//! `cargo install --path kubectl-chorus`; kubectl finds it on `PATH` as
//! `kubectl chorus`.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use kubectl_chorus::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kubectl-chorus: no cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(client, &cli).await {
        Ok(text) => {
            // A CLI prints its product on stdout.
            let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kubectl-chorus: {e}");
            ExitCode::FAILURE
        }
    }
}
