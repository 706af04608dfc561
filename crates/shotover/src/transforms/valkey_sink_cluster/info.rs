//! `INFO` across the masters, as one big node would write it: counters of the sections that
//! describe the data and the work (clients, memory, stats, CPU, keyspace, command and error
//! statistics) are summed (those named `max` or `peak` take the largest), and the other
//! sections and fields (server, replication, persistence, cluster, ratios, text) are the
//! first master's, but for the writes since the last save (`rdb_changes_since_last_save`).

use bytes::{BufMut, Bytes, BytesMut};
use shotover_protocols::valkey::frame::parse;
use shotover_protocols::valkey::ValkeyFrame;

/// Sections whose counters add up across nodes.
const SUMMED: [&str; 7] = ["clients", "memory", "stats", "cpu", "keyspace", "commandstats", "errorstats"];

/// One section: its header line (`# Stats`, or empty for text before any header) and its
/// lines, each `field:value` or a line without a colon.
struct Section<'a> {
    header: &'a str,
    lines: Vec<(&'a str, Option<String>)>,
}

/// The merged reply (a bulk string, or a RESP3 verbatim string like the first reply), or
/// `None` when a reply is not INFO text.
pub(super) fn merge_info(replies: &[Bytes]) -> Option<Bytes> {
    let mut texts = Vec::with_capacity(replies.len());
    let mut verbatim = false;
    for raw in replies {
        match parse(raw).ok()?.0 {
            ValkeyFrame::BlobString { data, .. } => texts.push(data),
            ValkeyFrame::VerbatimString { data, .. } => {
                verbatim = true;
                texts.push(data)
            }
            _ => return None,
        }
    }
    let texts: Vec<&str> = texts.iter().map(|t| std::str::from_utf8(t).ok()).collect::<Option<_>>()?;
    let mut merged = sections(texts.first()?);
    for text in texts.get(1..).unwrap_or_default() {
        for section in sections(text) {
            let summed = SUMMED.iter().any(|s| section.header.trim_start_matches("# ").eq_ignore_ascii_case(s));
            let Some(into) = merged.iter_mut().find(|m| m.header == section.header) else {
                merged.push(section);
                continue;
            };
            for (field, value) in section.lines {
                match into.lines.iter_mut().find(|(f, _)| *f == field) {
                    Some((_, Some(mine))) if summed || field == "rdb_changes_since_last_save" => {
                        if let Some(value) = &value {
                            *mine = combine(field, mine, value);
                        }
                    }
                    Some(_) => {}
                    None => into.lines.push((field, value)),
                }
            }
        }
    }
    let mut text = String::new();
    for (i, section) in merged.iter().enumerate() {
        if i > 0 {
            text.push_str("\r\n");
        }
        if !section.header.is_empty() {
            text.push_str(section.header);
            text.push_str("\r\n");
        }
        for (field, value) in &section.lines {
            text.push_str(field);
            if let Some(value) = value {
                text.push(':');
                text.push_str(value);
            }
            text.push_str("\r\n");
        }
    }
    let mut out = BytesMut::with_capacity(text.len() + 24);
    if verbatim {
        out.put_slice(format!("={}\r\ntxt:", text.len() + 4).as_bytes());
    } else {
        out.put_slice(format!("${}\r\n", text.len()).as_bytes());
    }
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
    Some(out.freeze())
}

fn sections(text: &str) -> Vec<Section<'_>> {
    let mut out: Vec<Section> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            out.push(Section { header: line, lines: Vec::new() });
            continue;
        }
        if out.is_empty() {
            out.push(Section { header: "", lines: Vec::new() });
        }
        let entry = match line.split_once(':') {
            Some((field, value)) => (field, Some(value.to_string())),
            None => (line, None),
        };
        if let Some(section) = out.last_mut() {
            section.lines.push(entry);
        }
    }
    out
}

/// Two nodes' values of one field of a summed section.
fn combine(field: &str, mine: &str, theirs: &str) -> String {
    if let Some(combined) = integers(field, mine, theirs) {
        return combined;
    }
    if field.starts_with("used_cpu_") {
        if let (Ok(a), Ok(b)) = (mine.parse::<f64>(), theirs.parse::<f64>()) {
            return format!("{:.6}", a + b);
        }
    }
    if mine.contains('=') && theirs.contains('=') {
        return combine_list(mine, theirs);
    }
    mine.to_string()
}

/// Two integer values of a field combined by its [`kind`]; `None` unless both are integers.
fn integers(field: &str, mine: &str, theirs: &str) -> Option<String> {
    let (a, b) = (mine.parse::<i64>().ok()?, theirs.parse::<i64>().ok()?);
    Some(match kind(field) {
        Kind::Sum => a.saturating_add(b).to_string(),
        Kind::Max => a.max(b).to_string(),
        Kind::First => mine.to_string(),
    })
}

enum Kind {
    Sum,
    Max,
    First,
}

fn kind(field: &str) -> Kind {
    if field.contains("max") || field.contains("peak") || field == "avg_ttl" {
        Kind::Max
    } else if ["system", "human", "ratio", "perc", "policy", "allocator", "lua_caches", "number_of"]
        .iter()
        .any(|part| field.contains(part))
    {
        Kind::First
    } else {
        Kind::Sum
    }
}

/// `keys=1,expires=0,avg_ttl=0` (keyspace) or `calls=3,usec=9,usec_per_call=3.00,...`
/// (commandstats): each integer combined by its name, and `usec_per_call` worked out again.
fn combine_list(mine: &str, theirs: &str) -> String {
    let mut fields: Vec<(String, String)> = Vec::new();
    for part in mine.split(',') {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        fields.push((name.to_string(), value.to_string()));
    }
    for part in theirs.split(',') {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        match fields.iter_mut().find(|(n, _)| n == name) {
            // Integers only: a value is never read as a list again, however many `=` a
            // node's text holds.
            Some((_, mine)) => {
                if let Some(combined) = integers(name, mine, value) {
                    *mine = combined;
                }
            }
            None => fields.push((name.to_string(), value.to_string())),
        }
    }
    let number = |name: &str| fields.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.parse::<f64>().ok());
    if let (Some(calls), Some(usec)) = (number("calls"), number("usec")) {
        let per_call = if calls > 0.0 { usec / calls } else { 0.0 };
        if let Some((_, value)) = fields.iter_mut().find(|(n, _)| n == "usec_per_call") {
            *value = format!("{per_call:.2}");
        }
    }
    fields.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Bytes {
        Bytes::from(format!("${}\r\n{text}\r\n", text.len()))
    }

    #[test]
    fn counters_add_up_and_the_rest_is_the_first_nodes() {
        let a = "# Server\r\nvalkey_version:8.0.1\r\ntcp_port:7000\r\n\r\n# Clients\r\nconnected_clients:2\r\nblocked_clients:0\r\nmaxclients:10000\r\n\r\n# Stats\r\ntotal_commands_processed:10\r\nmem_fragmentation_ratio:1.5\r\n\r\n# CPU\r\nused_cpu_sys:0.500000\r\n\r\n# Keyspace\r\ndb0:keys=342,expires=1,avg_ttl=10\r\n";
        let b = "# Server\r\nvalkey_version:8.0.1\r\ntcp_port:7001\r\n\r\n# Clients\r\nconnected_clients:1\r\nblocked_clients:1\r\nmaxclients:10000\r\n\r\n# Stats\r\ntotal_commands_processed:5\r\nmem_fragmentation_ratio:2.5\r\n\r\n# CPU\r\nused_cpu_sys:0.250000\r\n\r\n# Keyspace\r\ndb0:keys=330,expires=0,avg_ttl=20\r\ndb1:keys=1,expires=0,avg_ttl=0\r\n";
        let merged = merge_info(&[bulk(a), bulk(b)]).unwrap();
        let expected = "# Server\r\nvalkey_version:8.0.1\r\ntcp_port:7000\r\n\r\n# Clients\r\nconnected_clients:3\r\nblocked_clients:1\r\nmaxclients:10000\r\n\r\n# Stats\r\ntotal_commands_processed:15\r\nmem_fragmentation_ratio:1.5\r\n\r\n# CPU\r\nused_cpu_sys:0.750000\r\n\r\n# Keyspace\r\ndb0:keys=672,expires=1,avg_ttl=20\r\ndb1:keys=1,expires=0,avg_ttl=0\r\n";
        assert_eq!(merged, bulk(expected));
    }

    #[test]
    fn command_statistics_and_resp3() {
        let a = "# Commandstats\r\ncmdstat_get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n";
        let b = "# Commandstats\r\ncmdstat_get:calls=3,usec=20,usec_per_call=6.67,rejected_calls=1,failed_calls=0\r\n";
        let verbatim = |t: &str| Bytes::from(format!("={}\r\ntxt:{t}\r\n", t.len() + 4));
        let merged = merge_info(&[verbatim(a), verbatim(b)]).unwrap();
        let expected =
            "# Commandstats\r\ncmdstat_get:calls=5,usec=30,usec_per_call=6.00,rejected_calls=1,failed_calls=0\r\n";
        assert_eq!(merged, verbatim(expected));
        assert_eq!(merge_info(&[bulk(a), Bytes::from_static(b":1\r\n")]), None);
    }

    #[test]
    fn a_value_full_of_equals_signs_is_not_read_as_nested_lists() {
        // Read as lists within lists, 100 000 `=` would recurse 100 000 deep.
        let deep = "=".repeat(100_000);
        let a = format!("# Keyspace\r\ndb0:keys=1,odd=x{deep}\r\n");
        let b = format!("# Keyspace\r\ndb0:keys=2,odd=y{deep}\r\n");
        let expected = format!("# Keyspace\r\ndb0:keys=3,odd=x{deep}\r\n");
        assert_eq!(merge_info(&[bulk(&a), bulk(&b)]).unwrap(), bulk(&expected));
    }
}
