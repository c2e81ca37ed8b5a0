//! The PNG bar chart of kiln's ratio to the faster peer, per case, cold and
//! warm, with the 0.5 target and the 1.0 line. Drawn by hand into an RGB
//! buffer (text with ab_glyph, from Debian's DejaVu Sans) to keep xtask's
//! dependencies small.

use super::builders::Mode;
use super::report::{RatioRow, TARGET_RATIO};
use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use anyhow::{Context, Result};
use std::fs;
use std::io::BufWriter;
use std::path::Path;

/// The chart's font (Debian package `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 540;
const LEFT: u32 = 70;
const RIGHT: u32 = 20;
const TOP: u32 = 70;
const BOTTOM: u32 = 70;

/// An RGB color.
type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
/// Cold bars.
pub const COLD: Rgb = [52, 101, 164];
/// Warm bars.
pub const WARM: Rgb = [245, 121, 0];
/// The 0.5 target line.
pub const TARGET: Rgb = [0, 140, 60];
/// The 1.0 line: as fast as the faster peer.
pub const PARITY: Rgb = [204, 0, 0];

/// An RGB image.
pub struct Canvas {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes.
    pub pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        Canvas {
            width,
            height,
            pixels: WHITE.repeat((width * height) as usize),
        }
    }

    /// The color at (`x`, `y`).
    #[cfg(test)]
    pub fn pixel(&self, x: u32, y: u32) -> Rgb {
        let i = ((y * self.width + x) * 3) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Mixes `color` into (`x`, `y`) by `alpha` (0..=1); outside is ignored.
    fn blend(&mut self, x: i64, y: i64, color: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let i = ((y as u32 * self.width + x as u32) * 3) as usize;
        let alpha = alpha.clamp(0.0, 1.0);
        for (channel, value) in color.iter().enumerate() {
            let old = f32::from(self.pixels[i + channel]);
            self.pixels[i + channel] = (old + (f32::from(*value) - old) * alpha).round() as u8;
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb) {
        for y in y0.min(y1)..y0.max(y1) {
            for x in x0.min(x1)..x0.max(x1) {
                self.blend(x, y, color, 1.0);
            }
        }
    }

    /// A horizontal line, dashed when `dash` is non-zero.
    fn hline(&mut self, x0: i64, x1: i64, y: i64, thickness: i64, color: Rgb, dash: i64) {
        for x in x0..x1 {
            if dash == 0 || (x - x0) / dash % 2 == 0 {
                for t in 0..thickness {
                    self.blend(x, y + t, color, 1.0);
                }
            }
        }
    }
}

/// Where text is anchored horizontally.
#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

struct Text<'f> {
    font: FontRef<'f>,
}

impl Text<'_> {
    fn width(&self, text: &str, size: f32) -> f32 {
        let scaled = self.font.as_scaled(PxScale::from(size));
        text.chars()
            .map(|c| scaled.h_advance(scaled.glyph_id(c)))
            .sum()
    }

    /// Draws `text` with its baseline at `y`.
    fn draw(
        &self,
        canvas: &mut Canvas,
        text: &str,
        (x, y): (f32, f32),
        size: f32,
        align: Align,
        color: Rgb,
    ) {
        let mut pen = match align {
            Align::Left => x,
            Align::Center => x - self.width(text, size) / 2.0,
            Align::Right => x - self.width(text, size),
        };
        let scaled = self.font.as_scaled(PxScale::from(size));
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            let glyph = id.with_scale_and_position(size, point(pen, y));
            pen += scaled.h_advance(id);
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    canvas.blend(
                        bounds.min.x as i64 + i64::from(gx),
                        bounds.min.y as i64 + i64::from(gy),
                        color,
                        coverage,
                    );
                });
            }
        }
    }
}

/// The top of the ratio axis: at least 1.25, above the largest ratio, in
/// steps of 0.25.
pub fn axis_max(rows: &[RatioRow]) -> f64 {
    let largest = rows
        .iter()
        .filter_map(|r| r.ratio.map(|(ratio, _)| ratio))
        .fold(0.0, f64::max);
    ((largest * 1.1 / 0.25).ceil() * 0.25).max(1.25)
}

/// The y pixel of `ratio` on an axis from 0 to `max`.
fn y_of(ratio: f64, max: f64) -> i64 {
    let plot = f64::from(HEIGHT - TOP - BOTTOM);
    (f64::from(HEIGHT - BOTTOM) - ratio / max * plot).round() as i64
}

/// The x pixel range of the bar of case `index` (of `cases`) and `mode`.
fn bar_span(index: usize, cases: usize, mode: Mode) -> (i64, i64) {
    let group = f64::from(WIDTH - LEFT - RIGHT) / cases.max(1) as f64;
    let bar = group * 0.32;
    let center = f64::from(LEFT) + group * (index as f64 + 0.5);
    let x0 = match mode {
        Mode::Cold => center - bar - 2.0,
        Mode::Warm => center + 2.0,
    };
    (x0.round() as i64, (x0 + bar).round() as i64)
}

/// Draws the chart of `rows` (cold and warm per case, in case order) with
/// the font file's bytes `font`.
pub fn draw(rows: &[RatioRow], title: &str, font: &[u8]) -> Result<Canvas> {
    let text = Text {
        font: FontRef::try_from_slice(font).context("the chart's font is not a TrueType font")?,
    };
    let mut canvas = Canvas::new(WIDTH, HEIGHT);
    let max = axis_max(rows);
    let (left, right) = (i64::from(LEFT), i64::from(WIDTH - RIGHT));

    let mut tick = 0.0;
    while tick <= max + 1e-9 {
        let y = y_of(tick, max);
        canvas.hline(left, right, y, 1, GRID, 0);
        text.draw(
            &mut canvas,
            &format!("{tick:.2}"),
            ((LEFT - 8) as f32, y as f32 + 5.0),
            14.0,
            Align::Right,
            BLACK,
        );
        tick += 0.25;
    }

    let mut cases: Vec<&str> = Vec::new();
    for row in rows {
        if !cases.contains(&row.case) {
            cases.push(row.case);
        }
    }
    for (index, case) in cases.iter().enumerate() {
        let (x0, _) = bar_span(index, cases.len(), Mode::Cold);
        let (_, x1) = bar_span(index, cases.len(), Mode::Warm);
        let center = (x0 + x1) as f32 / 2.0;
        text.draw(
            &mut canvas,
            case,
            (center, (HEIGHT - BOTTOM + 22) as f32),
            15.0,
            Align::Center,
            BLACK,
        );
        for mode in Mode::ALL {
            let Some(row) = rows.iter().find(|r| r.case == *case && r.mode == mode) else {
                continue;
            };
            let (bx0, bx1) = bar_span(index, cases.len(), mode);
            let label_x = (bx0 + bx1) as f32 / 2.0;
            match row.ratio {
                Some((ratio, _)) => {
                    let top = y_of(ratio, max);
                    let color = if mode == Mode::Cold { COLD } else { WARM };
                    canvas.rect(bx0, top, bx1, y_of(0.0, max), color);
                    text.draw(
                        &mut canvas,
                        &format!("{ratio:.2}"),
                        (label_x, top as f32 - 5.0),
                        13.0,
                        Align::Center,
                        BLACK,
                    );
                }
                None => text.draw(
                    &mut canvas,
                    "n/a",
                    (label_x, y_of(0.0, max) as f32 - 5.0),
                    13.0,
                    Align::Center,
                    BLACK,
                ),
            }
        }
    }

    canvas.hline(left, right, y_of(0.0, max), 2, BLACK, 0);
    canvas.hline(left, right, y_of(1.0, max), 2, PARITY, 0);
    canvas.hline(left, right, y_of(TARGET_RATIO, max), 2, TARGET, 10);
    text.draw(
        &mut canvas,
        title,
        ((WIDTH / 2) as f32, 28.0),
        20.0,
        Align::Center,
        BLACK,
    );
    // The legend, centred under the title; the lines are named here rather
    // than on the plot, where bars would cover their labels.
    let entries = [
        ("cold", COLD, None),
        ("warm", WARM, None),
        ("1.0: as fast as the faster peer", PARITY, Some(0)),
        ("0.5: the target", TARGET, Some(5)),
    ];
    let widths: Vec<f32> = entries
        .iter()
        .map(|(label, _, _)| 28.0 + text.width(label, 14.0) + 24.0)
        .collect();
    let legend_y = 52;
    let mut x = (WIDTH as f32 - widths.iter().sum::<f32>()) / 2.0;
    for ((label, color, dash), width) in entries.iter().zip(&widths) {
        let x0 = x as i64;
        match dash {
            None => canvas.rect(x0, legend_y - 11, x0 + 20, legend_y + 3, *color),
            Some(dash) => canvas.hline(x0, x0 + 20, legend_y - 5, 2, *color, *dash),
        }
        text.draw(
            &mut canvas,
            label,
            (x + 28.0, legend_y as f32 + 2.0),
            14.0,
            Align::Left,
            BLACK,
        );
        x += width;
    }
    Ok(canvas)
}

/// Writes `canvas` as a PNG file at `path`.
pub fn write_png(canvas: &Canvas, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), canvas.width, canvas.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(&canvas.pixels)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The chart's font, read from [`FONT_PATH`].
pub fn load_font() -> Result<Vec<u8>> {
    fs::read(FONT_PATH).with_context(|| {
        format!("cannot read the chart's font {FONT_PATH}: install the Debian package `fonts-dejavu-core`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::builders::Builder;

    fn row(case: &'static str, mode: Mode, ratio: Option<f64>) -> RatioRow {
        RatioRow {
            case,
            mode,
            ratio: ratio.map(|r| (r, Builder::Buildah)),
            target: 0.5,
        }
    }

    #[test]
    fn the_axis_fits_the_largest_ratio() {
        assert_eq!(axis_max(&[row("a", Mode::Cold, Some(0.3))]), 1.25);
        assert_eq!(axis_max(&[row("a", Mode::Cold, Some(2.0))]), 2.25);
        assert_eq!(axis_max(&[row("a", Mode::Cold, None)]), 1.25);
    }

    #[test]
    fn bars_and_lines_are_where_the_ratios_say() {
        let rows = [
            row("a", Mode::Cold, Some(0.8)),
            row("a", Mode::Warm, Some(0.2)),
            row("b", Mode::Cold, None),
            row("b", Mode::Warm, Some(1.1)),
        ];
        let font = load_font().unwrap();
        let canvas = draw(&rows, "test", &font).unwrap();
        let max = axis_max(&rows);
        let middle = |index, mode| {
            let (x0, x1) = bar_span(index, 2, mode);
            ((x0 + x1) / 2) as u32
        };
        let y = |ratio: f64| y_of(ratio, max) as u32;
        // Inside each bar, away from the lines drawn over it.
        assert_eq!(canvas.pixel(middle(0, Mode::Cold), y(0.3)), COLD);
        assert_eq!(canvas.pixel(middle(0, Mode::Warm), y(0.1)), WARM);
        assert_eq!(canvas.pixel(middle(1, Mode::Warm), y(0.75)), WARM);
        // Above a bar's top: background or grid, no bar.
        assert_ne!(canvas.pixel(middle(0, Mode::Warm), y(0.3)), WARM);
        assert_ne!(canvas.pixel(middle(1, Mode::Cold), y(0.3)), COLD);
        // The parity line crosses the whole plot; the target line is dashed.
        assert_eq!(canvas.pixel(LEFT + 1, y(1.0)), PARITY);
        assert_eq!(canvas.pixel(LEFT + 1, y(0.5)), TARGET);
        assert_ne!(canvas.pixel(LEFT + 11, y(0.5)), TARGET);

        let path = std::env::temp_dir().join(format!("xtask-chart-{}.png", std::process::id()));
        write_png(&canvas, &path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (WIDTH, HEIGHT));
        fs::remove_file(&path).unwrap();
    }
}
