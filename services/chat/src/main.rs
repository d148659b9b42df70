//! chatd: the chat services (auth, groups, dms, servers) in one binary; its configuration
//! names the services it runs.
//!
//! The services themselves are tracked in issue #3; this entry point already holds the
//! contract the operator relies on: configuration from `CHATD_*` variables (or flags), and a
//! refusal to start without a service list.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// A chat service chatd can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Service {
    Auth,
    Groups,
    Dms,
    Servers,
}

#[derive(Parser, Debug)]
#[command(version, about = "ChatCluster chat services")]
struct Config {
    /// Services to run, comma-separated: auth, groups, dms, servers.
    #[arg(long, env = "CHATD_SERVICES", value_delimiter = ',')]
    services: Vec<Service>,
}

fn main() -> ExitCode {
    let config = Config::parse();
    if config.services.is_empty() {
        eprintln!(
            "chatd: no service to run: set CHATD_SERVICES (or --services) to one or more of auth, groups, dms, servers"
        );
        return ExitCode::from(2);
    }
    eprintln!(
        "chatd: configured for {:?}, but this build does not contain the chat services yet",
        config.services
    );
    ExitCode::FAILURE
}
