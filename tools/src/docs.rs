//! The generated parts of the docs pages: each sits between a
//! `<!-- generated: … -->` line and `<!-- end of generated -->`, written by
//! `bid-logger-tools docs` and checked by the docs tests.

/// The line before a generated part (after it, which generator).
pub const BEGIN: &str = "<!-- generated: ";
/// The line after it.
pub const END: &str = "<!-- end of generated -->";

/// (page, generated text) of every generated part.
pub fn generated() -> Vec<(&'static str, String)> {
    vec![
        ("docs/configuration.md", bid_logger::config::reference_table()),
        ("docs/metrics.md", bid_logger::telemetry::reference_table()),
    ]
}

/// `text` with its generated part replaced by `generated`, or why it has
/// none.
pub fn splice(text: &str, generated: &str) -> Result<String, String> {
    let begin = text.find(BEGIN).ok_or("no `<!-- generated: … -->` line")?;
    let body = begin + text[begin..].find('\n').ok_or("nothing after the generated line")? + 1;
    let end = body + text[body..].find(END).ok_or("no `<!-- end of generated -->` line")?;
    Ok(format!("{}{generated}{}", &text[..body], &text[end..]))
}
