//! Colour on a terminal, none when the output is piped or `NO_COLOR` is set
//! (<https://no-color.org>): every styled string goes through a [`Style`] that knows whether
//! its stream may carry ANSI escapes.

use std::io::IsTerminal;

/// Whether one output stream gets ANSI colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Colours are on.
    pub on: bool,
}

/// True when `NO_COLOR` is set to a non-empty value.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Style {
    /// The style of standard output: colour only on a terminal, never with `--json`.
    pub fn stdout(json: bool) -> Style {
        Style {
            on: !json && !no_color() && std::io::stdout().is_terminal(),
        }
    }

    /// The style of standard error.
    pub fn stderr() -> Style {
        Style {
            on: !no_color() && std::io::stderr().is_terminal(),
        }
    }

    fn paint(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Success.
    pub fn green(self, s: &str) -> String {
        self.paint("32", s)
    }

    /// Attention: siblings, notes about contexts.
    pub fn yellow(self, s: &str) -> String {
        self.paint("33", s)
    }

    /// Failure.
    pub fn red(self, s: &str) -> String {
        self.paint("31", s)
    }

    /// Secondary information: contexts, hints.
    pub fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }

    /// Headers.
    pub fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// Prints one error line on standard error, `kvcli: ` first, red on a terminal.
pub fn error_line(msg: &str) {
    eprintln!("{}", Style::stderr().red(&format!("kvcli: {msg}")));
}

#[cfg(test)]
mod tests {
    use super::Style;

    #[test]
    fn off_means_plain_text() {
        let s = Style { on: false };
        assert_eq!(s.red("x"), "x");
        let s = Style { on: true };
        assert_eq!(s.red("x"), "\x1b[31mx\x1b[0m");
    }
}
