//! Progress of large blob transfers: redrawn bars below the log on a
//! terminal, plain log lines (start, each quarter of very large blobs,
//! completion with throughput) everywhere else. Counting happens in the
//! streaming path through [`Counted`]; nothing is buffered.
//!
//! Bars and log lines share stderr: the logger writes through
//! [`write_stderr`], which lifts the bars, prints the line and puts the
//! bars back in one write, so a line never lands inside a bar.

use crate::digest::Digest;
use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Blobs above this size get a bar or log lines; smaller ones finish too
/// fast for either to say anything.
pub const THRESHOLD: u64 = 8 * 1024 * 1024;
/// Blobs from this size also log a line at 25%, 50% and 75% without a
/// terminal, so a long transfer visibly moves in CI logs.
const QUARTERS_FROM: u64 = 128 * 1024 * 1024;
/// Bars are redrawn at most ten times a second.
const REDRAW_INTERVAL_MS: u64 = 100;
/// Bars shown at once; the rest are summed up in one line.
const BARS_MAX: usize = 8;
/// Hex digits of a digest shown in a bar.
const SHORT_HEX: usize = 12;
/// Cells of a bar at most, however wide the terminal.
const BAR_CELLS_MAX: usize = 40;
/// Columns kept for a bar's numbers, so the bar keeps its width while they
/// grow (`296.5 MiB/300.1 MiB 184.7 MiB/s ETA 2s` fits).
const STATS_COLUMNS: usize = 40;

/// Which way a blob travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// From a registry into the store.
    Pull,
    /// From the store to a registry.
    Push,
    /// A build context, from wherever its URL points.
    Fetch,
}

/// What travels.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    /// A blob, by digest.
    Blob(Digest),
    /// The build context, whose size is known only at the end.
    Context,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Blob(d) => write!(f, "blob {d}"),
            Subject::Context => f.write_str("the build context"),
        }
    }
}

impl Subject {
    /// The name at the start of a bar.
    fn short(&self) -> &str {
        match self {
            Subject::Blob(d) => &d.hex()[..SHORT_HEX],
            Subject::Context => "context",
        }
    }
}

impl Verb {
    fn ongoing(self) -> &'static str {
        match self {
            Verb::Pull => "Pulling",
            Verb::Push => "Pushing",
            Verb::Fetch => "Fetching",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Pull => "Pulled",
            Verb::Push => "Pushed",
            Verb::Fetch => "Fetched",
        }
    }
}

/// How transfers are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Log lines through the `log` facade (the default).
    Lines,
    /// Bars redrawn below the log on stderr.
    Bars,
}

/// Bars only on a capable terminal and never with JSON logs, whose
/// readers expect one object per line.
fn mode_for(stderr_is_tty: bool, json: bool, term: Option<&str>) -> Mode {
    if stderr_is_tty && !json && term.is_some_and(|t| !t.is_empty() && t != "dumb") {
        Mode::Bars
    } else {
        Mode::Lines
    }
}

/// The process's [`Mode`]; lines until [`configure`] says otherwise.
static MODE: AtomicU8 = AtomicU8::new(Mode::Lines as u8);

/// Chooses the mode for this process's stderr and log format (JSON or not).
pub fn configure(json: bool) {
    let term = std::env::var("TERM").ok();
    let mode = mode_for(io::stderr().is_terminal(), json, term.as_deref());
    MODE.store(mode as u8, Ordering::Relaxed);
}

fn mode() -> Mode {
    if MODE.load(Ordering::Relaxed) == Mode::Bars as u8 {
        Mode::Bars
    } else {
        Mode::Lines
    }
}

/// Writes whole lines to stderr above any bars, in one write.
pub fn write_stderr(lines: &[u8]) {
    if mode() == Mode::Lines {
        let _ = io::stderr().lock().write_all(lines);
        return;
    }
    let mut board = board();
    if board.drawn == 0 {
        drop(board);
        let _ = io::stderr().lock().write_all(lines);
        return;
    }
    let mut out = clear_sequence(board.drawn).into_bytes();
    out.extend_from_slice(lines);
    let (text, drawn) = board.render(Instant::now(), terminal_width());
    out.extend_from_slice(text.as_bytes());
    board.drawn = drawn;
    let _ = io::stderr().lock().write_all(&out);
}

/// One blob's transfer; dropping it without [`Transfer::finish`] (a failed
/// attempt) takes its bar away silently.
pub struct Transfer {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    verb: Verb,
    subject: Subject,
    /// Bytes in all; 0 while unknown (a context).
    total: u64,
    done: AtomicU64,
    /// Quarters already logged, without a terminal.
    quarters: AtomicU8,
    start: Instant,
}

impl Transfer {
    /// Starts showing a transfer of `total` bytes of `digest`; blobs up to
    /// [`THRESHOLD`] are counted by no one.
    pub fn start(verb: Verb, digest: &Digest, total: u64) -> Transfer {
        if total <= THRESHOLD {
            return Transfer { shared: None };
        }
        Transfer::show(verb, Subject::Blob(digest.clone()), total)
    }

    /// A transfer that shows nothing (an upload running ahead of the push).
    pub fn quiet() -> Transfer {
        Transfer { shared: None }
    }

    /// Starts showing the download of the build context, whatever its
    /// size: it is known only once the last byte is in.
    pub fn context() -> Transfer {
        Transfer::show(Verb::Fetch, Subject::Context, 0)
    }

    fn show(verb: Verb, subject: Subject, total: u64) -> Transfer {
        let shared = Arc::new(Shared {
            verb,
            subject,
            total,
            done: AtomicU64::new(0),
            quarters: AtomicU8::new(0),
            start: Instant::now(),
        });
        match mode() {
            // An unknown size makes a start line say nothing the caller's
            // own line does not; the completion line gives the size.
            Mode::Lines if total == 0 => {}
            Mode::Lines => log::info!("{}", start_line(verb, &shared.subject, total)),
            Mode::Bars => {
                let mut board = board();
                board.bars.push(Arc::clone(&shared));
                redraw(&mut board);
            }
        }
        Transfer {
            shared: Some(shared),
        }
    }

    /// Sets the bytes sent so far, as when a request starts over or resumes.
    pub fn set_position(&self, bytes: u64) {
        if let Some(s) = &self.shared {
            s.done.store(bytes, Ordering::Relaxed);
            s.moved();
        }
    }

    /// Counts `bytes` more as sent.
    pub fn advance(&self, bytes: u64) {
        if let Some(s) = &self.shared {
            s.done.fetch_add(bytes, Ordering::Relaxed);
            s.moved();
        }
    }

    /// Ends the transfer successfully: its bar goes, a completion line with
    /// size and throughput is logged.
    pub fn finish(mut self) {
        if let Some(s) = self.shared.take() {
            remove_bar(&s);
            // A context's size is what came through.
            let total = match s.total {
                0 => s.done.load(Ordering::Relaxed),
                t => t,
            };
            log::info!(
                "{}",
                done_line(s.verb, &s.subject, total, s.start.elapsed())
            );
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            remove_bar(&s);
        }
    }
}

fn remove_bar(s: &Arc<Shared>) {
    if mode() == Mode::Bars {
        let mut board = board();
        board.bars.retain(|b| !Arc::ptr_eq(b, s));
        redraw(&mut board);
    }
}

impl Shared {
    /// Shows that the count changed, at the pace the mode allows.
    fn moved(&self) {
        let done = self.done.load(Ordering::Relaxed);
        match mode() {
            Mode::Lines => {
                if let Some(q) =
                    quarter_due(done, self.total, self.quarters.load(Ordering::Relaxed))
                    && self.quarters.fetch_max(q, Ordering::Relaxed) < q
                {
                    log::info!(
                        "{}",
                        quarter_line(
                            self.verb,
                            &self.subject,
                            q,
                            done,
                            self.total,
                            self.start.elapsed()
                        )
                    );
                }
            }
            Mode::Bars => {
                if claim_redraw() {
                    redraw(&mut board());
                }
            }
        }
    }
}

/// A reader or writer that counts the bytes passing through into a
/// [`Transfer`].
pub struct Counted<'a, T> {
    inner: T,
    transfer: &'a Transfer,
}

impl<'a, T> Counted<'a, T> {
    /// Counts `inner`'s bytes into `transfer`.
    pub fn new(inner: T, transfer: &'a Transfer) -> Self {
        Counted { inner, transfer }
    }
}

impl<T: Read> Read for Counted<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.transfer.advance(n as u64);
        Ok(n)
    }
}

impl<T: Write> Write for Counted<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.transfer.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The bars on screen.
#[derive(Default)]
struct Board {
    bars: Vec<Arc<Shared>>,
    /// Lines the last redraw left on screen, above the cursor.
    drawn: usize,
}

impl Board {
    /// The bars as text ending in a newline, and how many lines it is.
    fn render(&self, now: Instant, width: usize) -> (String, usize) {
        let mut out = String::new();
        for s in self.bars.iter().take(BARS_MAX) {
            out.push_str(&bar_line(
                s.verb,
                &s.subject,
                s.done.load(Ordering::Relaxed),
                s.total,
                now.saturating_duration_since(s.start),
                width,
            ));
            out.push('\n');
        }
        let hidden = self.bars.len().saturating_sub(BARS_MAX);
        if hidden > 0 {
            out.push_str(&fit(format!("and {hidden} more"), width));
            out.push('\n');
        }
        (out, self.bars.len().min(BARS_MAX) + usize::from(hidden > 0))
    }
}

fn board() -> std::sync::MutexGuard<'static, Board> {
    static BOARD: OnceLock<Mutex<Board>> = OnceLock::new();
    BOARD
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Replaces the bars on screen with the current ones, in one write.
fn redraw(board: &mut Board) {
    let mut out = clear_sequence(board.drawn);
    let (text, drawn) = board.render(Instant::now(), terminal_width());
    out.push_str(&text);
    board.drawn = drawn;
    let _ = io::stderr().lock().write_all(out.as_bytes());
}

/// Moves up over `lines` drawn lines and clears from there down.
fn clear_sequence(lines: usize) -> String {
    if lines == 0 {
        String::new()
    } else {
        format!("\x1b[{lines}A\r\x1b[J")
    }
}

/// Milliseconds of the last redraw, since [`epoch`].
static LAST_REDRAW_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether the caller may redraw now; at most one caller per interval wins.
fn claim_redraw() -> bool {
    let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
    let last = LAST_REDRAW_MS.load(Ordering::Relaxed);
    redraw_due(last, now)
        && LAST_REDRAW_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Whether a redraw at `now_ms` keeps to the redraw interval after one at `last_ms`.
fn redraw_due(last_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(last_ms) >= REDRAW_INTERVAL_MS
}

/// The quarter (1 to 3) to log for `done` of `total` bytes, if it is past
/// the `logged` one and the blob is large enough to log quarters at all.
fn quarter_due(done: u64, total: u64, logged: u8) -> Option<u8> {
    if total < QUARTERS_FROM {
        return None;
    }
    let q = (u128::from(done.min(total)) * 4 / u128::from(total)).min(3) as u8;
    (q > logged).then_some(q)
}

/// The columns of the terminal on stderr, 80 when unknown.
fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a winsize into the struct we pass.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// `Pulling blob sha256:… (120.0 MiB)`.
fn start_line(verb: Verb, subject: &Subject, total: u64) -> String {
    format!("{} {subject} ({})", verb.ongoing(), format_size(total))
}

/// `Pulling blob sha256:…: 50% (60.0 MiB of 120.0 MiB, 37.5 MiB/s)`.
fn quarter_line(
    verb: Verb,
    subject: &Subject,
    quarter: u8,
    done: u64,
    total: u64,
    elapsed: Duration,
) -> String {
    format!(
        "{} {subject}: {}% ({} of {}, {})",
        verb.ongoing(),
        u32::from(quarter) * 25,
        format_size(done),
        format_size(total),
        format_rate(done, elapsed)
    )
}

/// `Pulled blob sha256:… (120.0 MiB in 3.2s, 37.5 MiB/s)`.
fn done_line(verb: Verb, subject: &Subject, total: u64, elapsed: Duration) -> String {
    format!(
        "{} {subject} ({} in {}, {})",
        verb.done(),
        format_size(total),
        format_duration(elapsed),
        format_rate(total, elapsed)
    )
}

/// One bar, at most `width - 1` columns so the terminal never wraps it:
/// `0123456789ab Pushing [=====>    ] 45.0 MiB/120.0 MiB 37.5 MiB/s ETA 2s`.
fn bar_line(
    verb: Verb,
    subject: &Subject,
    done: u64,
    total: u64,
    elapsed: Duration,
    width: usize,
) -> String {
    let label = format!("{} {}", subject.short(), verb.ongoing());
    if total == 0 {
        let stats = format!("{} {}", format_size(done), format_rate(done, elapsed));
        return fit(format!("{label} {stats}"), width);
    }
    let done = done.min(total);
    let mut stats = format!(
        "{}/{} {}",
        format_size(done),
        format_size(total),
        format_rate(done, elapsed)
    );
    if let Some(eta) = format_eta(done, total, elapsed) {
        stats.push_str(" ETA ");
        stats.push_str(&eta);
    }
    let room = width.saturating_sub(1);
    // Label, two spaces and the brackets around at least ten cells.
    let bar_cells = room
        .saturating_sub(label.len() + stats.len().max(STATS_COLUMNS) + 4)
        .min(BAR_CELLS_MAX);
    if bar_cells < 10 {
        return fit(format!("{label} {stats}"), width);
    }
    format!(
        "{label} [{}] {stats}",
        bar_cells_text(done, total, bar_cells)
    )
}

/// `=====>    `: `cells` wide, filled in proportion to `done` of `total`.
fn bar_cells_text(done: u64, total: u64, cells: usize) -> String {
    let filled = if total == 0 {
        cells
    } else {
        (u128::from(done.min(total)) * cells as u128 / u128::from(total)) as usize
    };
    let mut s = "=".repeat(filled);
    if filled < cells {
        s.push('>');
        s.push_str(&" ".repeat(cells - filled - 1));
    }
    s
}

/// `line` cut to at most `width - 1` columns (it is ASCII).
fn fit(mut line: String, width: usize) -> String {
    line.truncate(width.saturating_sub(1));
    line
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `120.0 MiB`.
fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes per second over `elapsed`: `37.5 MiB/s`.
fn format_rate(bytes: u64, elapsed: Duration) -> String {
    // A transfer measured in under a millisecond is rated as taking one.
    let secs = elapsed.as_secs_f64().max(0.001);
    format!("{}/s", format_size((bytes as f64 / secs) as u64))
}

/// `0.4s`, `12.0s`, `1m05s`, `2h03m`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// Time left at the average rate so far, in whole seconds; none before
/// the first byte or after the last.
fn format_eta(done: u64, total: u64, elapsed: Duration) -> Option<String> {
    if done == 0 || done >= total {
        return None;
    }
    let left = elapsed.as_secs_f64() * (total - done) as f64 / done as f64;
    let left = Duration::from_secs(left.ceil() as u64);
    Some(if left.as_secs() < 60 {
        format!("{}s", left.as_secs())
    } else {
        format_duration(left)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn digest() -> Digest {
        Digest::of(b"layer")
    }

    fn blob() -> Subject {
        Subject::Blob(digest())
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(120 * MIB), "120.0 MiB");
        assert_eq!(format_size(3 * 1024 * MIB + 512 * MIB), "3.5 GiB");
        assert_eq!(format_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn rates_divide_by_elapsed_time() {
        assert_eq!(format_rate(75 * MIB, Duration::from_secs(2)), "37.5 MiB/s");
        assert_eq!(format_rate(0, Duration::from_secs(1)), "0 B/s");
        assert_eq!(format_rate(MIB, Duration::ZERO), "1000.0 MiB/s");
    }

    #[test]
    fn durations_and_etas_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(3240)), "3.2s");
        assert_eq!(format_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(format_duration(Duration::from_secs(7380)), "2h03m");
        // A quarter in 10s leaves 30s.
        assert_eq!(
            format_eta(25, 100, Duration::from_secs(10)).as_deref(),
            Some("30s")
        );
        assert_eq!(
            format_eta(10, 100, Duration::from_secs(10)).as_deref(),
            Some("1m30s")
        );
        assert_eq!(format_eta(0, 100, Duration::from_secs(10)), None);
        assert_eq!(format_eta(100, 100, Duration::from_secs(10)), None);
    }

    #[test]
    fn redraws_keep_to_ten_a_second() {
        assert!(!redraw_due(1000, 1000));
        assert!(!redraw_due(1000, 1099));
        assert!(redraw_due(1000, 1100));
        assert!(redraw_due(0, 100));
        // A clock that seems to go back never redraws early.
        assert!(!redraw_due(1000, 900));
    }

    #[test]
    fn only_very_large_blobs_log_quarters_each_once() {
        let total = 200 * MIB;
        assert_eq!(quarter_due(0, total, 0), None);
        assert_eq!(quarter_due(total / 4 - 1, total, 0), None);
        assert_eq!(quarter_due(total / 4, total, 0), Some(1));
        assert_eq!(quarter_due(total / 4 + MIB, total, 1), None);
        // A fast reader may jump past a quarter; the furthest one is logged.
        assert_eq!(quarter_due(total * 3 / 4, total, 1), Some(3));
        // Completion has its own line, not a fourth quarter.
        assert_eq!(quarter_due(total, total, 3), None);
        assert_eq!(quarter_due(total * 2, total, 3), None);
        assert_eq!(quarter_due(90 * MIB, 100 * MIB, 0), None);
    }

    #[test]
    fn plain_lines_name_the_blob_size_and_throughput() {
        let d = digest();
        let b = blob();
        assert_eq!(
            start_line(Verb::Pull, &b, 120 * MIB),
            format!("Pulling blob {d} (120.0 MiB)")
        );
        assert_eq!(
            quarter_line(
                Verb::Push,
                &b,
                2,
                100 * MIB,
                200 * MIB,
                Duration::from_secs(4)
            ),
            format!("Pushing blob {d}: 50% (100.0 MiB of 200.0 MiB, 25.0 MiB/s)")
        );
        assert_eq!(
            done_line(Verb::Pull, &b, 120 * MIB, Duration::from_millis(3200)),
            format!("Pulled blob {d} (120.0 MiB in 3.2s, 37.5 MiB/s)")
        );
        assert_eq!(
            done_line(
                Verb::Fetch,
                &Subject::Context,
                200 * MIB,
                Duration::from_secs(4)
            ),
            "Fetched the build context (200.0 MiB in 4.0s, 50.0 MiB/s)"
        );
    }

    #[test]
    fn bars_fill_in_proportion_and_fit_the_terminal() {
        assert_eq!(bar_cells_text(0, 100, 10), ">         ");
        assert_eq!(bar_cells_text(50, 100, 10), "=====>    ");
        assert_eq!(bar_cells_text(100, 100, 10), "==========");
        assert_eq!(bar_cells_text(0, 0, 4), "====");
        let d = blob();
        let raw = digest();
        let hex = raw.hex();
        let short = &hex[..12];
        let line = bar_line(
            Verb::Push,
            &d,
            60 * MIB,
            120 * MIB,
            Duration::from_secs(2),
            100,
        );
        let cells = format!("{}>{}", "=".repeat(17), " ".repeat(17));
        assert_eq!(
            line,
            format!("{short} Pushing [{cells}] 60.0 MiB/120.0 MiB 30.0 MiB/s ETA 2s")
        );
        // The bar keeps its width while the numbers grow.
        let first = bar_line(Verb::Push, &d, 0, 120 * MIB, Duration::ZERO, 100);
        assert_eq!(first.find(']'), line.find(']'), "{first}");
        // The widest numbers still leave a bar on an 80-column terminal.
        let wide = bar_line(
            Verb::Push,
            &d,
            1000 * MIB - 1,
            1000 * MIB,
            Duration::from_secs(3000),
            80,
        );
        assert!(wide.contains(" [") && wide.len() < 80, "{wide}");
        // Too narrow for a bar: the numbers, cut to the width.
        let narrow = bar_line(Verb::Pull, &d, MIB, 120 * MIB, Duration::ZERO, 40);
        assert_eq!(narrow.len(), 39);
        assert!(narrow.starts_with(&format!("{short} Pulling 1.0 MiB/")));
        // A context's size is unknown until the end: no bar, no ETA.
        let context = bar_line(
            Verb::Fetch,
            &Subject::Context,
            30 * MIB,
            0,
            Duration::from_secs(3),
            80,
        );
        assert_eq!(context, "context Fetching 30.0 MiB 10.0 MiB/s");
    }

    #[test]
    fn a_board_draws_a_line_per_bar_and_sums_up_the_rest() {
        let start = Instant::now();
        let bar = |done| {
            Arc::new(Shared {
                verb: Verb::Pull,
                subject: blob(),
                total: 100 * MIB,
                done: AtomicU64::new(done),
                quarters: AtomicU8::new(0),
                start,
            })
        };
        let mut board = Board::default();
        assert_eq!(board.render(start, 80), (String::new(), 0));
        board.bars = (0..BARS_MAX as u64 + 2).map(|i| bar(i * MIB)).collect();
        let (text, lines) = board.render(start + Duration::from_secs(1), 80);
        assert_eq!(lines, BARS_MAX + 1);
        assert_eq!(text.lines().count(), lines);
        assert!(text.ends_with("and 2 more\n"), "{text}");
        assert!(text.lines().all(|l| l.len() < 80), "{text}");
        assert_eq!(clear_sequence(0), "");
        assert_eq!(clear_sequence(3), "\x1b[3A\r\x1b[J");
    }

    #[test]
    fn bars_only_on_capable_terminals_and_never_with_json_logs() {
        let xterm = Some("xterm-256color");
        assert_eq!(mode_for(true, false, xterm), Mode::Bars);
        assert_eq!(mode_for(false, false, xterm), Mode::Lines);
        assert_eq!(mode_for(true, true, xterm), Mode::Lines);
        assert_eq!(mode_for(true, false, Some("dumb")), Mode::Lines);
        assert_eq!(mode_for(true, false, None), Mode::Lines);
    }

    #[test]
    fn counted_streams_pass_bytes_through_and_count_them() {
        let t = Transfer {
            shared: Some(Arc::new(Shared {
                verb: Verb::Pull,
                subject: blob(),
                total: 100 * MIB,
                done: AtomicU64::new(0),
                quarters: AtomicU8::new(0),
                start: Instant::now(),
            })),
        };
        let done = |t: &Transfer| t.shared.as_ref().unwrap().done.load(Ordering::Relaxed);
        let mut out = Vec::new();
        io::copy(
            &mut Counted::new(&b"hello world"[..], &t),
            &mut Counted::new(&mut out, &t),
        )
        .unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(done(&t), 22);
        t.set_position(5);
        assert_eq!(done(&t), 5);
        // Small blobs are not tracked, yet still stream.
        let small = Transfer::start(Verb::Push, &digest(), THRESHOLD);
        assert!(small.shared.is_none());
        let mut sink = Vec::new();
        io::copy(&mut Counted::new(&b"abc"[..], &small), &mut sink).unwrap();
        assert_eq!(sink, b"abc");
    }
}
