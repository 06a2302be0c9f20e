//! `fvimg`: disk image tool with qemu-img's command line, exit codes and
//! JSON field names: create, info, check, convert, compare, map, resize,
//! snapshot, rebase, commit.

mod chain;
mod check;
mod compare;
mod convert;
mod image;
mod info;
mod map;
mod size;
mod snapshot;

use std::path::PathBuf;
use std::process::ExitCode;

use block::Format;
use clap::{Parser, Subcommand, ValueEnum};

use image::{parse_options, CreateSpec, Image};
use size::parse_size;

/// Output formats of info, check and map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people.
    Human,
    /// JSON for scripts (qemu-img's field names).
    Json,
}

#[derive(Parser)]
#[command(
    name = "fvimg",
    version,
    about = "Disk image tool (qemu-img's command line)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: std::io::Error| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Creates an image.
    Create {
        /// Format of the new image.
        #[arg(short = 'f', value_parser = parse_format, default_value = "raw")]
        format: Format,
        /// Format options (cluster_size, compression_type, lazy_refcounts, refcount_bits, extended_l2, preallocation, compat).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Backing file.
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Backing file format.
        #[arg(short = 'F', value_parser = parse_format)]
        backing_format: Option<Format>,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// The new image.
        file: PathBuf,
        /// Size (k, M, G, T suffixes); defaults to the backing file's.
        size: Option<String>,
    },
    /// Shows what an image is.
    Info {
        /// Image format (probed when not given).
        #[arg(short = 'f', value_parser = parse_format)]
        format: Option<Format>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Every image of the backing chain.
        #[arg(long)]
        backing_chain: bool,
        /// The image.
        file: PathBuf,
    },
    /// Checks an image's consistency (exit 0 clean, 1 check failed, 2 corrupt, 3 leaks).
    Check {
        /// Image format (probed when not given).
        #[arg(short = 'f', value_parser = parse_format)]
        format: Option<Format>,
        /// Repair: leaks or all.
        #[arg(short = 'r')]
        repair: Option<check::Repair>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// The image.
        file: PathBuf,
    },
    /// Copies an image into a new one, possibly of another format.
    Convert(convert::Args),
    /// Compares the guest contents of two images (exit 0 same, 1 different, 2 error).
    Compare {
        /// Format of the first image.
        #[arg(short = 'f', value_parser = parse_format)]
        format1: Option<Format>,
        /// Format of the second image.
        #[arg(short = 'F', value_parser = parse_format)]
        format2: Option<Format>,
        /// Strict: a size mismatch is a difference.
        #[arg(short = 's')]
        strict: bool,
        /// Progress bar.
        #[arg(short = 'p')]
        progress: bool,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// First image.
        file1: PathBuf,
        /// Second image.
        file2: PathBuf,
    },
    /// Shows how the guest range is stored.
    Map {
        /// Image format (probed when not given).
        #[arg(short = 'f', value_parser = parse_format)]
        format: Option<Format>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// The image.
        file: PathBuf,
    },
    /// Grows an image (SIZE or +SIZE).
    Resize {
        /// Image format (probed when not given).
        #[arg(short = 'f', value_parser = parse_format)]
        format: Option<Format>,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// The image.
        file: PathBuf,
        /// New size, or +/- a change.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Lists, creates, applies or deletes internal snapshots.
    Snapshot(snapshot::Args),
    /// Changes the backing file (copying what differs unless -u).
    Rebase(chain::RebaseArgs),
    /// Writes the image's own data into its backing file.
    Commit(chain::CommitArgs),
}

/// A failure with qemu-img's exit status for it.
pub struct Failure {
    /// What to print.
    pub message: String,
    /// Exit status.
    pub code: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("fvimg: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Create {
            format,
            options,
            backing,
            backing_format,
            quiet,
            file,
            size,
        } => {
            let mut spec = CreateSpec::default();
            parse_options(&options, &mut spec)?;
            if backing.is_some() {
                spec.qcow2.backing_file = backing;
            }
            if let Some(f) = backing_format {
                spec.qcow2.backing_format = Some(f.name().to_string());
            }
            match size {
                Some(s) => spec.qcow2.size = parse_size(&s)?,
                None => {
                    let Some(name) = &spec.qcow2.backing_file else {
                        return Err("a size is needed without a backing file".into());
                    };
                    let path = block::qcow2::resolve_backing(&file, name);
                    let fmt = spec
                        .qcow2
                        .backing_format
                        .as_deref()
                        .map(parse_format)
                        .transpose()?;
                    spec.qcow2.size = Image::open(&path, fmt, true, true)?.disk().size();
                }
            }
            if let (Some(name), None) = (&spec.qcow2.backing_file, &spec.qcow2.backing_format) {
                // Record the probed format so nothing probes it again later.
                let path = block::qcow2::resolve_backing(&file, name);
                spec.qcow2.backing_format = Some(block::image::probe(&path)?.name().to_string());
            }
            if format != Format::Qcow2 && spec.qcow2.backing_file.is_some() {
                return Err(format!("{format} images have no backing file").into());
            }
            if !quiet {
                println!(
                    "Formatting '{}', fmt={format} size={}",
                    file.display(),
                    spec.qcow2.size
                );
            }
            image::create(&file, format, &spec)?;
            Ok(0)
        }
        Command::Info {
            format,
            output,
            backing_chain,
            file,
        } => info::run(&file, format, output, backing_chain),
        Command::Check {
            format,
            repair,
            output,
            quiet,
            file,
        } => check::run(&file, format, repair, output, quiet),
        Command::Convert(args) => convert::run(args),
        Command::Compare {
            format1,
            format2,
            strict,
            progress,
            quiet,
            file1,
            file2,
        } => compare::run(&file1, format1, &file2, format2, strict, progress, quiet),
        Command::Map {
            format,
            output,
            file,
        } => map::run(&file, format, output),
        Command::Resize {
            format,
            quiet,
            file,
            size,
        } => {
            let image = Image::open(&file, format, false, false)?;
            let old = image.disk().size();
            let new = if let Some(d) = size.strip_prefix('+') {
                old.checked_add(parse_size(d)?).ok_or("size overflows")?
            } else if let Some(d) = size.strip_prefix('-') {
                old.checked_sub(parse_size(d)?).ok_or("size below zero")?
            } else {
                parse_size(&size)?
            };
            match &image {
                Image::Qcow2(q) => q.resize(new.div_ceil(512) * 512)?,
                Image::ReadOnly(format, _) => {
                    return Err(format!("{format} images are read-only").into());
                }
                Image::Raw(..) => {
                    if new < old {
                        return Err("shrinking is not supported".into());
                    }
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&file)?
                        .set_len(new)?;
                }
            }
            if !quiet {
                println!("Image resized.");
            }
            Ok(0)
        }
        Command::Snapshot(args) => snapshot::run(args),
        Command::Rebase(args) => chain::rebase(args),
        Command::Commit(args) => chain::commit(args),
    }
}
