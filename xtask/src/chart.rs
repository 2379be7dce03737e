//! `chart.svg`: one horizontal bar per figure that has a baseline, its length
//! the ratio to that baseline, with a tick at the §9 target.
//!
//! Hand-written SVG rather than a plotting crate: the chart is a few dozen
//! rectangles and lines, and xtask should build in seconds.

use std::fmt::Write as _;

use crate::report::{Figure, Records, Verdict};

const WIDTH: f64 = 900.0;
/// Labels are right-aligned to end here.
const LABEL_END: f64 = 380.0;
/// Labels longer than this are cut (the full text is in the bar's tooltip).
const LABEL_CHARS: usize = 58;
const PLOT_LEFT: f64 = 390.0;
/// Leaves room after the longest bar for its value.
const PLOT_RIGHT: f64 = 830.0;
/// Where the first bar row starts, below the title, legend and axis labels.
const TOP: f64 = 84.0;
const ROW: f64 = 24.0;
const BAR: f64 = 14.0;
const FOOTER: f64 = 44.0;
/// Ratios above this are drawn to the axis end and marked as cut. The §9
/// targets lie between 0.4 and 1; one figure far ahead of its baseline (the
/// herd beside a poll-every-500-ms approach) must not squash every other bar.
const AXIS_CAP: f64 = 2.0;

const MEETS: &str = "#2e7d32";
const MISSES: &str = "#c62828";
const UNJUDGED: &str = "#9e9e9e";

/// The chart of `records`' figures, in the report's order.
pub(crate) fn svg(records: &Records) -> String {
    // One row per figure with a ratio, a rule between groups.
    let rows: Vec<(bool, &Figure, f64)> = records
        .groups()
        .into_iter()
        .flat_map(|(_, figures)| {
            figures
                .into_iter()
                .filter_map(|figure| Some((figure, figure.ratio()?)))
                .enumerate()
                .map(|(index, (figure, ratio))| (index == 0, figure, ratio))
        })
        .collect();

    let (axis_max, step) = axis(
        rows.iter()
            .flat_map(|(_, figure, ratio)| [Some(*ratio), figure.target])
            .flatten(),
    );
    let plot_bottom = TOP + rows.len() as f64 * ROW;
    let height = plot_bottom + FOOTER;
    let x =
        |ratio: f64| PLOT_LEFT + ratio.clamp(0.0, axis_max) / axis_max * (PLOT_RIGHT - PLOT_LEFT);

    let mut out = String::new();
    // `write!` into a `String` cannot fail, hence the ignored results.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">"#
    );
    let _ = writeln!(
        out,
        "<style>text {{ font-family: sans-serif; font-size: 12px; fill: #222; }} \
         .title {{ font-size: 15px; font-weight: bold; }} .small {{ font-size: 11px; fill: #555; }}</style>"
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text class="title" x="20" y="26">onceflight benchmarks: each figure's ratio to its baseline (higher is better)</text>"#
    );
    legend(&mut out);

    if rows.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="20" y="{}">No figure has a baseline, so there is nothing to chart.</text>"#,
            TOP + 16.0
        );
        out.push_str("</svg>\n");
        return out;
    }

    // The axis: a grid line and label per step, the baseline (1×) darker.
    let steps = (axis_max / step).round() as u32;
    for index in 0..=steps {
        let tick = f64::from(index) * step;
        let (stroke, width) = if (tick - 1.0).abs() < 1e-9 {
            ("#555", 1.5)
        } else {
            ("#ddd", 1.0)
        };
        let tx = x(tick);
        let _ = writeln!(
            out,
            r#"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{plot_bottom:.1}" stroke="{stroke}" stroke-width="{width}"/>"#,
            TOP - 6.0
        );
        let _ = writeln!(
            out,
            r#"<text class="small" x="{tx:.1}" y="{:.1}" text-anchor="middle">{tick}×</text>"#,
            TOP - 10.0
        );
    }

    for (index, (first_of_group, figure, ratio)) in rows.iter().enumerate() {
        let top = TOP + index as f64 * ROW;
        let bar_top = top + (ROW - BAR) / 2.0;
        if *first_of_group && index > 0 {
            let _ = writeln!(
                out,
                r##"<line x1="20" y1="{top:.1}" x2="{PLOT_RIGHT}" y2="{top:.1}" stroke="#bbb" stroke-dasharray="3 3"/>"##
            );
        }

        let label = figure.label();
        let _ = writeln!(
            out,
            r#"<text x="{LABEL_END}" y="{:.1}" text-anchor="end">{}</text>"#,
            bar_top + BAR - 3.0,
            escape(&shorten(&label, LABEL_CHARS))
        );

        let verdict = figure.verdict();
        let (class, fill) = match verdict {
            Some(Verdict::Meets) => ("meets", MEETS),
            Some(Verdict::Misses) => ("misses", MISSES),
            None => ("unjudged", UNJUDGED),
        };
        let end = x(*ratio);
        let tooltip = match (figure.target, verdict) {
            (Some(target), Some(Verdict::Meets)) => {
                format!("{label}: {ratio:.2}× baseline, meets the target {target}")
            }
            (Some(target), _) => {
                format!("{label}: {ratio:.2}× baseline, misses the target {target}")
            }
            (None, _) => format!("{label}: {ratio:.2}× baseline, no target"),
        };
        let _ = writeln!(
            out,
            r#"<rect class="bar {class}" x="{PLOT_LEFT}" y="{bar_top:.1}" width="{:.1}" height="{BAR}" fill="{fill}"><title>{}</title></rect>"#,
            end - PLOT_LEFT,
            escape(&tooltip)
        );
        if *ratio > axis_max {
            // Two white slashes across the bar's end: it goes on further.
            for offset in [16.0, 10.0] {
                let _ = writeln!(
                    out,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{bar_top:.1}" stroke="white" stroke-width="2"/>"#,
                    end - offset - 3.0,
                    bar_top + BAR,
                    end - offset + 3.0
                );
            }
        }
        // After the bar, or after the target tick when that lies further
        // right, so the tick never hides the number.
        let label_x = figure.target.map_or(end, |target| end.max(x(target) + 1.0)) + 4.0;
        let _ = writeln!(
            out,
            r#"<text class="small" x="{label_x:.1}" y="{:.1}">{ratio:.2}×</text>"#,
            bar_top + BAR - 3.0
        );
        if let Some(target) = figure.target {
            let tx = x(target);
            let _ = writeln!(
                out,
                r##"<line class="target" x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#111" stroke-width="2.5"/>"##,
                bar_top - 3.0,
                bar_top + BAR + 3.0
            );
        }
    }

    let _ = writeln!(
        out,
        r#"<text class="small" x="20" y="{:.1}">Ratio = ours ÷ baseline (throughput) or baseline ÷ ours (latency), baseline measured in the same run on the same store. Cut bars go on past {AXIS_CAP}×.</text>"#,
        plot_bottom + 26.0
    );
    out.push_str("</svg>\n");
    out
}

/// What the colours and the tick mean.
fn legend(out: &mut String) {
    let mut x = 20.0;
    for (fill, text) in [
        (MEETS, "meets its §9 target"),
        (MISSES, "misses its §9 target"),
        (UNJUDGED, "no target"),
    ] {
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="40" width="12" height="12" fill="{fill}"/><text x="{}" y="50">{text}</text>"#,
            x + 16.0
        );
        x += 170.0;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{x}" y1="38" x2="{x}" y2="54" stroke="#111" stroke-width="2.5"/><text x="{}" y="50">target</text>"##,
        x + 6.0
    );
}

/// The axis end and grid step: the axis reaches past every ratio and target
/// and always shows the baseline, 1×; beyond [`AXIS_CAP`] it stops there.
fn axis(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let top = values
        .filter(|value| value.is_finite())
        .fold(1.0_f64, f64::max);
    if top > AXIS_CAP {
        return (AXIS_CAP, 0.5);
    }
    let step = if top <= 1.5 { 0.25 } else { 0.5 };
    // A little room past the longest bar, so its end is visible.
    let axis_max = (top * 1.05 / step).ceil() * step;
    (axis_max, step)
}

/// `text` cut to at most `max` characters, ending in "…" when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// `text` safe inside an XML element or attribute: markup characters become
/// entities, and control characters, which XML 1.0 cannot hold even as
/// entities, become U+FFFD.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::figure;

    #[test]
    fn escape_makes_text_safe_for_xml() {
        assert_eq!(
            escape(r#"a<b & "c" 'd'> e"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt; e",
            "markup characters"
        );
        assert_eq!(escape("x\u{1}y\nz"), "x\u{FFFD}y z", "control characters");
        assert_eq!(
            escape("≥ 0.8 × baseline"),
            "≥ 0.8 × baseline",
            "Unicode kept"
        );
    }

    #[test]
    fn one_bar_per_figure_with_a_baseline() {
        let mut meets = figure("fresh <keys>", "postgres", 9.0, Some(10.0));
        meets.concurrency = Some(8);
        meets.target = Some(0.8);
        let mut misses = figure("fresh <keys>", "redis", 3.0, Some(10.0));
        misses.target = Some(0.4);
        let unjudged = figure("hot key", "memory", 12.0, Some(10.0));
        let no_baseline = figure("hot key", "memory", 12.0, None);
        let mut far_ahead = figure("herd", "postgres", 2.0, Some(500.0));
        far_ahead.higher_is_better = false;
        far_ahead.target = Some(1.0);
        let records = Records {
            figures: vec![meets, misses, unjudged, no_baseline, far_ahead],
            checks: Vec::new(),
        };

        let chart = svg(&records);
        assert_eq!(
            chart.matches(r#"class="bar "#).count(),
            4,
            "one bar per figure with a baseline:\n{chart}"
        );
        assert_eq!(chart.matches(r#"class="bar meets""#).count(), 2, "meets");
        assert_eq!(chart.matches(r#"class="bar misses""#).count(), 1, "misses");
        assert_eq!(
            chart.matches(r#"class="bar unjudged""#).count(),
            1,
            "no target"
        );
        assert_eq!(
            chart.matches(r#"class="target""#).count(),
            3,
            "a tick per figure with a target"
        );
        assert!(
            chart.contains("fresh &lt;keys&gt; · postgres · 8 callers"),
            "labels are escaped and name group, store and callers:\n{chart}"
        );
        assert!(!chart.contains("<keys>"), "no raw markup from labels");
        assert!(chart.contains("250.00×"), "a cut bar still shows its value");
        assert!(
            chart.starts_with("<svg") && chart.ends_with("</svg>\n"),
            "one SVG"
        );
    }

    #[test]
    fn a_chart_without_baselines_says_so() {
        let records = Records {
            figures: vec![figure("g", "memory", 1.0, None)],
            checks: Vec::new(),
        };
        let chart = svg(&records);
        assert!(!chart.contains(r#"class="bar "#), "no bars");
        assert!(chart.contains("nothing to chart"), "says why:\n{chart}");
    }

    #[test]
    fn axis_covers_ratios_and_targets_and_shows_the_baseline() {
        assert_eq!(axis([0.5, 0.8].into_iter()), (1.25, 0.25), "baseline shown");
        assert_eq!(
            axis([1.3].into_iter()),
            (1.5, 0.25),
            "past the largest ratio"
        );
        assert_eq!(
            axis([1.7].into_iter()),
            (2.0, 0.5),
            "coarser steps further out"
        );
        assert_eq!(
            axis([1.96].into_iter()),
            (2.5, 0.5),
            "room past a bar near the cap"
        );
        assert_eq!(axis([250.0].into_iter()), (2.0, 0.5), "capped");
    }
}
