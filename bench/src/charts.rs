//! PNG charts of the report (plotters, bitmap backend; text drawn from the bundled DejaVu Sans so
//! no system font lookup is needed).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::{Error, Result};

static FONT: Once = Once::new();
const FONT_NAME: &str = "sans-serif";

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font(FONT_NAME, FontStyle::Normal, bytes).is_err() {
            tracing::warn!("bundled font could not be registered; charts will have no text");
        }
    });
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xd6, 0x27, 0x28),
];

/// The same colour for a system in every chart.
fn system_color(label: &str) -> Option<RGBColor> {
    Some(match label {
        "Strata" => PALETTE[5],
        "rclone" => PALETTE[0],
        "s3fs" => PALETTE[1],
        "object_store GETs" => PALETTE[2],
        "local file" => PALETTE[3],
        _ => return None,
    })
}

fn chart_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Chart {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// One bar group per category, one bar per series; log-scaled values (missing values left out).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> Result<()> {
    register_font();
    let values = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if hi <= 0.0 {
        return Ok(()); // nothing measured: no chart
    }
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let n = categories.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_NAME, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
        .map_err(|e| chart_err(path, e))?;
    let cats = categories.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 && i < cats.len() {
                cats[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .label_style((FONT_NAME, 13))
        .axis_desc_style((FONT_NAME, 15))
        .draw()
        .map_err(|e| chart_err(path, e))?;
    let width = 0.8 / series.len() as f64;
    for (s, (name, vals)) in series.iter().enumerate() {
        let color = system_color(name).unwrap_or(PALETTE[s % PALETTE.len()]);
        let bars = vals.iter().enumerate().filter_map(|(c, v)| {
            let v = (*v)?;
            (v > 0.0).then(|| {
                let x0 = c as f64 + 0.1 + width * s as f64;
                Rectangle::new([(x0, lo), (x0 + width * 0.92, v)], color.filled())
            })
        });
        chart
            .draw_series(bars)
            .map_err(|e| chart_err(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT_NAME, 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))
}

/// One panel per trace: byte hit ratio (%) against cache size (% of footprint), a line per policy.
/// A panel: its title and one (policy, points) line per policy.
pub type Panel = (String, Vec<(String, Vec<(f64, f64)>)>);

pub fn hit_ratio_panels(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font();
    if panels.is_empty() {
        return Ok(());
    }
    let cols = 3;
    let rows = panels.len().div_ceil(cols);
    let root = BitMapBackend::new(path, (1200, 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let areas = root.split_evenly((rows, cols));
    for ((title, lines), area) in panels.iter().zip(areas.iter()) {
        let x_max = lines
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
            .fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT_NAME, 17))
            .margin(10)
            .x_label_area_size(38)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..x_max * 1.05, 0f64..100f64)
            .map_err(|e| chart_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("cache size, % of footprint")
            .y_desc("byte hit ratio, %")
            .label_style((FONT_NAME, 12))
            .axis_desc_style((FONT_NAME, 13))
            .draw()
            .map_err(|e| chart_err(path, e))?;
        for (i, (policy, pts)) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| chart_err(path, e))?
                .label(policy.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| chart_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_NAME, 12))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| chart_err(path, e))?;
    }
    root.present().map_err(|e| chart_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let bars = dir.path().join("bars.png");
        grouped_bars(
            &bars,
            "t",
            "MiB/s",
            &["a".into(), "b".into()],
            &[
                ("x".into(), vec![Some(10.0), Some(2000.0)]),
                ("y".into(), vec![None, Some(5.0)]),
            ],
        )
        .unwrap();
        let lines = dir.path().join("lines.png");
        hit_ratio_panels(
            &lines,
            &[(
                "trace".into(),
                vec![("lru".into(), vec![(1.0, 10.0), (5.0, 40.0)])],
            )],
        )
        .unwrap();
        for p in [bars, lines] {
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", p.display());
            assert!(bytes.len() > 5_000, "{} is suspiciously small", p.display());
        }
    }
}
