//! Text from a watched tree, made safe to print on an approver's terminal.
//!
//! Everything a tree controls (argv, paths, cwd, stated reasons, and the comments shown next to
//! them) may carry terminal escapes that move the cursor and overwrite what the approver reads
//! (`\x1b[6A\r\x1b[2K`), newlines that forge whole fields, OSC 52 clipboard writes, or bidi
//! marks that show `txt.exe` as `exe.txt`. [`escape`] makes each of them visible as an escape
//! sequence instead, and every program that prints such text (guardctl, `guard-agent pending`)
//! goes through it. Printable text, including non-ASCII letters, is left as it is.
use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself: C0 controls (newline and tab included),
/// DEL, C1 controls, the bidi embedding/override/isolate marks and LRM/RLM/ALM, the Unicode
/// line and paragraph separators, and the backslash that starts our own escapes (so that a
/// tree cannot print a fake `\u{202e}` that reads like an escaped one).
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{200e}' | '\u{200f}' | '\u{061c}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{2028}' | '\u{2029}'
        | '\\')
}

/// `text` with every character that could change what a terminal shows escaped: `\n`, `\t`,
/// `\r`, `\\`, `\x1b`-style for other C0/C1 controls and DEL, `\u{202e}`-style for the bidi
/// marks and line separators. Borrowed when there is nothing to escape (the common case).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x100 && needs_escape(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] of each element of `args`, joined by spaces; an element that is empty or holds
/// a space is quoted, so the approver sees where one argument ends.
pub fn escape_argv(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let e = escape(a);
            if e.is_empty() || e.contains(' ') || e.contains('"') {
                format!("\"{}\"", e.replace('"', "\\\""))
            } else {
                e.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No character that moves the cursor, erases, rings, switches direction or starts an
    /// escape sequence survives.
    fn inert(s: &str) -> bool {
        !s.chars().any(|c| needs_escape(c) && c != '\\')
    }

    #[test]
    fn cursor_movement_and_erase_sequences_are_shown_not_run() {
        // The review's attack: move up six lines, erase, print a harmless object, move back.
        let hostile = "\x1b[6A\r\x1b[2Kobject:    /home/u/README.md\x1b[6B";
        let shown = escape(hostile);
        assert!(inert(&shown), "{shown}");
        assert_eq!(shown, "\\x1b[6A\\r\\x1b[2Kobject:    /home/u/README.md\\x1b[6B");
    }

    #[test]
    fn newlines_cannot_forge_fields() {
        let shown = escape("/tmp/x\nobject:     /home/u/README.md");
        assert!(!shown.contains('\n'));
        assert_eq!(shown, "/tmp/x\\nobject:     /home/u/README.md");
    }

    #[test]
    fn osc52_clipboard_writes_and_bells_are_escaped() {
        let shown = escape("\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07");
        assert!(inert(&shown), "{shown}");
        assert!(shown.starts_with("\\x1b]52;") && shown.ends_with("\\x07"), "{shown}");
        // C1 controls (8-bit CSI and OSC) and DEL too.
        assert_eq!(escape("a\u{9b}2Jb\u{9d}c\u{7f}"), "a\\x9b2Jb\\x9dc\\x7f");
    }

    #[test]
    fn bidi_marks_cannot_reorder_what_is_read() {
        // "/tmp/evil\u{202e}txt.sh" shows as "/tmp/evilhs.txt" on a bidi-aware terminal.
        for mark in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
            '\u{200e}', '\u{200f}',
        ] {
            let path = format!("/tmp/evil{mark}txt.sh");
            let shown = escape(&path);
            assert!(inert(&shown), "{mark:?}: {shown}");
            assert_eq!(shown, format!("/tmp/evil\\u{{{:04x}}}txt.sh", mark as u32));
        }
    }

    #[test]
    fn a_literal_backslash_cannot_pass_for_an_escape() {
        // The tree prints the text of an escape; the approver sees it was text.
        assert_eq!(escape("a\\u{202e}b"), "a\\\\u{202e}b");
        assert_ne!(escape("a\\x1b"), escape("a\x1b"));
    }

    #[test]
    fn printable_text_is_untouched_and_borrowed() {
        for ok in ["/usr/bin/kubectl", "héllo wörld", "日本語/ファイル", "emoji 🙂", ""] {
            assert!(matches!(escape(ok), Cow::Borrowed(_)), "{ok}");
        }
    }

    #[test]
    fn argv_shows_argument_boundaries() {
        let argv = ["sh".to_string(), "-c".into(), "echo hi\x1b[2J".into(), "".into()];
        assert_eq!(escape_argv(&argv), "sh -c \"echo hi\\x1b[2J\" \"\"");
    }
}
