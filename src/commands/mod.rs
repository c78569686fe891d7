//! One module per subcommand: parse → engine → report.

pub mod lab;
