//! Charts as inline SVG, drawn on the server (no script, no external file): horizontal bars,
//! one per label, each carrying its value (`data-label`, `data-value`, a `<title>` for the
//! pointer and screen readers), with the same numbers as the report's tables.

use maud::{html, Markup};

/// Bar height and gap, in SVG units.
const BAR: usize = 18;
const GAP: usize = 6;
/// Width of the label column and of the longest bar.
const LABEL_WIDTH: usize = 190;
const BAR_WIDTH: usize = 420;

/// A horizontal bar chart of `points` (label, value) titled `title`. `id` names it for links
/// and tests.
pub fn bars(id: &str, title: &str, points: &[(String, u64)]) -> Markup {
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let height = points.len() * (BAR + GAP) + GAP;
    let width = LABEL_WIDTH + BAR_WIDTH + 60;
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            @if points.is_empty() {
                p.empty { "Nothing to chart in this window." }
            } @else {
                svg role="img" aria-label=(title) viewBox=(format!("0 0 {width} {height}"))
                    width=(width) height=(height) xmlns="http://www.w3.org/2000/svg" {
                    @for (i, (label, value)) in points.iter().enumerate() {
                        @let y = GAP + i * (BAR + GAP);
                        @let w = ((*value as f64 / max as f64) * BAR_WIDTH as f64).round().max(1.0) as usize;
                        g.bar data-label=(label) data-value=(value) {
                            title { (label) ": " (value) }
                            text x=(LABEL_WIDTH - 8) y=(y + BAR - 4) text-anchor="end" { (label) }
                            rect x=(LABEL_WIDTH) y=(y) width=(w) height=(BAR) {}
                            text x=(LABEL_WIDTH + w + 6) y=(y + BAR - 4) { (value) }
                        }
                    }
                }
            }
        }
    }
}
