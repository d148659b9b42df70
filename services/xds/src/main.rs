//! chat-xds: the Envoy control plane of a ChatCluster (tracked in issue #4).
//!
//! The operator already deploys it with the configuration it will read: `CHAT_XDS_CONFIG`
//! points at the file the operator writes (see `chat_operator::build::XdsConfig`).

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "ChatCluster xDS control plane for Envoy")]
struct Config {
    /// The configuration file written by the operator.
    #[arg(long, env = "CHAT_XDS_CONFIG")]
    config: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let config = Config::parse();
    eprintln!(
        "chat-xds: configuration {:?}, but this build does not contain the control plane yet",
        config.config
    );
    ExitCode::FAILURE
}
