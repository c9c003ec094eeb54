//! PNG output: privacy–utility curves (plotters) and image grids (clean vs transformed).
//!
//! Charts are drawn into an RGB buffer with plotters' pure-Rust text rendering (`ab_glyph`) and
//! the DejaVu Sans font compiled in (the `dejavu` crate), then encoded with `image`: building and
//! running need no system font or image library.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{Error, Result};

fn out_err(path: &Path, e: impl ToString) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Registers the compiled-in DejaVu Sans as plotters' `sans-serif`, once.
fn fonts() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Input(
            "the bundled DejaVu Sans font did not load".into(),
        ))
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws a `(w, h)` chart with `draw` (which fills and presents the area), then writes it to
/// `path` as PNG.
fn render_png(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area) -> Result<()>,
) -> Result<()> {
    fonts()?;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| out_err(path, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| out_err(path, "chart buffer of the wrong size"))?;
    img.save(path).map_err(|e| out_err(path, e))
}

/// One labelled series of `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, String)>,
}

/// Line chart with labelled points (e.g. accuracy vs SSIM over α), written as PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| (p.0, p.1)))
        .collect();
    if all.is_empty() {
        return Err(Error::Input("nothing to plot".into()));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    let pad = |a: f64, b: f64| ((b - a).abs() * 0.1).max(1e-3);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    // Point labels are drawn to the right of their points: leave room for the longest one.
    let longest = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.2.chars().count()))
        .max()
        .unwrap_or(0);
    let label_room = (x1 - x0 + 2.0 * px) * (longest as f64 * 7.0 / 700.0);
    render_png(path, (800, 560), |root| {
        root.fill(&WHITE).map_err(|e| out_err(path, e))?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d((x0 - px)..(x1 + px.max(label_room)), (y0 - py)..(y1 + py))
            .map_err(|e| out_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| out_err(path, e))?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, s) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| out_err(path, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(s.points.iter().map(|(x, y, label)| {
                    EmptyElement::at((*x, *y))
                        + Circle::new((0, 0), 4, color.filled())
                        + Text::new(label.clone(), (6, -14), ("sans-serif", 14))
                }))
                .map_err(|e| out_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| out_err(path, e))?;
        Ok(())
    })
}

/// Writes rows of `[C, H, W]` images in `[0, 1]` (C = 1 or 3) as one PNG grid, scaled by `zoom`.
pub fn image_grid(path: &Path, rows: &[Vec<Vec<f32>>], shape: [usize; 3], zoom: u32) -> Result<()> {
    let [c, h, w] = shape;
    if c != 1 && c != 3 {
        return Err(Error::Input(format!(
            "image grids need 1 or 3 channels, got {c}"
        )));
    }
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    if cols == 0 {
        return Err(Error::Input("no images to draw".into()));
    }
    let gap = 2u32;
    let (cw, ch) = (w as u32 * zoom + gap, h as u32 * zoom + gap);
    let mut img = image::RgbImage::from_pixel(
        cols * cw,
        rows.len() as u32 * ch,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (col, pix) in row.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    let v = |k: usize| {
                        (pix[k * h * w + y * w + x].clamp(0.0, 1.0) * 255.0).round() as u8
                    };
                    let rgb = if c == 1 {
                        [v(0); 3]
                    } else {
                        [v(0), v(1), v(2)]
                    };
                    for dy in 0..zoom {
                        for dx in 0..zoom {
                            img.put_pixel(
                                col as u32 * cw + x as u32 * zoom + dx,
                                r as u32 * ch + y as u32 * zoom + dy,
                                image::Rgb(rgb),
                            );
                        }
                    }
                }
            }
        }
    }
    img.save(path).map_err(|e| out_err(path, e))
}

/// Histogram of `values` in `bins` equal-width bins, written as PNG.
pub fn histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
) -> Result<()> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || bins == 0 {
        return Err(Error::Input("nothing to plot".into()));
    }
    let lo = finite.iter().copied().fold(f64::MAX, f64::min);
    let hi = finite.iter().copied().fold(f64::MIN, f64::max);
    let width = ((hi - lo) / bins as f64).max(1e-9);
    let mut counts = vec![0usize; bins];
    for v in &finite {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1) as f64 * 1.1;
    render_png(path, (800, 480), |root| {
        root.fill(&WHITE).map_err(|e| out_err(path, e))?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..(lo + width * bins as f64), 0f64..top)
            .map_err(|e| out_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("tokens")
            .draw()
            .map_err(|e| out_err(path, e))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + width * i as f64;
                Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], BLUE.mix(0.6).filled())
            }))
            .map_err(|e| out_err(path, e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let s = Series {
            name: "SGT".into(),
            points: vec![(0.2, 0.9, "α=0.1".into()), (0.1, 0.85, "α=0.5".into())],
        };
        line_chart(&p, "curve", "SSIM", "accuracy", &[s]).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 1000);
        let g = dir.path().join("g.png");
        image_grid(
            &g,
            &[vec![vec![0.5; 4]; 3], vec![vec![1.0; 4]; 3]],
            [1, 2, 2],
            4,
        )
        .unwrap();
        let im = image::open(&g).unwrap();
        assert_eq!((im.width(), im.height()), (3 * 10, 2 * 10));
        assert!(line_chart(&p, "x", "x", "y", &[]).is_err());
    }
}
