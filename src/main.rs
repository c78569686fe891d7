use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use svclb::cli::{Cli, Command};
use svclb::commands;

/// clap's multi-line errors folded into one line that still says what to do.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    let text = parts.join("; ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("error: {text}; see 'kubectl svclb --help'")
}

fn main() -> ExitCode {
    // Like any Unix filter: `kubectl svclb ... | head` ends quietly on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Spread { args, kube } => commands::spread::run(args, &kube),
        Command::Affinity { args, kube } => commands::affinity::run(args, &kube),
        Command::Disruption { args, kube } => commands::disruption::run(args, &kube),
        Command::Zones { args, kube } => commands::zones::run(args, &kube),
        Command::Matrix { args, kube } => commands::matrix::run(args, &kube),
        Command::Deploy { args, kube } => commands::cluster::deploy(args, &kube),
        Command::Status { args, kube } => commands::cluster::status(args, &kube),
        Command::Cleanup { args, kube } => commands::cluster::cleanup(args, &kube),
        Command::Manifests { args, kube } => commands::cluster::manifests(args, &kube),
        Command::Completion(args) => commands::completion::run(args, Cli::command()),
        Command::Complete(args) => commands::completion::complete(args, Cli::command()),
        Command::Compare(args) => commands::compare::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Agent(args) => commands::agent::run(args),
        Command::Lab { cmd } => commands::lab::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", msg.join(": "));
            ExitCode::from(2)
        }
    }
}
