//! Tables that fit the terminal: cells wrap only between words, a word too long for its
//! column is cut short with `…` (never split over two lines), and when even that does not fit,
//! the least needed columns are left out and named. The layout is decided here, before the
//! table is drawn (comfy-table's own `Dynamic` arrangement splits words to fit a column).
//!
//! A table drawn with `UTF8_FULL_CONDENSED` takes one border character per column plus one,
//! and a space either side of each cell: `1 + Σ (width + 3)`.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// The narrowest a cut-short column gets before columns are left out.
const CUT_MIN: usize = 10;

/// The width to fit: `COLUMNS` when set to a number, else the terminal's on stdout, else none
/// (piped: nothing is wrapped or cut).
pub fn output_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return Some(n);
    }
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return comfy_table::Table::new().width().map(usize::from);
    }
    None
}

/// A table's text before it is drawn, and how its columns may give way.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    wrap: Vec<usize>,
    cut: Vec<usize>,
    drop: Vec<usize>,
    headless: bool,
}

/// A [`Grid`] laid out for a width: its cells wrapped (`\n` between lines) and cut short,
/// and the headers of the columns left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// The header of each column kept.
    pub header: Vec<String>,
    /// The rows, the cells of the columns kept.
    pub rows: Vec<Vec<String>>,
    /// The columns left out, by header.
    pub left_out: Vec<String>,
}

impl Grid {
    /// A table with these column headers; every column may wrap between words and then be cut
    /// short, the last first, and none is left out, until [`Self::give_way`] says otherwise.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            wrap: (0..header.len()).rev().collect(),
            cut: (0..header.len()).rev().collect(),
            ..Self::default()
        }
    }

    /// A table of `columns` columns without a header (`show`'s fields and values); the last
    /// column wraps first.
    pub fn headless(columns: usize) -> Self {
        Self {
            headless: true,
            ..Self::new(&vec![""; columns])
        }
    }

    /// Whether it has no header.
    pub fn is_headless(&self) -> bool {
        self.headless
    }

    /// Adds a row: as many cells as headers (missing ones are empty, extra ones dropped).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The order columns give way in, by index, least needed first: `cut` may be cut short
    /// with `…` (down to 10 columns), then `drop` may be left out.
    pub fn give_way(mut self, cut: &[usize], drop: &[usize]) -> Self {
        // Those that may be cut wrap first too; the others after, right to left.
        let mut wrap: Vec<usize> = cut.to_vec();
        wrap.extend((0..self.header.len()).rev().filter(|i| !cut.contains(i)));
        self.wrap = wrap;
        self.cut = cut.to_vec();
        self.drop = drop.to_vec();
        self
    }

    /// [`Self::give_way`] by header; headers not in the grid are passed over.
    pub fn give_way_named(self, cut: &[&str], drop: &[&str]) -> Self {
        let at = |names: &[&str]| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| self.header.iter().position(|h| h == n))
                .collect()
        };
        let (cut, drop) = (at(cut), at(drop));
        self.give_way(&cut, &drop)
    }

    /// Laid out within `width` (`None`: as it is). Every line of the drawn table is then at
    /// most `width` wide unless the columns that cannot be left out do not fit at 3 each.
    pub fn fit(&self, width: Option<usize>) -> Fitted {
        let mut kept: Vec<usize> = (0..self.header.len()).collect();
        let Some(width) = width else {
            return self.laid_out(&kept, &self.natural());
        };
        let mut drop = self.drop.iter();
        loop {
            let mut w = self.natural();
            let over = |w: &[usize]| table_width(&kept, w).saturating_sub(width);
            // Wrapping between words loses nothing.
            for &i in self.wrap.iter().filter(|i| kept.contains(i)) {
                let min = self.longest_word(i);
                w[i] = w[i].saturating_sub(over(&w)).max(min).min(w[i]);
            }
            // Then the long words of low columns are cut short.
            for &i in self.cut.iter().filter(|i| kept.contains(i)) {
                w[i] = w[i].saturating_sub(over(&w)).max(CUT_MIN).min(w[i]);
            }
            if over(&w) == 0 {
                // What is left over goes back to the columns that gave way, the most needed
                // first.
                for &i in self.wrap.iter().rev().filter(|i| kept.contains(i)) {
                    let spare = width - table_width(&kept, &w);
                    w[i] = (w[i] + spare).min(self.natural()[i]);
                }
                return self.laid_out(&kept, &w);
            }
            match drop.next() {
                Some(i) => kept.retain(|k| k != i),
                None => {
                    // Nothing left to leave out: every column gives way, to 3 each.
                    for &i in self.wrap.iter().filter(|i| kept.contains(i)) {
                        w[i] = w[i].saturating_sub(over(&w)).max(3).min(w[i]);
                    }
                    return self.laid_out(&kept, &w);
                }
            }
        }
    }

    fn cells(&self, i: usize) -> impl Iterator<Item = &str> {
        std::iter::once(self.header[i].as_str()).chain(self.rows.iter().map(move |r| r[i].as_str()))
    }

    fn natural(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|i| {
                self.cells(i)
                    .flat_map(str::lines)
                    .map(UnicodeWidthStr::width)
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn longest_word(&self, i: usize) -> usize {
        self.cells(i)
            .flat_map(str::split_whitespace)
            .map(UnicodeWidthStr::width)
            .max()
            .unwrap_or(0)
    }

    fn laid_out(&self, kept: &[usize], w: &[usize]) -> Fitted {
        Fitted {
            header: kept.iter().map(|&i| wrap(&self.header[i], w[i])).collect(),
            rows: self
                .rows
                .iter()
                .map(|r| kept.iter().map(|&i| wrap(&r[i], w[i])).collect())
                .collect(),
            // An empty column left out is not worth a word.
            left_out: (0..self.header.len())
                .filter(|i| !kept.contains(i))
                .filter(|&i| self.rows.iter().any(|r| !r[i].trim().is_empty()))
                .map(|i| self.header[i].clone())
                .collect(),
        }
    }
}

/// How wide the drawn table of columns `kept` at widths `w` is.
fn table_width(kept: &[usize], w: &[usize]) -> usize {
    1 + kept.iter().map(|&i| w[i] + 3).sum::<usize>()
}

/// `text` in lines of at most `width`, broken only between words; a word wider than that is
/// cut short, ending in `…`.
pub fn wrap(text: &str, width: usize) -> String {
    let width = width.max(1);
    let mut lines: Vec<String> = Vec::new();
    for source in text.lines() {
        let mut line = String::new();
        for word in source.split_whitespace() {
            let word = cut(word, width);
            if !line.is_empty() && line.width() + 1 + word.width() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// `word` cut to `width` columns, its last one `…` when cut.
pub fn cut(word: &str, width: usize) -> String {
    if word.width() <= width {
        return word.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in word.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_like() -> Grid {
        let mut g = Grid::new(&[
            "ID",
            "NAME",
            "STATUS",
            "TABLE",
            "TARGET",
            "PROGRESS",
            "ROWS",
            "ROWS/S",
            "ETA",
            "BATCH",
            "JOBS ok/failed/all",
            "NOTE",
        ]);
        g.row(
            [
                "1",
                "backfill_email_lower_for_every_user",
                "finished",
                "users.id",
                "postgres://app@db.internal.example.com:5432/shop",
                "100.0%",
                "2,000,000 (table est. 1,983,738)",
                "20,908",
                "-",
                "20,000 / 1,000",
                "150/0/150",
                "",
            ]
            .map(String::from)
            .to_vec(),
        );
        g.row(
            [
                "2",
                "cleanup",
                "active",
                "orders.id",
                "sqlite://app.db",
                "45.0%",
                "900,000 / 2,000,000",
                "-",
                "paused",
                "10,000 / 1,000",
                "90/1/91",
                "on hold since 2026-12-02 09:48:55.123 (re-checked every 5m00s): replica lag 12 MiB over 10 MiB",
            ]
            .map(String::from)
            .to_vec(),
        );
        g.give_way(&[11, 4, 1, 3], &[4, 9, 10, 11])
    }

    /// Draws it as `status` does and returns the lines.
    fn drawn(f: &Fitted) -> Vec<String> {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .force_no_tty();
        t.set_header(f.header.clone());
        for r in &f.rows {
            t.add_row(r.clone());
        }
        t.to_string().lines().map(String::from).collect()
    }

    /// Every word of the grid's cells, as the lines of a drawn table hold them whole or cut.
    fn words(g: &Grid) -> Vec<String> {
        g.rows
            .iter()
            .flatten()
            .chain(&g.header)
            .flat_map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn a_table_fits_its_width_without_splitting_a_word() {
        let g = status_like();
        for width in [60, 80, 100, 120, 160, 400] {
            let f = g.fit(Some(width));
            let lines = drawn(&f);
            for line in &lines {
                assert!(
                    line.width() <= width,
                    "{width}: {line:?} is {}",
                    line.width()
                );
            }
            // Each word of a kept cell is on one line, whole or cut short with `…`: no line
            // holds the end of a word without its start.
            let text: Vec<String> = f
                .rows
                .iter()
                .flatten()
                .chain(&f.header)
                .flat_map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>())
                .collect();
            let all = words(&g);
            for w in &text {
                let whole = all.contains(w);
                let cut_short =
                    w.ends_with('…') && all.iter().any(|a| a.starts_with(w.trim_end_matches('…')));
                assert!(whole || cut_short, "{width}: {w:?} is a piece of a word");
            }
        }
        // Wide enough: nothing cut or left out.
        let f = g.fit(Some(400));
        assert!(f.left_out.is_empty());
        assert!(!f.rows.iter().flatten().any(|c| c.contains('…')));
        // At 100: `finished` and `users.id` whole; the target is left out and said so.
        let f = g.fit(Some(100));
        let text = drawn(&f).join("\n");
        assert!(text.contains("finished"), "{text}");
        assert!(text.contains("users.id"), "{text}");
        assert_eq!(f.left_out[0], "TARGET", "{text}");
        // Piped (no width): as it is.
        assert_eq!(g.fit(None).rows[0][4], g.rows[0][4]);
    }

    #[test]
    fn wrapping_breaks_between_words_and_cuts_long_ones() {
        assert_eq!(wrap("2,000,000 / 1,983,738", 11), "2,000,000 /\n1,983,738");
        assert_eq!(wrap("users.id", 6), "users…");
        assert_eq!(cut("0b7e6c1e-1f2a", 5), "0b7e…");
        assert_eq!(cut("short", 5), "short");
        assert_eq!(wrap("", 5), "");
    }
}
