//! A tiny aligned-table formatter: upper-case headers, columns separated by two spaces, the
//! last column not padded (so long values do not push trailing blanks). Every cell is escaped
//! (`guard_api::screen::escape`): cells hold objects, rules and reasons a watched tree chose.

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_uppercase()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells.into_iter().map(|c| guard_api::screen::escape(&c).into_owned()).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i < last {
                    line.extend(std::iter::repeat_n(' ', widths[i] - width(cell) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Shortens a cell to `max` characters, keeping its end (paths are told apart by their end).
pub fn keep_end(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}

/// Shortens a cell to `max` characters, keeping its start (prose reads from the start).
pub fn keep_start(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max - 1).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["id", "object", "rule"]);
        t.row(vec!["r1".into(), "/etc/passwd".into(), "etc".into()]);
        t.row(vec!["request-2".into(), "/x".into(), "".into()]);
        assert_eq!(t.render(), "ID         OBJECT       RULE\nr1         /etc/passwd  etc\nrequest-2  /x\n");
    }

    #[test]
    fn cells_cannot_move_the_cursor_or_add_lines() {
        let mut t = Table::new(&["id", "object"]);
        t.row(vec!["r1".into(), "/tmp/x\x1b[1A\x1b[2K\nr9  /home/u/README.md\u{202e}".into()]);
        let text = t.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\u{202e}'), "{text}");
    }

    #[test]
    fn shortening() {
        assert_eq!(keep_end("/very/long/path", 6), "…/path");
        assert_eq!(keep_start("because I said", 6), "becau…");
        assert_eq!(keep_start("ok", 6), "ok");
    }
}
