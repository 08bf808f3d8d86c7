//! Finds a key given twice in one object of a JSON5 text, with its lines.
//!
//! The json5 crate keeps the last of two equal keys without a word and tells
//! no position per key, so a runner or a limit written twice would be
//! silently replaced. This is a small pass over the text, run once json5 has
//! accepted it: it only needs to tell tokens apart (comments, quoted strings
//! with their escapes, unquoted words, punctuation), not to check syntax.

use std::collections::HashMap;

/// A key written twice in the same object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The dotted path of the repeated key (`runners.psu`), with `[i]` for
    /// an array element (`list[2].name`).
    pub key: String,
    /// Lines (from 1) of its first and second occurrences.
    pub first_line: usize,
    pub second_line: usize,
}

/// The first key (in the order of the text) that its object already holds.
/// `"a"`, `'a'`, `a` and `"\u0061"` are the same key, as they are to JSON5.
pub fn find_duplicate_key(text: &str) -> Option<DuplicateKey> {
    let tokens = tokenize(text);
    let mut parser = Parser { tokens, next: 0 };
    parser.value("").err()
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// One of `{ } [ ] : ,`.
    Punct(char),
    /// A quoted string, unescaped.
    Quoted(String),
    /// An unquoted run: an identifier key, a number, `true`, `NaN`...
    Word(String),
}

/// The tokens of `text`, each with its line. Comments and whitespace are
/// dropped. On text json5 refused this may be wrong, but it is never called
/// on such text.
fn tokenize(text: &str) -> Vec<(Token, usize)> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '{' | '}' | '[' | ']' | ':' | ',' => tokens.push((Token::Punct(c), line)),
            '"' | '\'' => {
                let (quote, start) = (c, line);
                let mut raw = String::new();
                while let Some(c) = chars.next() {
                    if c == '\n' {
                        line += 1;
                    }
                    if c == quote {
                        break;
                    }
                    raw.push(c);
                    // The escaped character is taken as is: an escaped quote
                    // does not end the string.
                    if c == '\\' {
                        if let Some(escaped) = chars.next() {
                            if escaped == '\n' {
                                line += 1;
                            }
                            raw.push(escaped);
                        }
                    }
                }
                tokens.push((Token::Quoted(unescape(&raw)), start));
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                    }
                    if star && c == '/' {
                        break;
                    }
                    star = c == '*';
                }
            }
            c if c.is_whitespace() || c == '\u{feff}' => {}
            c => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || next == '\u{feff}' || "{}[]:,\"'/".contains(next) {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push((Token::Word(unescape(&word)), line));
            }
        }
    }
    tokens
}

/// `raw` with its JSON5 escapes replaced by the characters they stand for.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('v') => out.push('\u{b}'),
            Some('0') => out.push('\0'),
            Some('x') => push_code(&mut out, hex(&mut chars, 2)),
            Some('u') => {
                let high = hex(&mut chars, 4);
                let code = match high {
                    Some(h @ 0xD800..=0xDBFF) => {
                        let mut ahead = chars.clone();
                        let low = (ahead.next() == Some('\\') && ahead.next() == Some('u'))
                            .then(|| hex(&mut ahead, 4))
                            .flatten();
                        match low {
                            Some(l @ 0xDC00..=0xDFFF) => {
                                chars = ahead;
                                Some(0x10000 + ((h - 0xD800) << 10) + (l - 0xDC00))
                            }
                            _ => Some(h),
                        }
                    }
                    other => other,
                };
                push_code(&mut out, code);
            }
            // A line continuation: the escaped line break is no character.
            Some('\n' | '\u{2028}' | '\u{2029}') => {}
            Some('\r') => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The value of the next `digits` hexadecimal digits, if they are.
fn hex(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, digits: usize) -> Option<u32> {
    let mut value = 0;
    for _ in 0..digits {
        value = value * 16 + chars.next()?.to_digit(16)?;
    }
    Some(value)
}

/// Pushes the character of `code`, or U+FFFD for a lone surrogate or a
/// malformed escape (json5 refuses those anyway).
fn push_code(out: &mut String, code: Option<u32>) {
    out.push(code.and_then(char::from_u32).unwrap_or('\u{fffd}'));
}

/// Walks the tokens as nested values, keeping the keys of each object.
struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(token, _)| token)
    }

    fn bump(&mut self) -> Option<(Token, usize)> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    /// Skips `punct` if it comes next.
    fn skip(&mut self, punct: char) {
        if self.peek() == Some(&Token::Punct(punct)) {
            self.next += 1;
        }
    }

    /// Walks one value found at `path`; the error is the first duplicate.
    fn value(&mut self, path: &str) -> Result<(), DuplicateKey> {
        match self.bump() {
            Some((Token::Punct('{'), _)) => self.object(path),
            Some((Token::Punct('['), _)) => self.array(path),
            _ => Ok(()),
        }
    }

    /// Walks an object's members, up to its `}`.
    fn object(&mut self, path: &str) -> Result<(), DuplicateKey> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            let (key, line) = match self.bump() {
                Some((Token::Quoted(key) | Token::Word(key), line)) => (key, line),
                _ => return Ok(()),
            };
            let key_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if let Some(&first_line) = seen.get(&key) {
                return Err(DuplicateKey {
                    key: key_path,
                    first_line,
                    second_line: line,
                });
            }
            seen.insert(key, line);
            self.skip(':');
            self.value(&key_path)?;
            self.skip(',');
        }
    }

    /// Walks an array's elements, up to its `]`.
    fn array(&mut self, path: &str) -> Result<(), DuplicateKey> {
        let mut index = 0;
        loop {
            match self.peek() {
                Some(Token::Punct(']')) | None => {
                    self.next += 1;
                    return Ok(());
                }
                _ => {}
            }
            self.value(&format!("{path}[{index}]"))?;
            index += 1;
            self.skip(',');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> Option<(String, usize, usize)> {
        // Only texts json5 takes are ever scanned.
        json5::from_str::<serde_json::Value>(text)
            .unwrap_or_else(|e| panic!("test text refused by json5: {e}\n{text}"));
        find_duplicate_key(text).map(|d| (d.key, d.first_line, d.second_line))
    }

    fn found(key: &str, first: usize, second: usize) -> Option<(String, usize, usize)> {
        Some((key.to_string(), first, second))
    }

    #[test]
    fn no_duplicate_no_finding() {
        assert_eq!(dup("{}"), None);
        assert_eq!(
            dup("{ a: 1, b: { a: 2, b: [ { a: 3 }, { a: 4 } ] } }"),
            None
        );
        assert_eq!(dup("[1, 2, 3]"), None);
        assert_eq!(dup("5"), None);
    }

    #[test]
    fn a_runner_given_twice_is_found_with_both_lines() {
        let text = "{\n  runners: {\n    psu: { model: 'emulator', security_max_voltage: 5 },\n    other: { model: 'emulator' },\n    psu: { model: 'emulator', security_max_voltage: 30 },\n  },\n}\n";
        assert_eq!(dup(text), found("runners.psu", 3, 5));
    }

    #[test]
    fn quoted_and_unquoted_spellings_are_the_same_key() {
        assert_eq!(dup("{ a: 1,\n \"a\": 2 }"), found("a", 1, 2));
        assert_eq!(dup("{ 'a': 1,\n a: 2 }"), found("a", 1, 2));
        assert_eq!(dup("{ \"\\u0061\": 1, a: 2 }"), found("a", 1, 1));
        assert_eq!(dup("{ \\u0061b: 1, ab: 2 }"), found("ab", 1, 1));
        assert_eq!(dup("{ \"\\x61\": 1, 'a': 2 }"), found("a", 1, 1));
    }

    #[test]
    fn keys_in_strings_and_comments_do_not_count() {
        let text = r#"{
            // a: 1, a: 2
            /* b: { a: 1 }, a: 2,
               a: 3 */
            a: "a: 1, a: 2, \" a: 3",
            s: 'it\'s { a: 1 } a',
            u: "http://host/a", // a URL is no comment
        }"#;
        assert_eq!(dup(text), None);
    }

    #[test]
    fn equal_keys_in_different_objects_are_fine() {
        assert_eq!(dup("{ x: { k: 1 }, y: { k: 2 }, k: 3 }"), None);
    }

    #[test]
    fn nested_and_array_paths() {
        assert_eq!(
            dup("{ a: { b: { c: 1,\n\n c: 2 } } }"),
            found("a.b.c", 1, 3)
        );
        assert_eq!(
            dup("{ list: [ { n: 1 }, { n: 2,\n n: 3 } ] }"),
            found("list[1].n", 1, 2)
        );
        assert_eq!(dup("[ { a: 1, a: 2 } ]"), found("[0].a", 1, 1));
    }

    #[test]
    fn line_breaks_inside_strings_and_comments_are_counted() {
        let text = "{ a: 'one\\\ntwo',\n /* x\n y */ b: 1,\n a: 2 }";
        assert_eq!(dup(text), found("a", 1, 5));
    }

    #[test]
    fn the_first_duplicate_in_text_order_is_reported() {
        assert_eq!(dup("{ a: { x: 1, x: 2 },\n a: 3 }"), found("a.x", 1, 1));
    }

    #[test]
    fn escapes_decode_as_json5_does() {
        assert_eq!(unescape(r"a\nb\tc\\d\'e\qf"), "a\nb\tc\\d'eqf");
        assert_eq!(unescape(r"\ud83d\ude00"), "\u{1f600}");
        assert_eq!(unescape("a\\\nb"), "ab");
        assert_eq!(unescape("a\\\r\nb"), "ab");
    }

    #[test]
    fn different_keys_that_look_alike_are_not_duplicates() {
        assert_eq!(dup("{ a: 1, A: 2, 'a ': 3, '\\\\a': 4 }"), None);
    }
}
