use std::process::ExitCode;

// polars allocates heavily from many threads; mimalloc is markedly faster than the system one.
// Blocks of 256 KiB and more come from pages the process keeps (see `tuning/alloc.rs`).
#[cfg(all(target_os = "linux", feature = "page-allocator"))]
#[global_allocator]
static GLOBAL: pipeline::tuning::alloc::Allocator = pipeline::tuning::alloc::Allocator;
#[cfg(not(all(target_os = "linux", feature = "page-allocator")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use pipeline::cli::{Cli, Command, PlanFormat};

fn main() -> ExitCode {
    #[cfg(feature = "memory-settings")]
    let memory_settings = pipeline::tuning::memory::apply();
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command {
        if let Some(threads) = args.threads {
            // polars reads this once, at its first use: set it before anything touches polars.
            std::env::set_var("POLARS_MAX_THREADS", threads.to_string());
            // Our own parallel work (the order fold's shards, prepare) uses the global pool.
            if let Err(error) = rayon::ThreadPoolBuilder::new()
                .num_threads(usize::from(threads))
                .build_global()
            {
                eprintln!("warning: cannot size the thread pool: {error}");
            }
        }
    }
    pipeline::logging::init(&cli.log, cli.log_format);
    let json = cli.log_format == pipeline::logging::LogFormat::Json;
    #[cfg(feature = "memory-settings")]
    if let Err(problem) = memory_settings {
        tracing::debug!("{problem}");
    }
    pipeline::install_panic_hook();
    match pipeline::catch_panics(|| execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Config diagnostics carry their own `error:` prefix (one per problem).
            let text = format!("{error:#}");
            if json {
                tracing::error!("{}", text.trim_start_matches("error: "));
            } else if text.starts_with("error: ") {
                eprintln!("{}", text.trim_end());
            } else {
                eprintln!("error: {text}");
            }
            ExitCode::from(pipeline::exit_code(&error) as u8)
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let plan = pipeline::load_plan(&args.config)?;
            let options = pipeline::runner::RunOptions {
                select: args.select,
                as_of: args.as_of,
                output_dir: args.output_dir,
                threads: args.threads.map(usize::from),
                sequential: args.sequential,
                shards: args.shards.map(usize::from),
                memory_limit: args.memory_limit,
            };
            let manifest = pipeline::runner::run(&plan, &options)?;
            let tables: usize = manifest.stages.iter().map(|s| s.tables.len()).sum();
            eprintln!(
                "published {tables} table(s) as of {} in {:.2} s",
                manifest.as_of.as_deref().unwrap_or("-"),
                manifest.duration_seconds
            );
            Ok(())
        }
        Command::Validate { config } => {
            println!("{}", pipeline::validate(&config)?);
            Ok(())
        }
        Command::Plan { config, format } => {
            let plan = pipeline::load_plan(&config)?;
            let text = match format {
                PlanFormat::Text => plan.render_text(),
                PlanFormat::Mermaid => plan.render_graph(true),
                PlanFormat::Dot => plan.render_graph(false),
            };
            print!("{text}");
            Ok(())
        }
        Command::Docs { config, format } => {
            print!("{}", pipeline::docs(&config, format)?);
            Ok(())
        }
        Command::GenerateSample(args) => {
            let summary = pipeline::generate::generate(&args)?;
            eprintln!("{summary}");
            Ok(())
        }
        Command::Report { out, output } => {
            let path = pipeline::report::write_report(&out, output.as_deref())?;
            eprintln!("wrote {}", path.display());
            Ok(())
        }
    }
}
