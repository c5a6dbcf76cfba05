use clap::Parser;
use lb_userspace::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent(_) | Command::Monitor(_)) {
        // The inspection commands are piped into head and grep: a closed pipe
        // ends them quietly, as it does any Unix filter. The monitor sees
        // the closed pipe as an error instead, and clears its lease first.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Agent(args) => lb_userspace::agent::run(*args),
        Command::Services(args) => lb_userspace::inspect::services(&args),
        Command::Flows(args) => lb_userspace::inspect::flows(&args),
        Command::Explain(args) => lb_userspace::inspect::explain(&args),
        Command::Stats(args) => lb_userspace::inspect::stats(&args),
        Command::Monitor(args) => lb_userspace::monitor::run(&args),
    }
}
