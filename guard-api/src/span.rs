//! `file:line:col` from a byte span, with one counting rule for every config and policy file:
//! lines and columns start at 1, and a column counts characters (not bytes), which is what an
//! editor's cursor shows for a UTF-8 line.

use std::{fmt, ops::Range, path::Path};

/// Where in a file something is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl Location {
    /// The position of `span.start` in `text`, a file read from `file`.
    pub fn of(file: &Path, text: &str, span: Range<usize>) -> Self {
        let (line, col) = line_col(text, span.start);
        Location { file: file.display().to_string(), line, col }
    }

    /// A place that is the whole file (it could not be read, say): written `file` alone.
    pub fn whole(file: &Path) -> Self {
        Location { file: file.display().to_string(), line: 0, col: 0 }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// 1-based line and character column of byte offset `at` in `text` (clamped to the text, and to
/// the start of a character).
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..at].chars().count() + 1)
}

/// toml's message for `e`, or what is wrong when it gives none (the fuzzer found inputs with
/// a control character for which the message is empty): an error must say what it is. The
/// caller names the place with a [`Location`].
pub fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let m = e.message().trim();
    if !m.is_empty() {
        return m.to_string();
    }
    let at = e.span().map(|s| s.start).unwrap_or(0);
    match text.get(at..).and_then(|t| t.chars().next()) {
        Some(c) => format!("invalid TOML: unexpected character {c:?}"),
        None => "invalid TOML: the file ends too early".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_and_characters() {
        let text = "a = 1\nnamé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // "namé = " is 8 bytes but 7 characters: the column is the 8th character.
        assert_eq!(line_col(text, 6 + 8), (2, 8));
        assert_eq!(line_col(text, 1000), (3, 1));
        let loc = Location::of(Path::new("p.toml"), text, 6..7);
        assert_eq!(loc.to_string(), "p.toml:2:1");
        assert_eq!(Location::whole(Path::new("p.toml")).to_string(), "p.toml");
    }
}
