//! The SVG chart (plotters, SVG backend only): where start-up time goes, as one stacked horizontal
//! bar per mode (containers and VMs on their own scales, since they differ ~1000x here), and
//! memory per instance (process outside guest RAM + guest RAM touched).

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::error::BenchError;
use super::report::{ModeKind, ModeResult, Outcome, Report};
use super::table::ms;

/// Chart width in pixels.
const WIDTH: u32 = 1000;
/// Height of one bar row.
const ROW: u32 = 34;
/// Width of the mode-name column.
const LABEL_AREA: u32 = 170;
/// Phase colours, assigned to phases in order of appearance: the colour-blind-safe Okabe-Ito
/// set, then four darker tones for the VM panel's longer phase list.
const PALETTE: [RGBColor; 12] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(120, 120, 120),
    RGBColor(51, 34, 136),
    RGBColor(136, 34, 85),
    RGBColor(17, 119, 51),
    RGBColor(153, 153, 51),
];
/// Memory: the process outside guest RAM.
const PROCESS_COLOR: RGBColor = RGBColor(90, 90, 90);
/// Memory: guest RAM touched.
const GUEST_COLOR: RGBColor = RGBColor(86, 180, 233);
/// Memory: the guest agent's own RSS (part of guest RAM touched).
const AGENT_COLOR: RGBColor = RGBColor(0, 68, 136);

/// One horizontal bar: a label and its stacked segments (colour, value), or a reason why there
/// are no numbers.
struct Bar {
    label: String,
    segments: Vec<(RGBColor, f64)>,
    note: Option<String>,
    value_label: String,
}

/// A panel: a title, an x-axis unit, the legend entries and the bars.
struct Panel {
    title: String,
    legend: Vec<(String, RGBColor)>,
    bars: Vec<Bar>,
}

impl Panel {
    fn height(&self) -> u32 {
        let legend_rows = legend_layout(&self.legend).last().map_or(0, |l| l.0 + 1);
        60 + ROW * self.bars.len().max(1) as u32 + 20 * legend_rows as u32 + 10
    }
}

/// Render `report` as an SVG document.
pub fn render(report: &Report) -> Result<String, BenchError> {
    let panels = panels(report);
    let mut lines = report.header();
    lines.extend(report.density_summary());
    let header = 34 + 14 * lines.len() as u32 + 8;
    let height = header + panels.iter().map(Panel::height).sum::<u32>();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let (head, mut rest) = root.split_vertically(header);
        let title = ("sans-serif", 20).into_font().style(FontStyle::Bold);
        head.draw(&Text::new(
            "kvmbox bench: VM vs container start-up and memory",
            (10, 8),
            title,
        ))
        .map_err(chart_err)?;
        let small = ("sans-serif", 12).into_font();
        for (i, line) in lines.iter().enumerate() {
            head.draw(&Text::new(
                line.clone(),
                (10, 34 + 14 * i as i32),
                small.clone(),
            ))
            .map_err(chart_err)?;
        }
        for panel in &panels {
            let (area, below) = rest.split_vertically(panel.height());
            draw_panel(&area, panel)?;
            rest = below;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn chart_err<E: std::fmt::Debug>(e: E) -> BenchError {
    BenchError::Chart(format!("{e:?}"))
}

/// The panels of `report`: container start-up (ms), VM start-up (s), memory (MiB).
fn panels(report: &Report) -> Vec<Panel> {
    let color = |i: usize| PALETTE[i % PALETTE.len()];
    let mut out = Vec::new();
    for (kind, title, unit, scale) in [
        (
            ModeKind::Container,
            "Container start-up: median per phase (ms)",
            "ms",
            1.0,
        ),
        (ModeKind::Vm, "VM start-up: median per phase (s)", "s", 1e-3),
    ] {
        let modes: Vec<&ModeResult> = report.modes.iter().filter(|m| m.kind == kind).collect();
        if modes.is_empty() {
            continue;
        }
        // Colours are assigned per panel, in order of first appearance.
        let mut phase_names: Vec<String> = Vec::new();
        for p in modes.iter().flat_map(|m| &m.phases) {
            if !phase_names.contains(&p.name) {
                phase_names.push(p.name.clone());
            }
        }
        let mut used: Vec<usize> = Vec::new();
        let bars = modes
            .iter()
            .map(|m| {
                let segments: Vec<(RGBColor, f64)> = m
                    .phases
                    .iter()
                    .filter_map(|p| {
                        let i = phase_names.iter().position(|n| *n == p.name)?;
                        if !used.contains(&i) {
                            used.push(i);
                        }
                        Some((color(i), p.summary.median_ms * scale))
                    })
                    .collect();
                let total: f64 = segments.iter().map(|s| s.1).sum();
                let medians: Vec<(&str, f64)> = m
                    .phases
                    .iter()
                    .map(|p| (p.name.as_str(), p.summary.median_ms))
                    .collect();
                let value_label =
                    format_value(total, unit) + &thin_lead(&medians, total / scale / 100.0);
                Bar {
                    label: m.name.clone(),
                    segments,
                    note: not_measured(&m.outcome),
                    value_label,
                }
            })
            .collect();
        used.sort_unstable();
        out.push(Panel {
            title: title.into(),
            legend: used
                .iter()
                .map(|&i| (phase_names[i].clone(), color(i)))
                .collect(),
            bars,
        });
    }
    let mem: Vec<Bar> = report
        .modes
        .iter()
        .filter_map(|m| {
            let mem = m.memory.as_ref()?;
            let process = mem.rss_kib.median / 1024.0;
            let guest = mem.guest_touched_kib.map_or(0.0, |g| g.median / 1024.0);
            // The agent lives in guest RAM: its part of the guest segment is drawn apart.
            let agent = mem
                .agent_rss_kib
                .map_or(0.0, |a| (a.median / 1024.0).min(guest));
            let mut segments = vec![(PROCESS_COLOR, process)];
            if mem.agent_rss_kib.is_some() {
                segments.push((AGENT_COLOR, agent));
            }
            if mem.guest_touched_kib.is_some() {
                segments.push((GUEST_COLOR, guest - agent));
            }
            Some(Bar {
                label: m.name.clone(),
                segments,
                note: None,
                value_label: format_value(process + guest, "MiB"),
            })
        })
        .collect();
    if !mem.is_empty() {
        let mut legend = vec![(
            "process (VMM, or the container's init) outside guest RAM".into(),
            PROCESS_COLOR,
        )];
        if mem
            .iter()
            .flat_map(|b| &b.segments)
            .any(|s| s.0 == AGENT_COLOR)
        {
            legend.push(("guest agent RSS (in guest RAM)".into(), AGENT_COLOR));
        }
        legend.push(("guest RAM touched".into(), GUEST_COLOR));
        out.push(Panel {
            title: "Memory per instance: median RSS (MiB)".into(),
            legend,
            bars: mem,
        });
    }
    out
}

/// `Some("unavailable: why")` for a mode without numbers.
fn not_measured(outcome: &Outcome) -> Option<String> {
    let (what, why) = match outcome {
        Outcome::Measured => return None,
        Outcome::Unavailable(why) => ("unavailable", why),
        Outcome::Failed(why) => ("failed", why),
    };
    let mut s = format!("{what}: {why}");
    if s.chars().count() > 110 {
        s = s.chars().take(107).collect::<String>() + "...";
    }
    Some(s)
}

/// The leading phases too thin to see (each under `limit_ms`: kvmbox's host side and VMM setup
/// next to an emulated guest kernel boot), for the bar's label: ` (VMM setup 27.1 ms)`, or
/// ` (first 2 phases: 39.0 + 74.6 ms)`; empty when the first phase is visible.
fn thin_lead(phases: &[(&str, f64)], limit_ms: f64) -> String {
    let thin: Vec<&(&str, f64)> = phases.iter().take_while(|p| p.1 < limit_ms).collect();
    match thin.as_slice() {
        [] => String::new(),
        [(name, v)] => format!(" ({name} {} ms)", ms(*v)),
        more => {
            let values: Vec<String> = more.iter().map(|p| ms(p.1)).collect();
            format!(" (first {} phases: {} ms)", more.len(), values.join(" + "))
        }
    }
}

/// `12.3 ms`, `21.6 s`, `23.1 MiB`.
fn format_value(v: f64, unit: &str) -> String {
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// Legend entries laid out in rows: (row, x offset) per entry.
fn legend_layout(legend: &[(String, RGBColor)]) -> Vec<(usize, i32)> {
    let mut out = Vec::new();
    let (mut row, mut x) = (0usize, 0i32);
    for (name, _) in legend {
        let w = 30 + 7 * name.chars().count() as i32;
        if x > 0 && x + w > (WIDTH - LABEL_AREA - 20) as i32 {
            row += 1;
            x = 0;
        }
        out.push((row, x));
        x += w;
    }
    out
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), BenchError>
where
    DB::ErrorType: 'static,
{
    let legend_rows = legend_layout(&panel.legend).last().map_or(0, |l| l.0 + 1) as u32;
    let (plot_area, legend_area) = area.split_vertically(area.dim_in_pixel().1 - 20 * legend_rows);
    let n = panel.bars.len();
    let max = panel
        .bars
        .iter()
        .map(|b| b.segments.iter().map(|s| s.1).sum::<f64>())
        .fold(0.0, f64::max);
    // Room right of the longest bar for the longest value label (~7 px per character).
    let plot_px = f64::from(WIDTH - LABEL_AREA - 30);
    let label_px = panel
        .bars
        .iter()
        .map(|b| 7.0 * (b.value_label.chars().count() + 2) as f64)
        .fold(0.0, f64::max)
        .min(plot_px / 2.0);
    let x_max = if max > 0.0 {
        (max * plot_px / (plot_px - label_px)).max(max * 1.1)
    } else {
        1.0
    };
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(&panel.title, ("sans-serif", 16).into_font())
        .margin(8)
        .x_label_area_size(22)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d(0f64..x_max, (0..n.max(1) - 1).into_segmented())
        .map_err(chart_err)?;
    // Bar i is drawn at y = n - 1 - i so that the first mode is at the top.
    let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(n + 1)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(y) if *y < n => labels[n - 1 - *y].clone(),
            _ => String::new(),
        })
        .x_labels(8)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(chart_err)?;
    for (i, bar) in panel.bars.iter().enumerate() {
        let y = n - 1 - i;
        let mut x0 = 0.0;
        for &(color, v) in &bar.segments {
            let mut rect = Rectangle::new(
                [
                    (x0, SegmentValue::Exact(y)),
                    (x0 + v, SegmentValue::Exact(y + 1)),
                ],
                color.filled(),
            );
            rect.set_margin(6, 6, 0, 0);
            chart
                .draw_series(std::iter::once(rect))
                .map_err(chart_err)?;
            x0 += v;
        }
        let (text, at) = match &bar.note {
            Some(note) => (note.clone(), 0.0),
            None => (bar.value_label.clone(), x0),
        };
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {text}"),
                (at, SegmentValue::CenterOf(y)),
                style,
            )))
            .map_err(chart_err)?;
    }
    let layout = legend_layout(&panel.legend);
    for ((name, color), (row, x)) in panel.legend.iter().zip(layout) {
        let x = LABEL_AREA as i32 + 8 + x;
        let y = 2 + 20 * row as i32;
        legend_area
            .draw(&Rectangle::new(
                [(x, y + 2), (x + 14, y + 14)],
                color.filled(),
            ))
            .map_err(chart_err)?;
        legend_area
            .draw(&Text::new(
                name.clone(),
                (x + 20, y + 1),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(chart_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::test_report;

    /// (x, y, width, fill) of every bar (legend swatches are 12 px high, bars over 15; the
    /// white background is no bar).
    fn bars(svg: &str) -> Vec<(i64, i64, i64, String)> {
        let attr = |tag: &str, name: &str| -> String {
            let key = format!(" {name}=\"");
            let at = tag.find(&key).map(|i| i + key.len()).unwrap_or(0);
            tag[at..].split('"').next().unwrap_or("").to_string()
        };
        svg.split("<rect")
            .skip(1)
            .map(|t| t.split('>').next().unwrap_or(""))
            .filter(|t| attr(t, "height").parse::<i64>().unwrap_or(0) > 15)
            .map(|t| {
                let n = |k| attr(t, k).parse::<i64>().unwrap_or(-1);
                (n("x"), n("y"), n("width"), attr(t, "fill"))
            })
            .filter(|b| b.3 != "#FFFFFF")
            .collect()
    }

    #[test]
    fn chart_has_a_stacked_bar_per_mode_and_a_memory_panel() {
        // Test data (report::tests::test_report), not measurements.
        let svg = render(&test_report()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        for text in [
            "Container start-up: median per phase (ms)",
            "VM start-up: median per phase (s)",
            "Memory per instance: median RSS (MiB)",
            "kvmbox namespace",
            "runc",
            "crun",
            "kvmbox VMM boot",
            "QEMU microvm boot",
            "unavailable: kvmbox: error: vm isolation is not built yet",
            // legends
            "create",
            "delete",
            "guest kernel boot",
            "VMM setup + guest kernel boot",
            "guest RAM touched",
            // totals at the bar ends
            "16.0 ms",
            "80.0 ms",
            "21.6 s (VMM setup 31.0 ms)",
            "26.6 s",
            "24.0 MiB",
            // the host, so that no figure is read out of context
            "host: CPU X (2 CPUs, 24000 MiB), Linux 6.1.0, cgroup v1",
            "guest kernel code is EMULATED",
            "density: 2 kvmbox VMs at once",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // 3 container modes x 4 phases, kvmbox VMM 4 + QEMU 3 phases (kvmbox vm has none),
        // memory: 3 containers x 1 + 2 VMMs x 2.
        let bars = bars(&svg);
        assert_eq!(bars.len(), 12 + 7 + 7, "{bars:?}");
        // Create bars (first colour) from the top: kvmbox namespace 8 ms, runc 40, crun 16.
        let create: Vec<_> = bars.iter().filter(|b| b.3 == "#0072B2").take(3).collect();
        assert!(create[0].1 < create[1].1 && create[1].1 < create[2].1);
        assert!((create[1].2 - 5 * create[0].2).abs() <= 5, "{create:?}");
        assert!((create[2].2 - 2 * create[0].2).abs() <= 3, "{create:?}");
        // Segments of one bar are stacked: each starts where the previous one ends.
        let row: Vec<_> = bars.iter().filter(|b| b.1 == create[0].1).collect();
        assert_eq!(row.len(), 4);
        for pair in row.windows(2) {
            assert!((pair[1].0 - (pair[0].0 + pair[0].2)).abs() <= 1, "{row:?}");
        }
    }

    #[test]
    fn vm_mode_memory_splits_the_agent_out_of_guest_ram() {
        // Test data, not measurements: VMM 2 MiB, guest RAM touched 24 MiB of which the agent
        // 4 MiB.
        let mut report = test_report();
        let runs = vec![vec![("VMM setup", std::time::Duration::from_millis(30))]];
        let mem = crate::bench::memory::MemorySample {
            rss_kib: 2048,
            pss_kib: 1024,
            guest_rss_kib: Some(24 * 1024),
            agent_rss_kib: Some(4 * 1024),
        };
        report.modes[3] = ModeResult::measured(
            "kvmbox vm",
            ModeKind::Vm,
            "0.1.0",
            "run",
            &runs,
            crate::bench::report::MemoryResult::of("VMM + agent", &[mem]),
        );
        let svg = render(&report).unwrap();
        assert!(svg.contains("guest agent RSS (in guest RAM)"));
        assert!(
            svg.contains("26.0 MiB"),
            "the bar's total is VMM + guest RAM"
        );
        let agent: Vec<_> = bars(&svg)
            .into_iter()
            .filter(|b| b.3 == "#004488")
            .collect();
        let guest: Vec<_> = bars(&svg)
            .into_iter()
            .filter(|b| b.3 == "#56B4E9")
            .collect();
        // The kvmbox vm memory row: agent 4 MiB then the other 20 MiB of guest RAM, stacked.
        let row = guest
            .iter()
            .find(|g| agent.iter().any(|a| a.1 == g.1))
            .unwrap();
        let a = agent.iter().find(|a| a.1 == row.1).unwrap();
        assert!((row.2 - 5 * a.2).abs() <= 3, "{a:?} {row:?}");
        assert!((row.0 - (a.0 + a.2)).abs() <= 1, "{a:?} {row:?}");
    }

    #[test]
    fn thin_leading_phases_are_named_in_the_label() {
        let limit = 1000.0;
        assert_eq!(thin_lead(&[("a", 5000.0), ("b", 1.0)], limit), "");
        assert_eq!(
            thin_lead(&[("VMM setup", 27.1), ("kernel", 90_000.0)], limit),
            " (VMM setup 27.1 ms)"
        );
        assert_eq!(
            thin_lead(&[("host", 39.0), ("VMM setup", 74.6), ("k", 9e4)], limit),
            " (first 2 phases: 39.0 + 74.6 ms)"
        );
    }

    #[test]
    fn long_reasons_are_shortened() {
        let long = Outcome::Unavailable("x".repeat(300));
        let s = not_measured(&long).unwrap();
        assert_eq!(s.chars().count(), 110);
        assert!(s.ends_with("..."));
        assert_eq!(not_measured(&Outcome::Measured), None);
    }
}
