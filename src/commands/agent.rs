//! `kubectl-svclb agent --request JSON` (hidden): the agent a run starts at each source. It runs
//! the request, prints JSON lines, and stops early on a line `stop` on stdin or on SIGINT/SIGTERM.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::run::{self, interrupt};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The request, as JSON (built by the run that starts the agent).
    #[arg(long, value_name = "JSON")]
    pub request: String,
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    let request = crate::agent::parse(&args.request)?;
    run::raise_nofile();
    let rt = run::runtime(0)?;
    rt.block_on(async {
        let stop = async {
            tokio::select! {
                () = interrupt::shutdown_signal() => {}
                () = interrupt::stdin_stop() => {}
            }
        };
        crate::agent::run(request, stop, &mut tokio::io::stdout()).await
    })?;
    // The runtime goes first: UDP session threads end with the run, nothing else may linger.
    drop(rt);
    Ok(ExitCode::SUCCESS)
}
