//! `p2pdma completions` and `p2pdma man`: shell completions and man pages generated from
//! the same clap definitions that parse the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

use crate::output;

/// Arguments of `p2pdma completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:\n  \
p2pdma completions bash > /etc/bash_completion.d/p2pdma\n  \
p2pdma completions zsh > /usr/local/share/zsh/site-functions/_p2pdma\n  \
p2pdma completions fish > ~/.config/fish/completions/p2pdma.fish")]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `p2pdma man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:\n  \
p2pdma man --out /usr/local/share/man/man1 && mandb -q\n  \
p2pdma man | man -l -")]
pub struct ManArgs {
    /// Write p2pdma.1 and one page per subcommand (p2pdma-copy.1 ...) into this
    /// directory instead of printing p2pdma.1 on stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Writes the completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    let mut buffer = Vec::new();
    clap_complete::generate(args.shell, &mut command, "p2pdma", &mut buffer);
    let mut out = output::stdout();
    out.write_all(&buffer)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the man page(s).
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
        None => {
            let mut buffer = Vec::new();
            clap_mangen::Man::new(command).render(&mut buffer)?;
            let mut out = output::stdout();
            out.write_all(&buffer)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
