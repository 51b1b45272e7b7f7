//! paddock: the admin CLI. Parses arguments and runs one command; see `paddock --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use paddock_cli::bench::BenchCommand;
use paddock_cli::commands::certs::CertsCommand;
use paddock_cli::commands::cluster::ClusterCommand;
use paddock_cli::commands::dev::DevCommand;
use paddock_cli::commands::kv::KvCommand;
use paddock_cli::commands::node::NodeCommand;
use paddock_cli::commands::{self, Global};
use paddock_cli::output::{parse_duration, Failure, Output};

/// paddock — admin CLI of Paddock, the VM cluster manager. Talks to any node.
#[derive(Debug, Parser)]
#[command(name = "paddock", version)]
struct Cli {
    /// Node to talk to, host:port; repeat or comma-separate to give several (tried in turn).
    #[arg(long, global = true, env = "PADDOCK_ENDPOINT", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Directory with ca.crt and the user's NAME.crt/NAME.key.
    #[arg(long, global = true, env = "PADDOCK_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Whose certificate to use (NAME.crt in --certs-dir).
    #[arg(long, global = true, env = "PADDOCK_USER", default_value = "admin")]
    user: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
    /// How long to keep trying the endpoints before giving up.
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster CA, node and client certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The cluster key/value space.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Nodes: inventory, cordon, membership.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(paddock_cli::commands::vm::VmCommand),
    /// Disk images: import once, every node keeps a verified copy.
    #[command(subcommand)]
    Image(paddock_cli::commands::image::ImageCommand),
    /// Live migrations: list, show, watch, cancel.
    #[command(subcommand)]
    Migration(paddock_cli::commands::migration::MigrationCommand),
    /// API tokens for the HTTPS API and the dashboard (admin).
    #[command(subcommand)]
    Token(paddock_cli::commands::token::TokenCommand),
    /// The cluster's event log (--follow to stream it).
    Events(paddock_cli::commands::events::EventsArgs),
    /// Custom roles: what they allow.
    #[command(subcommand)]
    Role(paddock_cli::commands::access::RoleCommand),
    /// Users (certificate names) and the roles bound to them.
    #[command(subcommand)]
    User(paddock_cli::commands::access::UserCommand),
    /// Who you are to the cluster, and what you may do.
    Whoami,
    /// Explain a permission decision.
    #[command(subcommand)]
    Auth(paddock_cli::commands::access::AuthCommand),
    /// The audit log: list, verify the hash chain across nodes.
    #[command(subcommand)]
    Audit(paddock_cli::commands::audit::AuditCommand),
    /// A local cluster on this machine.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Benchmarks on a fresh local cluster.
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let global = Global {
        endpoints: cli.endpoint,
        certs_dir: cli.certs_dir,
        user: cli.user,
        output: cli.output,
        timeout: cli.timeout,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("paddock: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Failure> = runtime.block_on(async {
        match cli.command {
            Command::Certs(c) => commands::certs::run(c),
            Command::Cluster(c) => commands::cluster::run(c, &global).await,
            Command::Kv(c) => commands::kv::run(c, &global).await,
            Command::Node(c) => commands::node::run(c, &global).await,
            Command::Vm(c) => commands::vm::run(c, &global).await,
            Command::Migration(c) => commands::migration::run(c, &global).await,
            Command::Image(c) => commands::image::run(c, &global).await,
            Command::Token(c) => commands::token::run(c, &global).await,
            Command::Events(a) => commands::events::run(a, &global).await,
            Command::Role(c) => commands::access::role(c, &global).await,
            Command::User(c) => commands::access::user(c, &global).await,
            Command::Whoami => commands::access::whoami(&global).await,
            Command::Auth(c) => commands::access::auth(c, &global).await,
            Command::Audit(c) => commands::audit::run(c, &global).await,
            Command::Dev(c) => commands::dev::run(c).await,
            Command::Bench(c) => paddock_cli::bench::run(c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("paddock: error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
