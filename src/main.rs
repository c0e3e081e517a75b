//! The `comet-quotes` binary: parse the configuration, set up the runtime, serve until signalled.

use std::io::Write;

use clap::Parser;
use comet_quotes::config::Cli;
use comet_quotes::server::{configure_runtime, Server};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,may=warn"))
        .init();
    let config = match Cli::parse().into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if config.publish_token_generated {
        if let Some(token) = &config.publish_token {
            // Once, on stderr whatever RUST_LOG says: without it nobody could publish. Pasted
            // into a shell, the line also makes a restart there keep the same token.
            eprintln!(
                "comet-quotes: publishing needs a credential and none was configured; this run's \
                 publish token (send it as Authorization: Bearer, or choose your own with \
                 --publish-token):\n    export COMET_PUBLISH_TOKEN={token}"
            );
        }
    }
    configure_runtime(&config);
    // Register before serving, so a signal that arrives during start-up is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: cannot start the server: {e}");
            std::process::exit(1);
        }
    };
    // Tests and scripts read this line to learn the port (with --listen 127.0.0.1:0).
    println!("comet-quotes listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();

    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: answering waiting polls, then exiting");
        let clean = server.shutdown();
        if !clean {
            log::warn!("shutdown grace elapsed with answers still in flight");
        }
    }
    std::process::exit(0);
}
