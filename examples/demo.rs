//! The demo: the same workload against the simulated Claude-like API, three ways.
//!
//! ```sh
//! cargo run --example demo                 # virtual time: finishes in seconds
//! cargo run --example demo -- --real-time  # the same on the wall clock (about 15 minutes)
//! cargo run --example demo -- --check      # exit 1 unless the preset completes every request
//!                                          # with under 1 % of attempts answered 429
//! ```
//!
//! 1. `bare`      — the client alone: every 429 and 529 reaches the caller;
//! 2. `sdk-retry` — the official SDKs' retry rules alone (2 retries, `retry-after`, backoff);
//! 3. `preset`    — `tower_llm_limits::preset::anthropic()`: limits learned from the headers,
//!    requests paced before the server refuses them, retries, breaker, adaptive concurrency.
//!
//! It prints a summary table and writes an SVG chart of admitted requests and refusals over time
//! for each run. No API key is needed: everything runs against the embedded simulated API.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use plotters::prelude::*;
use tower::ServiceBuilder;
use tower_llm_limits::retry::{self, RetryLayer};
use tower_llm_limits::{BoxError, preset};
use tower_llm_limits_sim::{EventKind, Fault, Faults, Limits, Report, SimApi, SimEvent, Workload};

const MODEL: &str = "claude-sonnet-4-5";
const BIN: Duration = Duration::from_secs(10);

struct Options {
    real_time: bool,
    check: bool,
    requests: usize,
    concurrency: usize,
    chart: std::path::PathBuf,
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options {
        real_time: false,
        check: false,
        requests: 400,
        concurrency: 32,
        chart: std::path::PathBuf::from("target/demo.svg"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--real-time" => options.real_time = true,
            "--check" => options.check = true,
            "--requests" => options.requests = args.next().ok_or("--requests N")?.parse()?,
            "--concurrency" => {
                options.concurrency = args.next().ok_or("--concurrency N")?.parse()?
            }
            "--chart" => options.chart = args.next().ok_or("--chart PATH")?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: demo [--real-time] [--check] [--requests N] [--concurrency N] \
                     [--chart PATH]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(options)
}

/// A Tier-1-like organisation: 50 requests, 30,000 input tokens and 8,000 output tokens per
/// minute, answers taking 0.5 s plus 4 ms per output token, and 2 % of answers overloaded (529).
fn api() -> SimApi {
    SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
        .latency(Duration::from_millis(500), Duration::from_millis(4))
        .faults(Faults::new().window(
            Duration::ZERO..Duration::from_secs(24 * 3600),
            Fault::Overloaded { probability: 0.02 },
        ))
        .seed(2026)
        .build()
}

fn workload(options: &Options) -> Workload {
    Workload::new(options.requests, options.concurrency)
        .seed(7)
        .models([MODEL])
        .input_tokens(300..=3_000)
        .max_tokens(256..=1_024)
        .output_fraction(0.2..=0.8)
}

struct Run {
    name: &'static str,
    report: Report,
    events: Vec<SimEvent>,
    received: u64,
    r429: u64,
    r529: u64,
    best: Duration,
}

/// Passes a result through, advancing the progress bar.
fn counter<T>(progress: &ProgressBar) -> impl Fn(T) -> T + Clone + Send + use<T> {
    let progress = progress.clone();
    move |result| {
        progress.inc(1);
        result
    }
}

fn bar(multi: &MultiProgress, name: &str, len: usize) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len as u64));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40.cyan/blue}] {pos:>4}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

async fn run(name: &'static str, options: &Options, multi: &MultiProgress) -> Run {
    let api = api();
    let workload = workload(options);
    let best = workload.theoretical_best(&api);
    let progress = bar(multi, name, options.requests);
    let report = match name {
        "bare" => {
            let client = ServiceBuilder::new()
                .map_result(counter(&progress))
                .service(api.clone());
            workload.run(client).await
        }
        "sdk-retry" => {
            let client = ServiceBuilder::new()
                .map_result(counter(&progress))
                .layer(RetryLayer::new(retry::Policy::new()))
                .service(api.clone());
            workload.run(client).await
        }
        _ => {
            let client = ServiceBuilder::new()
                .map_result(counter(&progress))
                .layer(preset::anthropic())
                .service(api.clone());
            workload.run(client).await
        }
    };
    let counters = api.counters();
    progress.finish_with_message(format!(
        "{} ok, {} failed, {:.0?} virtual",
        report.ok(),
        report.failed(),
        report.elapsed()
    ));
    Run {
        name,
        events: api.events(),
        received: counters.received(),
        r429: counters.rate_limited(),
        r529: counters.overloaded(),
        best,
        report,
    }
}

fn table(runs: &[Run]) {
    println!();
    println!(
        "{:<10} {:>9} {:>7} {:>6} {:>6} {:>8} {:>10} {:>9} {:>7}",
        "run", "completed", "failed", "429s", "529s", "retries", "time", "T*/time", "429 %"
    );
    for run in runs {
        let requests = run.report.records().len() as u64;
        // The share of the best time means something only when every request completed.
        let share = if run.report.failed() == 0 {
            format!(
                "{:.1}%",
                100.0 * run.best.as_secs_f64() / run.report.elapsed().as_secs_f64()
            )
        } else {
            "n/a".to_string()
        };
        println!(
            "{:<10} {:>9} {:>7} {:>6} {:>6} {:>8} {:>9.1}s {:>9} {:>6.2}%",
            run.name,
            run.report.ok(),
            run.report.failed(),
            run.r429,
            run.r529,
            run.received.saturating_sub(requests),
            run.report.elapsed().as_secs_f64(),
            share,
            100.0 * run.r429 as f64 / run.received.max(1) as f64,
        );
    }
    if let Some(run) = runs.first() {
        println!(
            "\nT* = {:.1}s: the best possible time for this workload under these limits \
             (the binding bucket's total cost beyond its starting fill, divided by its refill rate).",
            run.best.as_secs_f64()
        );
    }
}

/// The demo's promise, for `--check`: the preset completes every request, and under 1 % of its
/// attempts are answered 429. One line per miss.
fn check(runs: &[Run], requests: usize) -> Vec<String> {
    let Some(preset) = runs.iter().find(|r| r.name == "preset") else {
        return vec!["no preset run".into()];
    };
    let mut misses = Vec::new();
    if preset.report.ok() != requests {
        misses.push(format!(
            "preset completed {} of {requests} requests ({} failed)",
            preset.report.ok(),
            preset.report.failed()
        ));
    }
    if preset.r429 * 100 >= preset.received.max(1) {
        misses.push(format!(
            "preset: {} of {} attempts answered 429, {:.2} % (target: under 1 %)",
            preset.r429,
            preset.received,
            100.0 * preset.r429 as f64 / preset.received.max(1) as f64
        ));
    }
    misses
}

/// Points of a line: (seconds, answers in the bin).
type Points = Vec<(f64, f64)>;

/// Admitted (2xx) answers and refusals (429 + 529) per 10-second bin.
fn series(events: &[SimEvent]) -> (Points, Points) {
    let last = events
        .iter()
        .map(|e| e.answered())
        .max()
        .unwrap_or_default();
    let bins = (last.as_secs_f64() / BIN.as_secs_f64()) as usize + 1;
    let (mut ok, mut refused) = (vec![0u32; bins], vec![0u32; bins]);
    for event in events {
        let bin = (event.answered().as_secs_f64() / BIN.as_secs_f64()) as usize;
        if let EventKind::Answered(status) = event.kind() {
            if status.is_success() {
                ok[bin] += 1;
            } else if status == 429 || status.as_u16() == 529 {
                refused[bin] += 1;
            }
        }
    }
    let to_points = |v: Vec<u32>| {
        v.into_iter()
            .enumerate()
            .map(|(i, n)| (i as f64 * BIN.as_secs_f64(), f64::from(n)))
            .collect()
    };
    (to_points(ok), to_points(refused))
}

fn chart(runs: &[Run], path: &std::path::Path) -> Result<(), BoxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (960, 300 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((runs.len(), 1));
    let x_max = runs
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.answered().as_secs_f64()))
        .fold(60.0, f64::max);
    for (run, panel) in runs.iter().zip(panels.iter()) {
        let (ok, refused) = series(&run.events);
        let y_max = ok.iter().chain(&refused).map(|p| p.1).fold(5.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{}: {} ok, {} failed, {} refusals (per 10 s)",
                    run.name,
                    run.report.ok(),
                    run.report.failed(),
                    run.r429 + run.r529
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds (virtual time)")
            .y_desc("answers")
            .draw()?;
        chart
            .draw_series(LineSeries::new(ok, &BLUE))?
            .label("admitted (2xx)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(refused, &RED))?
            .label("refused (429, 529)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(!options.real_time)
        .build()?;
    println!(
        "tower-llm-limits demo: {} requests from {} concurrent callers against the simulated \
         Claude-like API (no API key needed), 50 RPM / 30k ITPM / 8k OTPM, 2 % overloaded answers, \
         on {} time.\n",
        options.requests,
        options.concurrency,
        if options.real_time { "real" } else { "virtual" }
    );
    let multi = MultiProgress::new();
    let runs = runtime.block_on(async {
        let mut runs = Vec::new();
        for name in ["bare", "sdk-retry", "preset"] {
            runs.push(run(name, &options, &multi).await);
        }
        runs
    });
    table(&runs);
    chart(&runs, &options.chart)?;
    println!("\nchart: {}", options.chart.display());
    if options.check {
        let misses = check(&runs, options.requests);
        if !misses.is_empty() {
            for m in &misses {
                println!("demo check: missed: {m}");
            }
            std::process::exit(1);
        }
        println!("demo check: the preset completed every request with under 1 % of attempts 429");
    }
    Ok(())
}
