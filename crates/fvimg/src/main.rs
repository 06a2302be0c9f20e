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

use block::{BackingPolicy, Format};
use clap::{Parser, Subcommand, ValueEnum};

use image::{directory_of, parse_options, CreateSpec, Ctx, Image};
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
    /// Also read backing files from DIR (repeatable). Backing files are
    /// read only from the directories of the images named on the command
    /// line and from these; `--backing-dir /` follows backing files
    /// anywhere, as qemu-img does (backing files that are neither regular
    /// files nor block devices are refused even then).
    #[arg(long = "backing-dir", value_name = "DIR", global = true)]
    backing_dirs: Vec<PathBuf>,
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
        /// Allow a smaller size (the data past the new end is lost).
        #[arg(long)]
        shrink: bool,
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

/// The image files a command names (for `create` and `rebase`, the backing
/// file given too, resolved relative to the image).
fn named_images(command: &Command) -> Vec<PathBuf> {
    match command {
        Command::Create {
            file,
            backing,
            options,
            ..
        } => {
            // `-o backing_file=` names one as well (bad options are reported by `run`).
            let mut spec = CreateSpec::default();
            let _ = parse_options(options, &mut spec);
            let mut v = vec![file.clone()];
            if let Some(b) = backing.as_ref().or(spec.qcow2.backing_file.as_ref()) {
                v.push(block::qcow2::resolve_backing(file, b));
            }
            v
        }
        Command::Info { file, .. }
        | Command::Check { file, .. }
        | Command::Map { file, .. }
        | Command::Resize { file, .. } => vec![file.clone()],
        Command::Convert(args) => args.images(),
        Command::Compare { file1, file2, .. } => vec![file1.clone(), file2.clone()],
        Command::Snapshot(args) => vec![args.file.clone()],
        Command::Rebase(args) => args.images(),
        Command::Commit(args) => vec![args.image().to_path_buf()],
    }
}

/// The context commands open images with: backing files may be read from
/// the directories of the images named and from every `--backing-dir`.
fn context(cli: &Cli) -> Result<Ctx, Failure> {
    let mut roots: Vec<PathBuf> = named_images(&cli.command)
        .iter()
        .filter_map(|p| directory_of(p))
        .collect();
    for dir in &cli.backing_dirs {
        let real = dir
            .canonicalize()
            .map_err(|e| format!("--backing-dir {}: {e}", dir.display()))?;
        if !real.is_dir() {
            return Err(format!("--backing-dir {}: not a directory", dir.display()).into());
        }
        roots.push(real);
    }
    roots.sort();
    roots.dedup();
    Ok(Ctx {
        backing: BackingPolicy::Within(roots),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match context(&cli).and_then(|ctx| run(&ctx, cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("fvimg: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(ctx: &Ctx, command: Command) -> Result<u8, Failure> {
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
                    let path = ctx.backing_file(&file, name)?;
                    let fmt = spec
                        .qcow2
                        .backing_format
                        .as_deref()
                        .map(parse_format)
                        .transpose()?;
                    spec.qcow2.size = ctx.open(&path, fmt, true, true)?.disk().size();
                }
            }
            if let (Some(name), None) = (&spec.qcow2.backing_file, &spec.qcow2.backing_format) {
                // Record the probed format so nothing probes it again later.
                let path = ctx.backing_file(&file, name)?;
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
            image::create(ctx, &file, format, &spec)?;
            Ok(0)
        }
        Command::Info {
            format,
            output,
            backing_chain,
            file,
        } => info::run(ctx, &file, format, output, backing_chain),
        Command::Check {
            format,
            repair,
            output,
            quiet,
            file,
        } => check::run(ctx, &file, format, repair, output, quiet),
        Command::Convert(args) => convert::run(ctx, args),
        Command::Compare {
            format1,
            format2,
            strict,
            progress,
            quiet,
            file1,
            file2,
        } => compare::run(
            ctx, &file1, format1, &file2, format2, strict, progress, quiet,
        ),
        Command::Map {
            format,
            output,
            file,
        } => map::run(ctx, &file, format, output),
        Command::Resize {
            format,
            quiet,
            shrink,
            file,
            size,
        } => {
            let image = ctx.open(&file, format, false, false)?;
            let old = image.disk().size();
            let new = if let Some(d) = size.strip_prefix('+') {
                old.checked_add(parse_size(d)?).ok_or("size overflows")?
            } else if let Some(d) = size.strip_prefix('-') {
                old.checked_sub(parse_size(d)?).ok_or("size below zero")?
            } else {
                parse_size(&size)?
            };
            if new < old && !shrink {
                return Err("Use the --shrink option to perform a shrink operation.\n\
                     fvimg: warning: Shrinking an image will delete all data beyond the \
                     shrunken image's end. Before performing such an operation, make sure \
                     there is no important data there."
                    .into());
            }
            match &image {
                Image::Qcow2(q) if new < old => q.shrink(new)?,
                Image::Qcow2(q) => {
                    q.resize(new.checked_next_multiple_of(512).ok_or("size overflows")?)?
                }
                Image::ReadOnly(format, _) => {
                    return Err(format!("{format} images are read-only").into());
                }
                Image::Raw(..) => {
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
        Command::Snapshot(args) => snapshot::run(ctx, args),
        Command::Rebase(args) => chain::rebase(ctx, args),
        Command::Commit(args) => chain::commit(ctx, args),
    }
}
