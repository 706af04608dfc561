//! YAML text to a generic value, with one repair: the Shotover guide prints two transforms
//! that take fields as a bare name with the fields indented below it:
//!
//! ```text
//! - RequestThrottling
//!     max_requests_per_second: 20000
//! ```
//!
//! That is not valid YAML: without a colon after the name, the name and the indented lines
//! are one multi-line string, and `max_requests_per_second: ...` inside it is an error. A
//! user who copies it from the guide means `- RequestThrottling:`. So when a topology file
//! does not parse, such items (a list item that is a known transform's name, followed by
//! lines indented past it) are read with the colon. If the file then parses, each repaired
//! line is logged as a warning, so the user can fix the file; if it still does not, the
//! original error stands.

use super::ConfigError;
use serde_yaml_ng::Value;

/// Parses `text`, the contents of `file` (named in errors and warnings); `is_transform` says
/// which names the repair may add a colon to (none: no repair).
pub(crate) fn parse(file: &str, text: &str, is_transform: &dyn Fn(&str) -> bool) -> Result<Value, ConfigError> {
    let error = match serde_yaml_ng::from_str(text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    if let Some((repaired, lines)) = add_missing_colons(text, is_transform) {
        if let Ok(value) = serde_yaml_ng::from_str(&repaired) {
            for line in lines {
                tracing::warn!(
                    "{file}: line {line}: a transform name followed by indented fields needs a colon \
                     after it; read as if it had one (add it to the file)"
                );
            }
            return Ok(value);
        }
    }
    Err(ConfigError { file: file.into(), path: String::new(), reason: format!("invalid YAML: {error}") })
}

/// `text` with a colon after each list item that is a transform's name (`- Name`) and is
/// followed, past blank and comment lines, by a line indented deeper than the item's name;
/// with the 1-based numbers of the lines changed. `None` when no line matches.
fn add_missing_colons(text: &str, is_transform: &dyn Fn(&str) -> bool) -> Option<(String, Vec<usize>)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    // The first line after line `i` that is neither blank nor a comment.
    let next_content = |i: usize| {
        lines.iter().skip(i + 1).find(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
    };
    let mut changed = Vec::new();
    let mut out = String::with_capacity(text.len() + 8);
    for (i, line) in lines.iter().enumerate() {
        out.push_str(line);
        let name = line.trim_start().strip_prefix("- ").map(str::trim_end).unwrap_or_default();
        // The name starts two columns after the dash; its fields must start past it.
        if !name.is_empty() && is_transform(name) && next_content(i).is_some_and(|next| indent(next) > indent(line) + 2)
        {
            out.push(':');
            changed.push(i + 1);
        }
        out.push('\n');
    }
    (!changed.is_empty()).then_some((out, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        ["RequestThrottling", "DebugReturner", "NullSink", "DebugPrinter"].contains(&name)
    }

    fn parse(file: &str, text: &str) -> Result<Value, ConfigError> {
        super::parse(file, text, &known)
    }

    #[test]
    fn the_guides_items_without_a_colon_are_read_with_one() {
        let throttling = "chain:\n  - RequestThrottling\n      max_requests_per_second: 20000\n  - NullSink\n";
        let value = parse("t.yaml", throttling).unwrap();
        let expected: Value = serde_yaml_ng::from_str(
            "chain:\n  - RequestThrottling:\n      max_requests_per_second: 20000\n  - NullSink\n",
        )
        .unwrap();
        assert_eq!(value, expected);
        // With comments and a blank line between the name and its field, as the guide has it.
        let returner = "- DebugReturner\n    # return a Valkey response\n    Valkey: \"42\"\n   \n    # Fail\n";
        let value = parse("t.yaml", returner).unwrap();
        let expected: Value = serde_yaml_ng::from_str("- DebugReturner:\n    Valkey: \"42\"\n").unwrap();
        assert_eq!(value, expected);
        assert_eq!(add_missing_colons(returner, &known).map(|(_, lines)| lines), Some(vec![1]));
    }

    #[test]
    fn valid_files_and_other_errors_are_left_alone() {
        // Bare names with nothing indented below them are plain items, and valid.
        assert_eq!(add_missing_colons("- NullSink\n- DebugPrinter\n", &known), None);
        // A file that is still invalid after the repair keeps its own error.
        let err = parse("t.yaml", "- RequestThrottling\n    max: [1\n").unwrap_err();
        assert!(err.to_string().starts_with("t.yaml: invalid YAML: "), "{err}");
        // Only transform names are touched, and only with a repair asked for.
        assert_eq!(add_missing_colons("- \"Quoted\"\n    x: 1\n", &known), None);
        assert_eq!(add_missing_colons("- Other\n    x: 1\n", &known), None);
        assert!(super::parse("c.yaml", "- RequestThrottling\n    max: 1\n", &|_| false).is_err());
    }
}
