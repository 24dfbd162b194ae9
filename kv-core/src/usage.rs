//! One line for a command-line usage error, as kvd and kvcli print them: scripts (and `kvd
//! dev`, which reports the last line a node wrote) see the cause, not the usage banner that
//! follows it in clap's rendering.

/// Folds a rendered usage error (clap's text: `error: ...`, maybe a list after a colon, a
/// `tip:`, the `Usage:` banner, "For more information") into one line: its first line, the
/// list that follows a colon (the missing arguments), and the tip (how to pass a value that
/// looks like a flag, `-- -x`) in parentheses.
pub fn one_line(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"));
    let first = lines
        .next()
        .unwrap_or("bad usage")
        .trim_start_matches("error: ")
        .to_string();
    let rest: Vec<&str> = lines.collect();
    let tip = rest.iter().find_map(|l| l.strip_prefix("tip: "));
    let mut line = if first.ends_with(':') {
        let listed: Vec<&str> = rest
            .iter()
            .copied()
            .take_while(|l| !l.starts_with("tip:"))
            .collect();
        format!("{first} {}", listed.join(", "))
    } else {
        first
    };
    if let Some(tip) = tip {
        line.push_str(&format!(" ({tip})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_renderings_fold_into_one_line() {
        assert_eq!(
            one_line("error: invalid value 'x' for '--n <N>': not a whole number\n\nFor more information, try '--help'.\n"),
            "invalid value 'x' for '--n <N>': not a whole number"
        );
        assert_eq!(
            one_line("error: the following required arguments were not provided:\n  <KEY>\n  <VALUE>\n\nUsage: kvcli put <KEY> <VALUE>\n\nFor more information, try '--help'.\n"),
            "the following required arguments were not provided: <KEY>, <VALUE>"
        );
        assert_eq!(
            one_line("error: unexpected argument '-x' found\n\n  tip: to pass '-x' as a value, use '-- -x'\n\nUsage: kvcli put <KEY> <VALUE>\n"),
            "unexpected argument '-x' found (to pass '-x' as a value, use '-- -x')"
        );
        assert_eq!(one_line(""), "bad usage");
    }
}
