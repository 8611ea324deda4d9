//! The I/O edge shared by [`crate::probe`] and [`crate::actuate`]: bounded child processes and
//! one outbound HTTP(S) client.
//!
//! ```text
//!  probe::run_check / run_lag ─┐                 ┌─▶ exec::run    (no shell, own process group,
//!                              ├──▶ edge ────────┤                 output tails, killed on timeout)
//!  actuate::RealActuator ──────┘                 └─▶ http::client (hyper 1 + rustls/ring, native
//!                                                                 roots, capped bodies)
//! ```
//!
//! Both halves put a limit on everything they read (STYLE.md 5) and turn failures into short,
//! one-line descriptions that callers put in probe details and step errors. [`ratelog`] keeps
//! the listeners' repeated warnings to one line per cause per interval.

pub(crate) mod exec;
pub(crate) mod http;
pub(crate) mod ratelog;

/// The last `max` bytes of `bytes` as text (lossy UTF-8), starting at a character boundary.
pub(crate) fn text_tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // A cut through a multi-byte character shows up as leading replacement characters.
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// The last non-empty line of `text`, trimmed, shortened to at most `max` characters.
pub(crate) fn last_line(text: &str, max: usize) -> String {
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
    shorten(line, max)
}

/// `text` cut to at most `max` characters, with `…` marking a cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `d` as whole milliseconds, e.g. `800ms`: the unit probe details and step errors use.
pub(crate) fn fmt_ms(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_and_lines() {
        assert_eq!(text_tail(b"hello world", 5), "world");
        assert_eq!(text_tail("aé".as_bytes(), 1), "");
        assert_eq!(last_line("a\nb  \n\n  \n", 10), "b");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
