//! The `chat-runtime` binary: `serve` (default) or `migrate`.

use std::process::ExitCode;

use chat_runtime::{
    config::{Cli, Command},
    server::{self, Server},
    telemetry,
};
use clap::Parser;

/// How long the last spans may take to export at exit.
const TRACE_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Migrate(args)) => {
            let _telemetry = telemetry::init(&args.log_level, &[], false);
            let Some(url) = args.database_url.filter(|u| !u.is_empty()) else {
                eprintln!(
                    "CHAT_DATABASE_URL: is required: set it to postgres://user:password@host:5432/db"
                );
                return ExitCode::from(2);
            };
            match server::migrate(&url).await {
                Ok(_) => {
                    tracing::info!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "migrate failed");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Serve(args)) => serve(*args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: chat_runtime::config::ServeArgs) -> ExitCode {
    let level = args.log_level.clone();
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            // One clear line, before logging is even set up.
            eprintln!("chat-runtime: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(
        &level,
        &[("tenant", &config.tenant_id), ("pod", &config.pod_name)],
        true,
    );
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            // One clear line, like a configuration error.
            eprintln!("chat-runtime: start-up failed: {e}");
            telemetry.shutdown(TRACE_FLUSH).await;
            return ExitCode::FAILURE;
        }
    };
    wait_for_sigterm().await;
    server.drain().await;
    // The spans of the drain's last sends go out before the process ends.
    telemetry.shutdown(TRACE_FLUSH).await;
    ExitCode::SUCCESS
}

async fn wait_for_sigterm() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
