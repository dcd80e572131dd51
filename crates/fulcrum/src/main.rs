//! `fulcrum`: the command line. It parses arguments (`cli.rs`), turns them into each crate's
//! options and prints results (`commands.rs`); the work itself lives in the other crates.

mod cli;
mod commands;

use clap::Parser as _;

// The proxy and the load generator allocate per request; mimalloc's thread-local free lists cut
// glibc malloc's share of a proxied request (about a tenth of its CPU) by more than half.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tune_allocator();
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

/// mimalloc commits whole arenas eagerly by default; with transparent huge pages that makes
/// every touched 2 MiB region resident, which doubled the balancer's RSS with many idle
/// connections. Commit on demand instead, and return freed memory promptly.
fn tune_allocator() {
    // mimalloc v3's `mi_option_e`: arena_eager_commit = 4, purge_delay = 15.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the linked allocator, called before any thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}
