//! `fulcrum`: the command line. It parses arguments and calls into the crates that do the work;
//! nothing else lives here.

mod cli;

use clap::Parser as _;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => cli::exit_on_usage_error(e),
    };
    cli::init_logging(&cli.global);
    if let Err(e) = cli::dispatch(cli) {
        // One line: the error and its causes, outermost first.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
