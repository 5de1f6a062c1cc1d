//! Writes the man pages of `vramd` (section 8) and `vramctl` (section 1, one page per
//! subcommand as `vramctl-<sub>.1`) and vramctl's shell completions (bash, zsh, fish) from
//! the very clap definitions the binaries parse (`vramd::cli`). Run at package build time
//! (packaging/build), so the shipped binaries carry no generator:
//!
//! `cargo run --example gen-manpages -- OUT_DIR` writes `OUT_DIR/man/*.{1,8}` and
//! `OUT_DIR/completions/{vramctl.bash,_vramctl,vramctl.fish}`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/packaging-gen".into()),
    );
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    write_page(&man, &vramd::cli::daemon::Cli::command(), "8")?;

    let mut ctl = vramd::cli::ctl::Cli::command();
    ctl.build();
    write_page(&man, &ctl, "1")?;
    for sub in ctl
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // `vramctl-status(1)` and friends, named the way `vramctl.1` refers to them.
        let name: &'static str = format!("vramctl-{}", sub.get_name()).leak();
        write_page(&man, &sub.clone().name(name).display_name(name), "1")?;
    }

    for (shell, file) in [
        (Shell::Bash, "vramctl.bash"),
        (Shell::Zsh, "_vramctl"),
        (Shell::Fish, "vramctl.fish"),
    ] {
        let mut f = std::fs::File::create(completions.join(file))?;
        clap_complete::generate(shell, &mut vramd::cli::ctl::Cli::command(), "vramctl", &mut f);
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}

/// Writes `dir/<name>.<section>`.
fn write_page(dir: &Path, cmd: &clap::Command, section: &str) -> std::io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(cmd.get_name().to_uppercase())
        .section(section)
        .manual("vramd manual")
        .source(format!("vramd {}", env!("CARGO_PKG_VERSION")))
        .render(&mut buf)?;
    std::fs::write(dir.join(format!("{}.{section}", cmd.get_name())), buf)
}
