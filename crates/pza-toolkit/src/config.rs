//! JSON5 configuration files: read with errors that name the file, the key
//! path and (for syntax errors and keys given twice) the lines; write a
//! default file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: JSON5 syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parsed but does not fit: `key` is the dotted key path
    /// (`runners.psu1.restart.jitter`), `.` for the top level.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A key written twice in one object (json5 alone would keep the last).
    #[error("{}: {key}: duplicate key ({})", path.display(), lines_text(*first_line, *second_line))]
    DuplicateKey {
        path: PathBuf,
        key: String,
        first_line: usize,
        second_line: usize,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads `path` as JSON5 into `T`.
pub fn read_json5_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json5(path, &text)
}

/// Parses `text` (the contents of `path`) as JSON5 into `T`.
///
/// The text is first read into a JSON value (syntax errors carry a line and a
/// column), then that value is mapped onto `T` (errors carry the key path and
/// serde's wording in a config file's terms, see [`plain_message`]:
/// `invalid type: string "x", expected a whole number from 0 to 65535`).
pub fn parse_json5<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigFileError> {
    from_value(path, parse_json5_value(path, text)?, "")
}

/// Parses `text` (the contents of `path`) as a JSON5 config: its top level
/// must be an object, and no object may hold a key twice.
pub fn parse_json5_value(path: &Path, text: &str) -> Result<serde_json::Value, ConfigFileError> {
    let value: serde_json::Value = json5::from_str(text).map_err(|e| syntax_error(path, e))?;
    if let Some(d) = crate::json5_keys::find_duplicate_key(text) {
        return Err(ConfigFileError::DuplicateKey {
            path: path.to_path_buf(),
            key: d.key,
            first_line: d.first_line,
            second_line: d.second_line,
        });
    }
    let kind = match &value {
        serde_json::Value::Object(_) => return Ok(value),
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Null => "null",
    };
    Err(invalid(
        path,
        ".",
        format!("the file must hold an object ({{ ... }}), not {kind}"),
    ))
}

/// "lines 3 and 7", or "twice on line 3".
fn lines_text(first: usize, second: usize) -> String {
    if first == second {
        format!("twice on line {first}")
    } else {
        format!("lines {first} and {second}")
    }
}

/// Maps `value`, found at `key_prefix` (`""` for the top level, else a dotted
/// path such as `runners.psu1`) in the file `path`, onto `T`.
pub fn from_value<T: DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
    key_prefix: &str,
) -> Result<T, ConfigFileError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (key_prefix.is_empty(), inner.is_empty() || inner == ".") {
            (true, true) => ".".to_string(),
            (true, false) => inner,
            (false, true) => key_prefix.to_string(),
            (false, false) => format!("{key_prefix}.{inner}"),
        };
        invalid(path, key, plain_message(&e.into_inner().to_string()))
    })
}

/// serde's message for a value that does not fit, with the Rust types it
/// names (`expected u16`, `expected struct TcpConfig`, `invalid type:
/// sequence`) said in a config file's terms (a whole number and its range,
/// a number, an object, an array).
pub fn plain_message(message: &str) -> String {
    // Only serde's own words are rewritten, never a value quoted in the
    // message: the type found comes first, what was expected last.
    let message = match (
        message.strip_prefix("invalid type: sequence"),
        message.strip_prefix("invalid type: map"),
    ) {
        (Some(rest), _) => format!("invalid type: array{rest}"),
        (_, Some(rest)) => format!("invalid type: object{rest}"),
        _ => message.to_string(),
    };
    let Some(at) = message.rfind("expected ") else {
        return message;
    };
    let (head, rest) = message.split_at(at + "expected ".len());
    let word_end = |text: &str| {
        text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len())
    };
    let (expected, tail) = if let Some(name) = rest.strip_prefix("struct ") {
        ("an object ({ ... })", &name[word_end(name)..])
    } else {
        let (word, tail) = rest.split_at(word_end(rest));
        let plain = match word {
            "u8" => "a whole number from 0 to 255",
            "u16" => "a whole number from 0 to 65535",
            "u32" => "a whole number from 0 to 4294967295",
            "u64" | "usize" => "a whole number from 0",
            "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
            "f32" | "f64" => "a number",
            "a" if tail.starts_with(" map") => {
                return format!("{head}an object ({{ ... }}){}", &tail[4..])
            }
            "a" if tail.starts_with(" sequence") => {
                return format!("{head}an array ([ ... ]){}", &tail[9..])
            }
            _ => return message,
        };
        (plain, tail)
    };
    format!("{head}{expected}{tail}")
}

/// An `Invalid` error at `key` of the file `path`.
pub fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigFileError {
    ConfigFileError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        message: message.into(),
    }
}

fn syntax_error(path: &Path, e: json5::Error) -> ConfigFileError {
    let json5::Error::Message { msg, location } = e;
    let (line, column) = location.map(|l| (l.line, l.column)).unwrap_or((1, 1));
    ConfigFileError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: summarize_pest_message(&msg),
    }
}

/// pest renders its errors over several lines with an ASCII-art pointer; the
/// useful part is the last line (`= expected ...`).
fn summarize_pest_message(message: &str) -> String {
    message
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && *line != "|")
        .map(|line| line.trim_start_matches("= ").to_string())
        .unwrap_or_else(|| message.to_string())
}

/// Writes `contents` to `path`, creating its parent folders.
pub fn write_file(path: &Path, contents: &str) -> Result<(), ConfigFileError> {
    let write_error = |source| ConfigFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    std::fs::write(path, contents).map_err(write_error)
}

#[cfg(test)]
mod tests {
    #[test]
    fn serde_messages_in_a_config_files_terms() {
        for (serde, plain) in [
            (
                "invalid type: string \"1883\", expected u16",
                "invalid type: string \"1883\", expected a whole number from 0 to 65535",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "invalid type: floating point `1.5`, expected a whole number from 0",
            ),
            (
                "invalid type: string \"5\", expected f64",
                "invalid type: string \"5\", expected a number",
            ),
            (
                "invalid type: integer `5`, expected struct BrokerConfig",
                "invalid type: integer `5`, expected an object ({ ... })",
            ),
            (
                "invalid type: sequence, expected a map",
                "invalid type: array, expected an object ({ ... })",
            ),
            (
                "invalid type: map, expected a sequence",
                "invalid type: object, expected an array ([ ... ])",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "invalid type: integer `5`, expected a string",
            ),
            (
                "unknown variant `explode`, expected `keep` or `output_off`",
                "unknown variant `explode`, expected `keep` or `output_off`",
            ),
            ("missing field `model`", "missing field `model`"),
            (
                "invalid type: string \"expected u16 or a map\", expected u16",
                "invalid type: string \"expected u16 or a map\", expected a whole number from 0 to 65535",
            ),
        ] {
            assert_eq!(super::plain_message(serde), plain);
        }
    }

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        port: u16,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        tcp: Inner,
    }

    fn parse(text: &str) -> Result<Outer, ConfigFileError> {
        parse_json5(Path::new("c.json5"), text)
    }

    #[test]
    fn accepts_json5() {
        parse("{ // comment\n tcp: { port: 1883, }, }").unwrap();
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("{\n  tcp: { port: 1883 \n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("c.json5:2:16: JSON5 syntax error: "),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("{ tcp: { port: \"x\" } }").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("c.json5: tcp.port: invalid type"),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = parse("{ tcp: { port: 1, prot: 2 } }").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `prot`"), "{text}");
        assert!(text.starts_with("c.json5: tcp"), "{text}");
    }

    #[test]
    fn out_of_range_integer_names_the_key() {
        let err = parse("{ tcp: { port: 70000 } }").unwrap_err();
        assert!(err.to_string().starts_with("c.json5: tcp.port: "), "{err}");
    }

    #[test]
    fn a_duplicate_key_names_its_path_and_both_lines() {
        let err =
            parse("{\n  tcp: { port: 1 },\n  // tcp: {}\n  \"tcp\": { port: 2 },\n}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.json5: tcp: duplicate key (lines 2 and 4)"
        );
        let err = parse("{ tcp: { port: 1, port: 2 } }").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.json5: tcp.port: duplicate key (twice on line 1)"
        );
    }

    #[test]
    fn the_top_level_must_be_an_object() {
        for (text, kind) in [
            ("[]", "an array"),
            ("5", "a number"),
            ("'x'", "a string"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            let err = parse_json5_value(Path::new("c.json5"), text).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("c.json5: .: the file must hold an object ({{ ... }}), not {kind}")
            );
        }
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = read_json5_file::<Outer>(Path::new("/nonexistent/x.json5")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/x.json5: cannot read"),
            "{err}"
        );
    }
}
