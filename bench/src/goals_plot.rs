//! The plot of `bench hotpath`'s goals: one row per goal, its measured value as a bar on the
//! row's own scale (ratios and microseconds side by side), the target as a mark, the bar green
//! when the goal is met and orange when not.

use std::fmt::Write as _;

/// One goal as the plot draws it.
pub struct GoalBar {
    pub label: String,
    pub measured: f64,
    /// The target and whether the measured value must be at least it (`true`) or at most it.
    pub target: Option<(f64, bool)>,
    /// How the values are written: `"×"` for a ratio, `" µs"` for a time.
    pub unit: &'static str,
}

impl GoalBar {
    /// Whether the goal is met (`None` without a target).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|(t, at_least)| if at_least { self.measured >= t } else { self.measured <= t })
    }

    fn value(&self, v: f64) -> String {
        if self.unit == "×" { format!("{v:.2}×") } else { format!("{v:.0}{}", self.unit) }
    }
}

const WIDTH: f64 = 900.0;
const LABEL_WIDTH: f64 = 330.0;
const BAR_SPAN: f64 = 300.0;
const ROW: f64 = 34.0;
const MET: &str = "#2a9d8f";
const NOT_MET: &str = "#e76f51";
const NO_TARGET: &str = "#8d99ae";

/// The SVG of `bars` under `title`.
pub fn svg(title: &str, bars: &[GoalBar]) -> String {
    let height = 50.0 + ROW * bars.len() as f64 + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = 44.0 + ROW * i as f64;
        // Each row on its own scale: the larger of the value and the target fills 80% of it.
        let top = bar.measured.max(bar.target.map_or(0.0, |(t, _)| t)).max(f64::MIN_POSITIVE) / 0.8;
        let x = |v: f64| LABEL_WIDTH + BAR_SPAN * (v / top).clamp(0.0, 1.0);
        let colour = match bar.met() {
            Some(true) => MET,
            Some(false) => NOT_MET,
            None => NO_TARGET,
        };
        let _ = writeln!(out, "<text x=\"10\" y=\"{}\">{}</text>", y + 15.0, escape(&bar.label));
        let _ = writeln!(
            out,
            "<rect class=\"bar\" x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{:.1}\" height=\"20\" fill=\"{colour}\"/>",
            x(bar.measured) - LABEL_WIDTH
        );
        let mut caption = bar.value(bar.measured);
        if let Some((target, at_least)) = bar.target {
            let tx = x(target);
            let _ = writeln!(
                out,
                "<line class=\"target\" x1=\"{tx:.1}\" y1=\"{}\" x2=\"{tx:.1}\" y2=\"{}\" stroke=\"black\" stroke-width=\"2\"/>",
                y - 3.0,
                y + 23.0
            );
            let _ = write!(caption, " (target {} {})", if at_least { "≥" } else { "≤" }, bar.value(target));
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            LABEL_WIDTH + BAR_SPAN + 8.0,
            y + 15.0,
            escape(&caption)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn width_of(svg: &str, nth: usize) -> f64 {
        let line = svg.lines().filter(|l| l.contains("class=\"bar\"")).nth(nth).unwrap();
        let at = line.find("width=\"").unwrap() + 7;
        line[at..line[at..].find('"').unwrap() + at].parse().unwrap()
    }

    #[test]
    fn each_goal_is_a_bar_on_its_own_scale_with_its_target_and_colour() {
        let bars = [
            GoalBar { label: "tiny c=64 gateway / floor".into(), measured: 0.5, target: Some((0.7, true)), unit: "×" },
            GoalBar {
                label: "c=1 p50 gateway − floor".into(),
                measured: 10.0,
                target: Some((20.0, false)),
                unit: " µs",
            },
            GoalBar { label: "gateway / Triton <peer>".into(), measured: 6.1, target: None, unit: "×" },
        ];
        let svg = svg("hot path & goals", &bars);
        assert!(svg.contains("hot path &amp; goals") && svg.contains("gateway / Triton &lt;peer&gt;"));
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert_eq!(svg.matches("class=\"target\"").count(), 2, "a mark per goal with a target");
        // 0.5 against a 0.7 target: the target fills 80% of the row, the bar 0.5/0.7 of that.
        assert!((width_of(&svg, 0) - BAR_SPAN * 0.8 * 0.5 / 0.7).abs() < 0.2, "{}", width_of(&svg, 0));
        // 10 µs under a 20 µs ceiling: met, half the target's length.
        assert!((width_of(&svg, 1) - BAR_SPAN * 0.4).abs() < 0.2);
        assert!((width_of(&svg, 2) - BAR_SPAN * 0.8).abs() < 0.2, "no target: the value fills 80%");
        let fills: Vec<&str> =
            svg.lines().filter(|l| l.contains("class=\"bar\"")).map(|l| l.split("fill=\"").nth(1).unwrap()).collect();
        assert!(fills[0].starts_with(NOT_MET) && fills[1].starts_with(MET) && fills[2].starts_with(NO_TARGET));
        assert!(svg.contains("0.50× (target ≥ 0.70×)") && svg.contains("10 µs (target ≤ 20 µs)"));
    }
}
