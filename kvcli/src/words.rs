//! Splits a command line into words the way a shell would for simple cases: whitespace
//! separates words, "double" and 'single' quotes group them, a backslash escapes the next
//! character (outside single quotes), and a `#` at the start of a word begins a comment that
//! runs to the end of the line.

/// The words of `line`, or an error naming an unclosed quote.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n) => cur.push(n),
                            None => return Err("unclosed double quote".into()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unclosed double quote".into()),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unclosed single quote".into()),
                    }
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(split("put k v").unwrap(), ["put", "k", "v"]);
        assert_eq!(
            split(r#"put k "hello world""#).unwrap(),
            ["put", "k", "hello world"]
        );
        assert_eq!(split("put k 'a \"b\"'").unwrap(), ["put", "k", "a \"b\""]);
        assert_eq!(split(r"put k a\ b").unwrap(), ["put", "k", "a b"]);
        assert_eq!(split(r#"put k """#).unwrap(), ["put", "k", ""]);
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
        assert!(split("put k \"open").is_err());
    }

    #[test]
    fn a_word_starting_with_a_hash_begins_a_comment() {
        assert_eq!(split("# a whole line").unwrap(), Vec::<String>::new());
        assert_eq!(split("put k v # why").unwrap(), ["put", "k", "v"]);
        assert_eq!(split("put k v#1").unwrap(), ["put", "k", "v#1"]);
        assert_eq!(split("put k '#1' \\#2").unwrap(), ["put", "k", "#1", "#2"]);
        assert_eq!(
            split("put k \"# not a comment\"").unwrap(),
            ["put", "k", "# not a comment"]
        );
    }
}
