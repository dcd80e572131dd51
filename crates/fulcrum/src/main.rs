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
    if matches!(cli.command, cli::Command::Bench(_)) {
        keep_freed_pages_a_while();
    }
    if let Err(e) = cli::dispatch(cli) {
        // One line: the error and its causes, outermost first.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// mimalloc commits whole arenas eagerly by default and asks for transparent huge pages on them;
/// with THP every touched 2 MiB region becomes resident, which more than doubled the balancer's
/// RSS with many idle connections (bench/proxy.sh). It is built not to ask (`no_thp`); here it
/// commits on demand and returns freed memory promptly, and the kernel is told not to back this
/// process with huge pages on its own either (machines with THP `always`).
fn tune_allocator() {
    // mimalloc v3's `mi_option_e`: arena_eager_commit = 4, purge_delay = 15.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the linked allocator, and a prctl on this process, called
    // before any thread starts. Children (workers started by `up`) inherit the THP setting.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The load generator frees and reallocates the same few kinds of objects for every request;
/// with freed pages returned at once (`tune_allocator`'s setting, for the servers' RSS) it
/// page-faulted and zeroed them again and again. It holds a handful of connections, so keeping
/// freed pages for a while costs little memory.
fn keep_freed_pages_a_while() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: a plain option setter of the linked allocator, before any generator thread starts.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 1000) };
}
