//! `audience`: parse, run, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use audience::cli::{Cli, LogFormat, dispatch};

fn main() -> ExitCode {
    audience::engine::limit_malloc_arenas();
    let cli = Cli::parse();
    let only_prints = cli.command.only_prints();
    if only_prints {
        audience::engine::end_on_closed_output();
    }
    let default_filter = if cli.quiet {
        "warn"
    } else {
        "warn,audience=info"
    };
    let filter =
        EnvFilter::try_from_env("AUDIENCE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        if only_prints {
            // Nothing to record or release: SIGINT or SIGTERM ends the
            // command at once, once its temporary files are removed.
            if let Err(e) = audience::cli::exit_on_signal() {
                tracing::warn!(error = %e, "no signal handlers");
            }
        }
        dispatch(cli).await
    });
    // An interrupted run may leave a stage's work running; its result is no
    // longer wanted: tasks stop at their next await, and blocking work is
    // given a moment before the process exits without it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    #[cfg(feature = "distributed")]
    audience::engine::cluster::remove_shuffle_dirs();
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            let mut shown = err.to_string();
            eprintln!("error: {shown}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                // Causes already quoted in the message above are not repeated.
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown.push_str(&text);
                }
                source = s.source();
            }
            ExitCode::from(err.exit_code() as u8)
        }
    }
}
