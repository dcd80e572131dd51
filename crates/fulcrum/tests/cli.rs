//! Shell completions and man pages, generated from the same clap definitions the binary parses
//! with: a real bash loads the completion script and completes a subcommand and a flag; the man
//! pages name every command and the flags `--help` lists.

mod fixture;

use std::process::Command;

use fixture::{run, Scratch};

/// What bash offers for the words of `line` (the last word being completed), with the
/// completion script `fulcrum completions bash` prints loaded.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let words_array = words
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let program = format!(
        "source '{}'\nCOMP_WORDS=({words_array})\nCOMP_CWORD={}\nCOMP_LINE='{}'\n\
         COMP_POINT=${{#COMP_LINE}}\n_fulcrum fulcrum '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &program])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags_from_the_generated_script() {
    let dir = Scratch::new("completions");
    let (code, script, err) = run(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let path = dir.path("fulcrum.bash");
    std::fs::write(&path, &script).unwrap();

    let commands = bash_completes(&path, &["fulcrum", "ba"]);
    assert!(commands.contains(&"balance".to_owned()), "{commands:?}");
    let flags = bash_completes(&path, &["fulcrum", "balance", "--access"]);
    assert!(
        flags.contains(&"--access-log".to_owned())
            && flags.contains(&"--access-log-format".to_owned()),
        "{flags:?}"
    );
    let all = bash_completes(&path, &["fulcrum", ""]);
    for command in [
        "worker",
        "up",
        "status",
        "down",
        "bench",
        "report",
        "experiment",
        "man",
    ] {
        assert!(all.contains(&command.to_owned()), "{command}: {all:?}");
    }

    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, script, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(script.contains("balance"), "{shell}: {script}");
    }
    let (code, _, err) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

#[test]
fn man_pages_cover_every_command_and_its_flags() {
    let (code, page, err) = run(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.starts_with(".ie") && page.contains(".TH fulcrum 1"),
        "{page}"
    );
    for command in ["worker", "balance", "up", "down", "bench", "experiment"] {
        assert!(
            page.contains(&format!("fulcrum\\-{command}(1)")),
            "{command}"
        );
    }

    let dir = Scratch::new("man");
    let (code, _, err) = run(&["man", "--out", dir.0.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let balance = std::fs::read_to_string(dir.path("fulcrum-balance.1")).unwrap();
    let (_, help, _) = run(&["balance", "--help"]);
    // Every long flag `--help` shows is in the page (roff escapes the dashes).
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.trim_end_matches(',');
        let roff = flag.replace('-', "\\-");
        assert!(balance.contains(&roff), "{flag} missing from the man page");
    }
}
