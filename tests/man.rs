//! The man pages in `man/` are generated from the clap definitions; this test
//! fails when one is stale. Regenerate with `UPDATE_MAN=1 cargo test --test man`.

use std::path::Path;

use clap::CommandFactory;

fn commands() -> Vec<clap::Command> {
    use quiverdb_follower::cli;
    vec![
        cli::apply::Args::command(),
        cli::ckpt::Args::command(),
        cli::follower::command(),
        cli::inspect::Args::command(),
        cli::recv::Args::command(),
        cli::unzip::Args::command(),
    ]
}

fn render(cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out).unwrap();
    out
}

#[test]
fn man_pages_match_the_clap_definitions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let update = std::env::var_os("UPDATE_MAN").is_some();
    let mut stale = Vec::new();
    for cmd in commands() {
        let name = cmd.get_name().to_string();
        let want = render(cmd);
        let path = dir.join(format!("{name}.1"));
        if update {
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale man pages (run `UPDATE_MAN=1 cargo test --test man`): {stale:?}"
    );
}

#[test]
fn every_binary_has_a_man_page() {
    let bins = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin");
    let names: Vec<String> = commands()
        .iter()
        .map(|c| c.get_name().to_string())
        .collect();
    for e in std::fs::read_dir(bins).unwrap() {
        let file = e.unwrap().file_name().to_string_lossy().into_owned();
        let bin = file.trim_end_matches(".rs");
        assert!(
            names.iter().any(|n| n == bin),
            "{bin} has no man page definition in tests/man.rs"
        );
    }
}
