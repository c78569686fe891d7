//! The agents of one run: started at their sources through the backend, their JSON lines merged
//! into one stream (each tagged with its agent), stopped together, and their ends collected.

use anyhow::{Result, bail};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::agent::{Output, Request};
use crate::backend::{Backend, Source};

/// What one line of an agent said.
pub type Line = Result<Output, String>;

/// Running agents.
pub struct AgentSet {
    pub sources: Vec<Source>,
    lines: mpsc::UnboundedReceiver<(usize, Line)>,
    interrupts: Vec<Box<dyn Fn() + Send + Sync>>,
    /// Per agent: resolves to the last line of its stderr once it has exited.
    ended: Vec<JoinHandle<String>>,
}

impl AgentSet {
    /// Starts one agent per `(source, request)`.
    pub fn start<B: Backend>(backend: &B, jobs: Vec<(Source, Request)>) -> Result<AgentSet> {
        let (tx, lines) = mpsc::unbounded_channel();
        let mut set = AgentSet {
            sources: Vec::new(),
            lines,
            interrupts: Vec::new(),
            ended: Vec::new(),
        };
        for (i, (source, request)) in jobs.into_iter().enumerate() {
            let stream = match backend.start_agent(&source, &request) {
                Ok(s) => s,
                Err(e) => {
                    set.interrupt();
                    return Err(e);
                }
            };
            let tx = tx.clone();
            let mut reader = tokio::io::BufReader::new(stream.stdout).lines();
            let ended = stream.ended;
            set.ended.push(tokio::spawn(async move {
                loop {
                    match reader.next_line().await {
                        Ok(Some(l)) if l.trim().is_empty() => {}
                        Ok(Some(l)) => {
                            let line = serde_json::from_str::<Output>(&l)
                                .map_err(|e| format!("unexpected agent output ({e}): {l}"));
                            let _ = tx.send((i, line));
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send((i, Err(format!("reading the agent's output: {e}"))));
                            break;
                        }
                    }
                }
                ended.await
            }));
            set.interrupts.push(stream.interrupt);
            set.sources.push(source);
        }
        Ok(set)
    }

    /// The next line of any agent, with its index in `sources`; `None` once every agent's output
    /// has ended.
    pub async fn next(&mut self) -> Option<(usize, Line)> {
        self.lines.recv().await
    }

    /// Asks every agent to stop (a line `stop` on its stdin); each then reports what it measured.
    pub fn interrupt(&self) {
        for i in &self.interrupts {
            i();
        }
    }

    /// Waits for every agent to exit: the last line of each one's stderr (why it failed, if it did).
    pub async fn finish(self) -> Vec<String> {
        let mut out = Vec::new();
        for h in self.ended {
            out.push(h.await.unwrap_or_else(|e| format!("agent task failed: {e}")));
        }
        out
    }
}

/// The error for an agent that ended without its result.
pub fn no_result(source: &Source, last: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the agent in {} ended without a result: {}",
        source.name,
        if last.is_empty() { "no output" } else { last }
    )
}

/// Fails on a line an agent should not have printed.
pub fn check(source: &Source, line: Line) -> Result<Output> {
    match line {
        Ok(o) => Ok(o),
        Err(e) => bail!("the agent in {}: {e}", source.name),
    }
}
